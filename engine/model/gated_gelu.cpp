#include "engine/model/gated_gelu.hpp"

#include "engine/model/own_kernels.hpp"
#ifdef MOELAB_WITH_CUDA_KERNELS
#include "engine/kernels/gated_gelu.hpp"
#endif

namespace moelab {
namespace {

#ifdef MOELAB_WITH_CUDA_KERNELS

// One kernel each way; only the hidden units and the gates are kept for the backward, where ATen's
// composition keeps GELU's output as well.
class FusedGatedGelu : public torch::autograd::Function<FusedGatedGelu> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& hidden, const torch::Tensor& gate) {
    auto out = torch::empty_like(hidden);
    const LaunchOn on(hidden);
    kernels::gated_gelu_forward(hidden.const_data_ptr(), gate.const_data_ptr<float>(), out.data_ptr(), hidden.size(0),
                                hidden.size(1), on.stream);
    ctx->save_for_backward({hidden, gate});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const auto &hidden = saved[0], &gate = saved[1];
    auto grad_out = grad[0].contiguous();
    // 16-byte loads read it too: a gradient that starts at an odd offset of its storage is copied
    if (reinterpret_cast<uintptr_t>(grad_out.const_data_ptr()) % 16 != 0) grad_out = grad_out.clone();
    auto grad_hidden = torch::empty_like(hidden), grad_gate = torch::empty_like(gate);
    const LaunchOn on(hidden);
    kernels::gated_gelu_backward(hidden.const_data_ptr(), gate.const_data_ptr<float>(), grad_out.const_data_ptr(),
                                 grad_hidden.data_ptr(), grad_gate.data_ptr<float>(), hidden.size(0), hidden.size(1),
                                 on.stream);
    return {grad_hidden, grad_gate};
  }
};

#endif

}  // namespace

bool fused_gated_gelu_applies(const torch::Tensor& hidden, const torch::Tensor& gate) {
  return own_kernel_takes_rows("gated_gelu", hidden) && hidden.scalar_type() == torch::kBFloat16 && gate.device() == hidden.device() &&
         gate.scalar_type() == torch::kFloat && gate.dim() == 1 && gate.size(0) == hidden.size(0) && gate.is_contiguous();
}

// Elsewhere ATen's ops: the gate rounded to the hidden units' dtype, then GELU and the product.
torch::Tensor gated_gelu(const torch::Tensor& hidden, const torch::Tensor& gate) {
#ifdef MOELAB_WITH_CUDA_KERNELS
  if (fused_gated_gelu_applies(hidden, gate)) return FusedGatedGelu::apply(hidden, gate);
#endif
  return torch::gelu(hidden) * gate.to(hidden.scalar_type()).unsqueeze(1);
}

}  // namespace moelab
