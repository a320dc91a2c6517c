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
class FusedAdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;
  torch::Tensor step(LossClosure closure = nullptr) override;
  void load(torch::serialize::InputArchive& archive) override;

 private:
  torch::optim::AdamWParamState& state_of(const torch::Tensor& parameter);
  // The fused kernel reads each parameter's step count from a tensor on its device; these mirror
  // the states' integer counts (which are what checkpoints store).
  std::unordered_map<c10::TensorImpl*, torch::Tensor> step_tensors_;
};

// Total 2-norm of the parameters' gradients (parameters without one are skipped); when max_norm is
// finite, gradients are scaled by min(1, max_norm / (norm + 1e-6)) as clip_grad_norm_ does.
// Returns the norm before clipping as a scalar tensor on the gradients' device.
torch::Tensor clip_gradient_norm(const std::vector<torch::Tensor>& parameters, double max_norm);

}  // namespace moelab
