// The optimizer step's kernels: AdamW through ATen's fused multi-tensor kernel (at::_fused_adamw_,
// one call per parameter group instead of a dozen element-wise ops per parameter), and the global
// gradient norm and clipping through foreach kernels, without a host sync.
#pragma once

#include <torch/torch.h>

#include <unordered_map>

namespace moelab {

// torch::optim::AdamW's options, parameter groups and state (so checkpoints keep its format and
// load into either), stepped by the fused kernel. All parameters live on one device in one dtype.
// amsgrad is not supported.
//
// Optional dynamic loss scaling for fp16, as torch.amp.GradScaler does it and all on the device:
// the loss is multiplied by a scale before backward so that small gradients survive in fp16,
// gradients are divided by it before clipping, a step whose gradients overflowed is skipped and the
// scale halved, and after 2000 clean steps in a row the scale doubles. The scale is checkpointed.
class FusedAdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;
  torch::Tensor step(LossClosure closure = nullptr) override;
  // Sets every group's learning rate. On CUDA the kernel reads it from the device, where this writes
  // it, so that a captured step (step_graph.hpp) follows the schedule when replayed: call it before
  // each step, outside any capture. (step() also writes a rate changed through the options.)
  void set_learning_rate(double lr);
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

  void enable_loss_scaling(torch::Device device, double initial_scale = 65536.0);
  // The loss to call backward on: scaled when loss scaling is on, else `loss` itself.
  torch::Tensor scale_loss(const torch::Tensor& loss) const;
  // Divides the gradients by the scale and notes whether any is inf or NaN (no-op without scaling).
  void unscale_gradients();
  double loss_scale() const;  // reads the device (for logs and tests)

 private:
  torch::optim::AdamWParamState& state_of(const torch::Tensor& parameter);
  std::vector<torch::Tensor> gradients() const;
  const torch::Tensor& learning_rate_on_device(size_t group);
  torch::Tensor scale_, growth_tracker_, found_inf_;  // defined when loss scaling is on
  // The fused kernel reads each parameter's step count from a tensor on its device; these mirror
  // the states' integer counts (which are what checkpoints store).
  std::unordered_map<c10::TensorImpl*, torch::Tensor> step_tensors_;
  // Per group on CUDA: the learning rate on the device (fp32, as the kernel reads it) and the value
  // last written there.
  std::vector<std::pair<double, torch::Tensor>> device_learning_rates_;
};

// Total 2-norm of the parameters' gradients (parameters without one are skipped); when max_norm is
// finite, gradients are scaled by min(1, max_norm / (norm + 1e-6)) as clip_grad_norm_ does.
// Returns the norm before clipping as a scalar tensor on the gradients' device.
torch::Tensor clip_gradient_norm(const std::vector<torch::Tensor>& parameters, double max_norm);

}  // namespace moelab
