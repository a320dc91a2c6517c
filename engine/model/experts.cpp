#include "engine/model/experts.hpp"

#include <ATen/autocast_mode.h>
#ifdef MOELAB_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

#include "engine/model/gated_gelu.hpp"
#include "engine/model/slot_dispatch.hpp"

namespace moelab {
namespace {

int64_t round_up_to_8(int64_t n) { return (n + 7) / 8 * 8; }

// The first n columns of t; t itself when it has no more, since a slice's backward copies the
// gradient into a zeroed tensor of t's size.
torch::Tensor first_columns(const torch::Tensor& t, int64_t n) { return t.size(1) == n ? t : t.narrow(1, 0, n); }

// x [n, k] zero-padded to `cols` columns; x itself when it has that many.
torch::Tensor with_zero_columns(const torch::Tensor& x, int64_t cols) {
  return x.size(1) == cols ? x : torch::constant_pad_nd(x, {0, cols - x.size(1)});
}

// Weights w [E, k, m] zero-padded to `rows` x `cols`; w itself when it has that size already. The
// padded copy keeps a transposed layout (w_in's, see the constructor), as the gradient follows it.
torch::Tensor zero_padded(const torch::Tensor& w, int64_t rows, int64_t cols) {
  if (w.size(1) == rows && w.size(2) == cols) return w;
  if (w.stride(1) == 1 && w.size(2) > 1) return zero_padded(w.transpose(1, 2), cols, rows).transpose(1, 2);
  return torch::constant_pad_nd(w, {0, cols - w.size(2), 0, rows - w.size(1)});
}

// Each row's weights [n, j] spread over all E experts [n, E]: weight[r, i] in column index[r, i],
// zero elsewhere. Times the experts' biases [E, m] this is each row's weighted sum of its experts'
// biases as one small matmul, and the biases' gradient is a matmul too, where gathering a bias row
// per row would make it a scatter-add of thousands of rows onto each expert's one (contended atomics).
torch::Tensor spread_over_experts(const torch::Tensor& index, const torch::Tensor& weight, int64_t experts) {
  return torch::zeros({weight.size(0), experts}, weight.options()).scatter(1, index, weight);
}

// One expert's MLP on rows x [n, d], given that expert's weights.
torch::Tensor expert_mlp(const torch::Tensor& x, const torch::Tensor& w_in, const torch::Tensor& b_in,
                         const torch::Tensor& w_out, const torch::Tensor& b_out) {
  return torch::addmm(b_out, torch::gelu(torch::addmm(b_in, x, w_in)), w_out);
}

}  // namespace

ExpertKernel expert_kernel_for(const torch::Tensor& x) {
  if (!x.is_cuda()) return ExpertKernel::PerExpertLoop;
  const bool bf16 = x.scalar_type() == torch::kBFloat16 ||
                    (at::autocast::is_autocast_enabled(at::kCUDA) && at::autocast::get_autocast_dtype(at::kCUDA) == at::kBFloat16);
  return bf16 ? ExpertKernel::GroupedMm : ExpertKernel::PerExpertLoop;
}

bool grouped_mm_stays_on_device(const torch::Device& device) {
#ifdef MOELAB_WITH_CUDA
  if (!device.is_cuda()) return false;
  const int major = at::cuda::getDeviceProperties(device.index())->major;
  return major == 9 || major == 10;
#else
  return false;
#endif
}

// w_in is [E, d, h] but lies in memory as [E, h, d] (each expert's rows per hidden unit, as a Linear
// layer stores its weight). Autograd computes a weight's gradient in the weight's own layout, and
// ATen's grouped CUTLASS kernel tiles each expert's output by 128 x 256: the gradient as [d, h] =
// [768, 384] takes 6 x 2 tiles of which a quarter is empty, as [h, d] 3 x 3 full ones. w_out's
// gradient, [h, d], is tiled fully as it is. Checkpoints keep the layout they were written with
// (older ones load contiguous, with the same values), and the optimizer's state follows the weight's.
ExpertsImpl::ExpertsImpl(int experts, int d_model, int hidden) {
  // Allocated with those strides, not as a transposed view: a view would keep its base alive after
  // `to(device)` or a checkpoint load had given the parameter new memory.
  const int64_t d = d_model, h = hidden;
  w_in = register_parameter("w_in", torch::empty_strided({experts, d, h}, {h * d, 1, d}));
  b_in = register_parameter("b_in", torch::zeros({experts, hidden}));
  w_out = register_parameter("w_out", torch::empty({experts, hidden, d_model}));
  b_out = register_parameter("b_out", torch::zeros({experts, d_model}));
}

torch::Tensor ExpertsImpl::apply_expert(int e, const torch::Tensor& x) {
  return expert_mlp(x, w_in[e], b_in[e], w_out[e], b_out[e]);
}

torch::Tensor ExpertsImpl::forward(const torch::Tensor& x, const torch::Tensor& expert_index, const torch::Tensor& gate) {
  return forward_with_kernel(x, expert_index, gate, expert_kernel_for(x));
}

// Each row is scaled by its slot's gate inside the experts (the grouped kernel scales the second
// matmul's input, half as wide as the output), so that combining is the plain sum of a token's k
// rows, the gather's adjoint: no batched 1 x k products with their poorly shaped GPU kernels.
torch::Tensor ExpertsImpl::forward_with_kernel(const torch::Tensor& x, const torch::Tensor& expert_index,
                                               const torch::Tensor& gate, ExpertKernel kernel) {
  auto layout = sort_slots_by_expert(expert_index, w_in.size(0));
  auto sorted_gate = gates_in_sorted_order(gate, layout);
  torch::Tensor combined;
  if (kernel == ExpertKernel::GroupedMm) {
    // The cast and the padding happen on the T token rows, before the gather makes k copies. The
    // output bias is added per token after the combine: sum_j gate[t, j] * b_out[index[t, j]].
    const auto dtype = x.is_cuda() ? torch::kBFloat16 : x.scalar_type();  // the CPU runs ATen's fp32 loop
    auto y = grouped_mm(gather_slots(with_zero_columns(x.to(dtype), round_up_to_8(x.size(1))), layout), layout,
                        sorted_gate);
    auto output_biases = torch::mm(spread_over_experts(expert_index, gate, b_out.size(0)), b_out.to(gate.scalar_type()));
    combined = first_columns(sum_slots(y, layout), x.size(1)) + output_biases;
  } else {
    auto y = per_expert_loop(gather_slots(x, layout), layout.group_ends);
    combined = sum_slots(y * sorted_gate.to(y.scalar_type()).unsqueeze(1), layout);
  }
  // Under autocast the experts return bf16: summed in bf16, handed back in the residual stream's dtype.
  return combined.to(x.scalar_type());
}

// The rows and the weights are split into experts once (split_with_sizes, unbind), whose backwards
// join the experts' gradients in one piece: a part taken per expert (narrow, w[e]) would, in the
// backward, write its gradient into a zeroed tensor the size of the whole, one per expert and tensor.
torch::Tensor ExpertsImpl::per_expert_loop(const torch::Tensor& rows, const torch::Tensor& group_ends) {
  auto host_ends = group_ends.cpu();  // one copy to the host per layer sizes the groups
  auto end = host_ends.accessor<int32_t, 1>();
  std::vector<int64_t> sizes;
  int64_t start = 0;
  for (int64_t e = 0; e < host_ends.size(0); ++e) sizes.push_back(end[e] - start), start = end[e];
  auto groups = rows.split_with_sizes(sizes);
  auto w1 = w_in.unbind(0), b1 = b_in.unbind(0), w2 = w_out.unbind(0), b2 = b_out.unbind(0);
  std::vector<torch::Tensor> outputs;
  for (size_t e = 0; e < sizes.size(); ++e)
    if (sizes[e] > 0) outputs.push_back(expert_mlp(groups[e], w1[e], b1[e], w2[e], b2[e]));
  return torch::cat(outputs);
}

// The group ends stay on the device, so nothing waits for the host. The biases are not weight rows
// of the matmuls (against a column of ones): that made the matmuls 776 wide for d = 768, one more
// tile of 128 or 256 for 8 columns in three of the six products. The input biases are added to the
// first product in place, as the one-hot rows of each slot's expert times b_in (spread_over_experts);
// the output biases per token after the combine. The gates scale the second matmul's input:
// g (a W) = (g a) W. The bf16 CUTLASS kernels want 16-byte aligned rows, so inner and output
// dimensions are padded with zeros to multiples of 8, which changes no result (zero inputs times
// zero weights; GELU(0) = 0 in the padded hidden units; padded outputs dropped).
torch::Tensor ExpertsImpl::grouped_mm(const torch::Tensor& rows, const SlotLayout& layout, const torch::Tensor& gate) {
  const auto dtype = rows.scalar_type();
  const int64_t d = w_in.size(1), h = round_up_to_8(w_in.size(2));
  auto hidden = at::_grouped_mm(rows, zero_padded(w_in.to(dtype), rows.size(1), h), layout.group_ends);
  auto one_hot = spread_over_experts(layout.expert_of_position.unsqueeze(1),
                                     torch::ones({rows.size(0), 1}, hidden.options()), w_in.size(0));
  hidden.addmm_(one_hot, with_zero_columns(b_in.to(dtype), h));
  auto activation = gated_gelu(hidden, gate);
  return at::_grouped_mm(activation, zero_padded(w_out.to(dtype), h, round_up_to_8(d)), layout.group_ends);
}

}  // namespace moelab
