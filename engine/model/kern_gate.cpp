#include "engine/model/kern_gate.hpp"

#include "engine/model/own_kernels.hpp"
#ifdef MOELAB_WITH_CUDA_KERNELS
#include "engine/kernels/kern_gate.hpp"
#endif

namespace moelab {
namespace {

#ifdef MOELAB_WITH_CUDA_KERNELS

// One kernel each way, as softmax has; gamma's gradient comes out of the backward kernel too.
class FusedKernGate : public torch::autograd::Function<FusedKernGate> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& v, const torch::Tensor& gamma, bool relu) {
    auto gate = torch::empty_like(v);
    auto norm = torch::empty({v.size(0)}, v.options());
    const LaunchOn on(v);
    kernels::kern_gate_forward(v.const_data_ptr<float>(), gamma.const_data_ptr<float>(), gate.data_ptr<float>(),
                               norm.data_ptr<float>(), v.size(0), v.size(1), kKernScoreEps, relu,
                               on.stream);
    ctx->save_for_backward({v, gamma, norm});
    ctx->saved_data["relu"] = relu;
    return gate;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const auto &v = saved[0], &gamma = saved[1], &norm = saved[2];
    auto grad_gate = grad[0].contiguous();
    auto grad_v = torch::empty_like(v), grad_gamma = torch::empty_like(gamma);
    auto partials = torch::empty({kernels::kern_gate_backward_blocks(v.size(0))}, v.options());
    const LaunchOn on(v);
    kernels::kern_gate_backward(v.const_data_ptr<float>(), gamma.const_data_ptr<float>(), norm.const_data_ptr<float>(),
                                grad_gate.const_data_ptr<float>(), grad_v.data_ptr<float>(), grad_gamma.data_ptr<float>(),
                                partials.data_ptr<float>(), v.size(0), v.size(1), kKernScoreEps,
                                ctx->saved_data["relu"].toBool(), on.stream);
    return {grad_v, grad_gamma, torch::Tensor()};
  }
};

#endif

}  // namespace

bool fused_kern_gate_applies(const torch::Tensor& v, const torch::Tensor& gamma) {
  return own_kernel_takes("kern_gate", v) && v.scalar_type() == torch::kFloat && v.dim() == 2 && v.is_contiguous() &&
         gamma.numel() == 1 && gamma.device() == v.device() && gamma.scalar_type() == torch::kFloat;
}

// Elsewhere (the CPU, fp64 gradient checks) the row normalisation is weight normalisation's fused
// kernel (one kernel each way; dividing by the norm op by op takes five forward and about a dozen
// backward), and gamma is its scale g, so gamma's gradient comes out of that kernel too. ReLU then
// follows the scaling: ReLU(gamma n) = gamma ReLU(n) for the positive gamma KERN starts from (1 or
// the Monte-Carlo scale) and trains, and saves a multiply each way (at gamma <= 0 every gate is
// degenerate either way). The kernel has no epsilon, hence the one added to the scores.
torch::Tensor kern_gate(const torch::Tensor& v, const torch::Tensor& gamma, bool relu) {
#ifdef MOELAB_WITH_CUDA_KERNELS
  if (fused_kern_gate_applies(v, gamma)) return FusedKernGate::apply(v, gamma, relu);
#endif
  auto scaled = at::_weight_norm(v + kKernScoreEps, gamma.to(v.dtype()).expand({v.size(0), 1}), /*dim=*/0);
  return relu ? torch::relu(scaled) : scaled;
}

}  // namespace moelab
