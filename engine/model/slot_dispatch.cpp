#include "engine/model/slot_dispatch.hpp"

#include "engine/model/router.hpp"

namespace moelab {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// rows [T*k, D] in sorted order -> [T, k, D] with each token's slots side by side.
torch::Tensor token_major(const torch::Tensor& rows, const torch::Tensor& position_of_slot, int64_t tokens, int64_t k) {
  return rows.index_select(0, position_of_slot).view({tokens, k, rows.size(1)});
}

// Forward: a gather of token rows. Backward: each token sums the gradients of its k slots.
struct GatherSlots : torch::autograd::Function<GatherSlots> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const SlotLayout& layout) {
    ctx->save_for_backward({layout.position_of_slot});
    ctx->saved_data["k"] = layout.k;
    return x.index_select(0, layout.token_of_position);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    auto position_of_slot = ctx->get_saved_variables()[0];
    const int64_t k = ctx->saved_data["k"].toInt();
    return {token_major(grad[0], position_of_slot, position_of_slot.size(0) / k, k).sum(1), torch::Tensor()};
  }
};

// Forward: each token's k rows brought together and mixed by its gates (a batch of 1 x k by k x D
// products). Backward: each row gets its token's gradient times its gate (a gather); each gate the
// dot product of its row with its token's gradient.
struct CombineSlots : torch::autograd::Function<CombineSlots> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& rows, const torch::Tensor& gate,
                               const SlotLayout& layout) {
    auto rows_by_token = token_major(rows, layout.position_of_slot, layout.tokens, layout.k);
    ctx->save_for_backward({gate, layout.token_of_position, layout.slot_of_position});
    ctx->saved_data["rows_by_token"] = rows_by_token;
    return torch::bmm(gate.to(rows.scalar_type()).unsqueeze(1), rows_by_token).squeeze(1);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    auto saved = ctx->get_saved_variables();
    const auto& gate = saved[0];
    auto rows_by_token = ctx->saved_data["rows_by_token"].toTensor();
    auto upstream = grad[0].to(rows_by_token.scalar_type());
    auto gate_at_position = gate.flatten().index_select(0, saved[2]).to(upstream.scalar_type());
    auto grad_rows = upstream.index_select(0, saved[1]) * gate_at_position.unsqueeze(1);
    torch::Tensor grad_gate;  // K-Means gates are constants
    if (ctx->needs_input_grad(1))
      grad_gate = torch::bmm(rows_by_token, upstream.unsqueeze(2)).squeeze(2).to(gate.scalar_type());
    return {grad_rows, grad_gate, torch::Tensor()};
  }
};

}  // namespace

SlotLayout sort_slots_by_expert(const torch::Tensor& expert_index, int64_t experts) {
  SlotLayout layout;
  layout.tokens = expert_index.size(0), layout.k = expert_index.size(1);
  auto flat = expert_index.flatten();
  layout.slot_of_position = std::get<1>(flat.sort(/*stable=*/std::optional<bool>(true), /*dim=*/0));
  layout.token_of_position = layout.slot_of_position.div(layout.k, "floor");
  layout.position_of_slot = torch::empty_like(flat).scatter_(0, layout.slot_of_position,
                                                              torch::arange(flat.size(0), flat.options()));
  layout.counts = count_per_expert(flat, experts);
  return layout;
}

torch::Tensor gather_slots(const torch::Tensor& x, const SlotLayout& layout) { return GatherSlots::apply(x, layout); }

torch::Tensor combine_slots(const torch::Tensor& rows, const torch::Tensor& gate, const SlotLayout& layout) {
  return CombineSlots::apply(rows, gate, layout);
}

}  // namespace moelab
