#include "engine/model/cross_entropy.hpp"

#include "engine/model/own_kernels.hpp"
#ifdef MOELAB_WITH_CUDA_KERNELS
#include "engine/kernels/cross_entropy.hpp"
#endif

namespace moelab {
namespace {

#ifdef MOELAB_WITH_CUDA_KERNELS

// Per-row losses; the bf16 logits and each row's log-sum-exp are what the backward needs.
class FusedCrossEntropy : public torch::autograd::Function<FusedCrossEntropy> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& logits, const torch::Tensor& targets) {
    const auto rows = logits.size(0), vocab = logits.size(1);
    TORCH_CHECK(targets.device() == logits.device() && targets.numel() == rows, "cross-entropy: ", targets.numel(),
                " targets on ", targets.device(), " for ", rows, " rows of logits on ", logits.device());
    const LaunchOn on(logits);
    auto loss = torch::empty({rows}, logits.options().dtype(torch::kFloat));
    auto lse = torch::empty_like(loss);
    kernels::cross_entropy_forward(logits.const_data_ptr(), targets.const_data_ptr<int64_t>(), loss.data_ptr<float>(),
                                   lse.data_ptr<float>(), rows, vocab, on.stream);
    ctx->save_for_backward({logits, targets, lse});
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const auto &logits = saved[0], &targets = saved[1], &lse = saved[2];
    auto grad_loss = grad[0].to(torch::kFloat).contiguous();  // the mean's backward hands an expanded scalar
    auto grad_logits = torch::empty_like(logits);
    const LaunchOn on(logits);
    kernels::cross_entropy_backward(logits.const_data_ptr(), targets.const_data_ptr<int64_t>(),
                                    lse.const_data_ptr<float>(), grad_loss.const_data_ptr<float>(),
                                    grad_logits.data_ptr(), logits.size(0), logits.size(1),
                                    on.stream);
    return {grad_logits, torch::Tensor()};
  }
};

#endif

}  // namespace

bool fused_cross_entropy_applies(const torch::Tensor& logits) {
  return own_kernel_takes_rows("cross_entropy", logits) && logits.scalar_type() == torch::kBFloat16;
}

// bf16 logits on a GPU take the fused kernels where their layout allows. On CUDA, fp16 logits go
// straight into log-softmax's fp32 output (half_to_float), and its backward returns the gradient in
// fp16: no fp32 copy of the logits and no cast of its gradient back (ATen converts only Half this
// way). Otherwise the logits are cast to fp32 first; the CPU computes in fp32 anyway.
torch::Tensor fp32_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets) {
#ifdef MOELAB_WITH_CUDA_KERNELS
  if (fused_cross_entropy_applies(logits))
    return FusedCrossEntropy::apply(logits, targets.to(torch::kLong).contiguous()).mean();
#endif
  if (logits.is_cuda() && logits.scalar_type() == torch::kHalf)
    return torch::nll_loss(at::_log_softmax(logits, -1, /*half_to_float=*/true), targets);
  return torch::cross_entropy_loss(logits.to(torch::kFloat), targets);
}

}  // namespace moelab
