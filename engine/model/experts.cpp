#include "engine/model/experts.hpp"

#include <ATen/autocast_mode.h>

namespace moelab {
namespace {

int64_t round_up_to_8(int64_t n) { return (n + 7) / 8 * 8; }

// Zeros appended to the last two dimensions up to `rows` x `cols` (no copy when they already fit).
torch::Tensor pad_last_two(const torch::Tensor& t, int64_t rows, int64_t cols) {
  const int64_t extra_rows = rows - t.size(-2), extra_cols = cols - t.size(-1);
  if (extra_rows == 0 && extra_cols == 0) return t;
  return torch::constant_pad_nd(t, {0, extra_cols, 0, extra_rows});
}

torch::Tensor pad_last(const torch::Tensor& t, int64_t cols) {
  return cols == t.size(-1) ? t : torch::constant_pad_nd(t, {0, cols - t.size(-1)});
}

}  // namespace

ExpertKernel expert_kernel_for(const torch::Tensor& x) {
  if (!x.is_cuda()) return ExpertKernel::PerExpertLoop;
  const bool bf16 = x.scalar_type() == torch::kBFloat16 ||
                    (at::autocast::is_autocast_enabled(at::kCUDA) && at::autocast::get_autocast_dtype(at::kCUDA) == at::kBFloat16);
  return bf16 ? ExpertKernel::GroupedMm : ExpertKernel::PerExpertLoop;
}

ExpertsImpl::ExpertsImpl(int experts, int d_model, int hidden) {
  w_in = register_parameter("w_in", torch::empty({experts, d_model, hidden}));
  b_in = register_parameter("b_in", torch::zeros({experts, hidden}));
  w_out = register_parameter("w_out", torch::empty({experts, hidden, d_model}));
  b_out = register_parameter("b_out", torch::zeros({experts, d_model}));
}

torch::Tensor ExpertsImpl::apply_expert(int e, const torch::Tensor& x) {
  auto h = torch::gelu(torch::addmm(b_in[e], x, w_in[e]));
  return torch::addmm(b_out[e], h, w_out[e]);
}

torch::Tensor ExpertsImpl::forward(const torch::Tensor& x, const torch::Tensor& expert_index, const torch::Tensor& gate) {
  return forward_with_kernel(x, expert_index, gate, expert_kernel_for(x));
}

torch::Tensor ExpertsImpl::forward_with_kernel(const torch::Tensor& x, const torch::Tensor& expert_index,
                                               const torch::Tensor& gate, ExpertKernel kernel) {
  const int64_t experts = w_in.size(0), k = expert_index.size(1);
  // Sort the T*k (token, expert) slots by expert; a stable sort keeps token order within a group.
  auto flat_expert = expert_index.flatten();
  auto [sorted_expert, order] = flat_expert.sort(/*stable=*/std::optional<bool>(true), /*dim=*/0);
  auto token_of_slot = order.div(k, "floor");
  auto gate_of_slot = gate.flatten().index_select(0, order).to(x.dtype());
  auto rows = x.index_select(0, token_of_slot);
  auto counts = torch::bincount(flat_expert, {}, experts);  // group sizes, computed on the device
  auto grouped_y = kernel == ExpertKernel::GroupedMm ? grouped_mm(rows, counts, sorted_expert) : per_expert_loop(rows, counts);
  // Under autocast the expert matmuls return bf16; the combine runs in the residual stream's dtype.
  grouped_y = grouped_y.to(x.scalar_type()) * gate_of_slot.unsqueeze(1);
  return torch::zeros_like(x).index_add_(0, token_of_slot, grouped_y);
}

torch::Tensor ExpertsImpl::per_expert_loop(const torch::Tensor& rows, const torch::Tensor& counts) {
  auto host_counts = counts.cpu();  // one copy to the host per layer sizes the groups
  auto count = host_counts.accessor<int64_t, 1>();
  std::vector<torch::Tensor> outputs;
  int64_t start = 0;
  for (int64_t e = 0; e < host_counts.size(0); ++e) {
    if (count[e] == 0) continue;
    outputs.push_back(apply_expert(e, rows.narrow(0, start, count[e])));
    start += count[e];
  }
  return torch::cat(outputs);
}

// Group ends are a cumulative sum on the device, so nothing waits for the host. The bf16 CUTLASS
// kernels want 16-byte aligned rows: d and hidden are padded with zeros to multiples of 8, which
// changes no result (zero columns in, GELU(0 + 0) = 0 hidden units, padded outputs dropped).
torch::Tensor ExpertsImpl::grouped_mm(const torch::Tensor& rows, const torch::Tensor& counts,
                                      const torch::Tensor& sorted_expert) {
  const auto dtype = rows.is_cuda() ? torch::kBFloat16 : rows.scalar_type();  // the CPU runs ATen's fp32 loop
  const int64_t d = w_in.size(1), h = w_in.size(2), d8 = round_up_to_8(d), h8 = round_up_to_8(h);
  auto offsets = counts.cumsum(0).to(torch::kInt32);
  auto x = pad_last(rows.to(dtype), d8);
  auto hidden = at::_grouped_mm(x, pad_last_two(w_in.to(dtype), d8, h8), offsets) +
                pad_last(b_in.to(dtype).index_select(0, sorted_expert), h8);
  auto y = at::_grouped_mm(torch::gelu(hidden), pad_last_two(w_out.to(dtype), h8, d8), offsets) +
           pad_last(b_out.to(dtype).index_select(0, sorted_expert), d8);
  return d8 == d ? y : y.narrow(1, 0, d);
}

}  // namespace moelab
