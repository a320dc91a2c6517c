#include "engine/model/kern_gate.hpp"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>

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

// sum over j < n of term(j) in eight interleaved partial sums: one running sum would make each add
// wait for the one before (about four cycles each), which costs more than the rest of the pass.
template <class T, class Term>
T row_sum(int64_t n, Term term) {
  T partial[8] = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int lane = 0; lane < 8; ++lane) partial[lane] += term(j + lane);
  for (; j < n; ++j) partial[0] += term(j);
  return ((partial[0] + partial[1]) + (partial[2] + partial[3])) + ((partial[4] + partial[5]) + (partial[6] + partial[7]));
}

// On the CPU, one pass over each row each way, as softmax's CPU kernels make, where ATen's
// composition (the epsilon's add, the weight-norm pair and ReLU, and their backward ops) passes over
// the scores several times; the same arithmetic as the CUDA kernels (engine/kernels/kern_gate.cu),
// in the scores' precision (fp32, and fp64 for the gradient checks). Gamma's gradient sums the rows'
// contributions after the parallel loop, so it does not depend on how the rows were split.
class CpuKernGate : public torch::autograd::Function<CpuKernGate> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& scores,
                               const torch::Tensor& gamma, bool relu) {
    auto v = scores.contiguous();
    auto gate = torch::empty_like(v), norm = torch::empty({v.size(0)}, v.options());
    AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "kern_gate", [&] {
      const auto* in = v.const_data_ptr<scalar_t>();
      auto* out = gate.data_ptr<scalar_t>();
      auto* norms = norm.data_ptr<scalar_t>();
      const auto g = gamma.item<scalar_t>(), eps = scalar_t(kKernScoreEps);
      const int64_t n = v.size(1);
      at::parallel_for(0, v.size(0), kRowsPerTask, [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const scalar_t* u = in + row * n;
          norms[row] = std::sqrt(row_sum<scalar_t>(n, [&](int64_t j) { return (u[j] + eps) * (u[j] + eps); }));
          const scalar_t scale = g / norms[row];
          for (int64_t j = 0; j < n; ++j) {
            const scalar_t y = (u[j] + eps) * scale;
            out[row * n + j] = relu && y < 0 ? scalar_t(0) : y;
          }
        }
      });
    });
    ctx->save_for_backward({v, gamma, norm});
    ctx->saved_data["relu"] = relu;
    return gate;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const auto &v = saved[0], &gamma = saved[1], &norm = saved[2];
    const bool relu = ctx->saved_data["relu"].toBool();
    auto grad_gate = grad[0].contiguous();
    auto grad_v = torch::empty_like(v), per_row = torch::empty_like(norm);
    AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "kern_gate_backward", [&] {
      const auto* in = v.const_data_ptr<scalar_t>();
      const auto* h = grad_gate.const_data_ptr<scalar_t>();
      const auto* norms = norm.const_data_ptr<scalar_t>();
      auto* out = grad_v.data_ptr<scalar_t>();
      auto* hy_of_row = per_row.data_ptr<scalar_t>();
      const auto g = gamma.item<scalar_t>(), eps = scalar_t(kKernScoreEps);
      const int64_t n = v.size(1);
      at::parallel_for(0, v.size(0), kRowsPerTask, [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const scalar_t* u = in + row * n;
          const scalar_t* hr = h + row * n;
          const scalar_t inverse_norm = 1 / norms[row], scale = g * inverse_norm;
          // The gates' gradient where ReLU passed it (a select of loaded values, not a branch: the
          // signs are random, and mispredicted branches made this loop twenty times the forward's), and
          // its projection on y = u / ||u||.
          auto passed = [&](int64_t j) {
            const scalar_t grad_j = hr[j];
            return !relu || (u[j] + eps) * scale > 0 ? grad_j : scalar_t(0);
          };
          const scalar_t hy = row_sum<scalar_t>(n, [&](int64_t j) { return passed(j) * (u[j] + eps) * inverse_norm; });
          for (int64_t j = 0; j < n; ++j) out[row * n + j] = scale * (passed(j) - (u[j] + eps) * inverse_norm * hy);
          hy_of_row[row] = hy;
        }
      });
    });
    return {grad_v, per_row.sum().to(gamma.scalar_type()).reshape(gamma.sizes()), torch::Tensor()};
  }

 private:
  static constexpr int64_t kRowsPerTask = 256;
};

}  // namespace

bool fused_kern_gate_applies(const torch::Tensor& v, const torch::Tensor& gamma) {
  return own_kernel_takes("kern_gate", v) && v.scalar_type() == torch::kFloat && v.dim() == 2 && v.is_contiguous() &&
         gamma.numel() == 1 && gamma.device() == v.device() && gamma.scalar_type() == torch::kFloat;
}

torch::Tensor kern_gate(const torch::Tensor& v, const torch::Tensor& gamma, bool relu) {
#ifdef MOELAB_WITH_CUDA_KERNELS
  if (fused_kern_gate_applies(v, gamma)) return FusedKernGate::apply(v, gamma, relu);
#endif
  const bool fp32_or_fp64 = v.scalar_type() == torch::kFloat || v.scalar_type() == torch::kDouble;
  if (v.is_cpu() && v.dim() == 2 && fp32_or_fp64 && gamma.is_cpu() && gamma.numel() == 1)
    return CpuKernGate::apply(v, gamma.to(v.scalar_type()), relu);
  return kern_gate_composition(v, gamma, relu);
}

// The row normalisation is weight normalisation's fused kernel (one kernel each way; dividing by the
// norm op by op takes five forward and about a dozen backward), and gamma is its scale g, so gamma's
// gradient comes out of that kernel too. ReLU then follows the scaling: ReLU(gamma n) = gamma ReLU(n)
// for the positive gamma KERN starts from (1 or the Monte-Carlo scale) and trains, and saves a
// multiply each way (at gamma <= 0 every gate is degenerate either way). The kernel has no epsilon,
// hence the one added to the scores.
torch::Tensor kern_gate_composition(const torch::Tensor& v, const torch::Tensor& gamma, bool relu) {
  auto scaled = at::_weight_norm(v + kKernScoreEps, gamma.to(v.dtype()).expand({v.size(0), 1}), /*dim=*/0);
  return relu ? torch::relu(scaled) : scaled;
}

}  // namespace moelab
