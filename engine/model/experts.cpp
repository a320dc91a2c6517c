#include "engine/model/experts.hpp"

namespace moelab {

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
  const int64_t experts = w_in.size(0), k = expert_index.size(1);
  // Sort the T*k (token, expert) slots by expert; a stable sort keeps token order within a group.
  auto flat_expert = expert_index.flatten();
  auto order = std::get<1>(flat_expert.sort(/*stable=*/std::optional<bool>(true), /*dim=*/0));
  auto token_of_slot = order.div(k, "floor");
  auto gate_of_slot = gate.flatten().index_select(0, order).to(x.dtype());
  auto grouped_x = x.index_select(0, token_of_slot);
  // Group sizes are computed on the device; one copy to the host per layer sizes the groups.
  auto counts = torch::bincount(flat_expert, {}, experts).cpu();
  auto count = counts.accessor<int64_t, 1>();
  std::vector<torch::Tensor> outputs;
  int64_t start = 0;
  for (int64_t e = 0; e < experts; ++e) {
    if (count[e] == 0) continue;
    outputs.push_back(apply_expert(e, grouped_x.narrow(0, start, count[e])));
    start += count[e];
  }
  // Under autocast the expert matmuls return bf16; the combine runs in the residual stream's dtype.
  auto grouped_y = torch::cat(outputs).to(x.scalar_type()) * gate_of_slot.unsqueeze(1);
  return torch::zeros_like(x).index_add_(0, token_of_slot, grouped_y);
}

}  // namespace moelab
