#include "engine/model/gated_gelu.hpp"

#ifdef MOELAB_WITH_CUDA_KERNELS
#include <ATen/cuda/CUDAContext.h>

#include "engine/kernels/gated_gelu.hpp"
#include "engine/kernels/switch.hpp"
#endif

namespace moelab {
namespace {

#ifdef MOELAB_WITH_CUDA_KERNELS

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// One kernel each way; only the hidden units and the gates are kept for the backward, where ATen's
// composition keeps GELU's output as well.
class FusedGatedGelu : public torch::autograd::Function<FusedGatedGelu> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& hidden, const torch::Tensor& gate) {
    auto out = torch::empty_like(hidden);
    kernels::gated_gelu_forward(hidden.const_data_ptr(), gate.const_data_ptr<float>(), out.data_ptr(), hidden.size(0),
                                hidden.size(1), at::cuda::getCurrentCUDAStream());
    ctx->save_for_backward({hidden, gate});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const auto &hidden = saved[0], &gate = saved[1];
    auto grad_out = grad[0].contiguous();
    auto grad_hidden = torch::empty_like(hidden), grad_gate = torch::empty_like(gate);
    kernels::gated_gelu_backward(hidden.const_data_ptr(), gate.const_data_ptr<float>(), grad_out.const_data_ptr(),
                                 grad_hidden.data_ptr(), grad_gate.data_ptr<float>(), hidden.size(0), hidden.size(1),
                                 at::cuda::getCurrentCUDAStream());
    return {grad_hidden, grad_gate};
  }
};

#endif

}  // namespace

bool fused_gated_gelu_applies(const torch::Tensor& hidden, const torch::Tensor& gate) {
#ifdef MOELAB_WITH_CUDA_KERNELS
  return kernels::own_kernels_enabled() && hidden.is_cuda() && hidden.scalar_type() == torch::kBFloat16 &&
         hidden.dim() == 2 && hidden.is_contiguous() && hidden.size(1) % 8 == 0 &&
         reinterpret_cast<uintptr_t>(hidden.const_data_ptr()) % 16 == 0 && gate.device() == hidden.device() &&
         gate.scalar_type() == torch::kFloat && gate.dim() == 1 && gate.size(0) == hidden.size(0) && gate.is_contiguous();
#else
  return false;
#endif
}

// Elsewhere ATen's ops: the gate rounded to the hidden units' dtype, then GELU and the product.
torch::Tensor gated_gelu(const torch::Tensor& hidden, const torch::Tensor& gate) {
#ifdef MOELAB_WITH_CUDA_KERNELS
  if (fused_gated_gelu_applies(hidden, gate)) return FusedGatedGelu::apply(hidden, gate);
#endif
  return torch::gelu(hidden) * gate.to(hidden.scalar_type()).unsqueeze(1);
}

}  // namespace moelab
