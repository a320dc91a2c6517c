#include "engine/model/slot_dispatch.hpp"

#include "engine/model/own_kernels.hpp"
#ifdef MOELAB_WITH_CUDA_KERNELS
#include "engine/kernels/slot_rows.hpp"
#endif

namespace moelab {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The two directions, each the other's gradient. On a GPU both take moelab's row kernels where the
// rows allow (slot_row_kernels_apply), ATen's index_select and embedding bag elsewhere.
torch::Tensor rows_of_tokens(const torch::Tensor& x, const torch::Tensor& token_of_position) {
#ifdef MOELAB_WITH_CUDA_KERNELS
  if (slot_row_kernels_apply(x)) {
    auto rows = torch::empty({token_of_position.size(0), x.size(1)}, x.options());
    const LaunchOn on(x);
    kernels::gather_rows(x.const_data_ptr(), token_of_position.const_data_ptr<int64_t>(), rows.data_ptr(), rows.size(0),
                         x.size(1) * x.element_size(), on.stream);
    return rows;
  }
#endif
  return x.index_select(0, token_of_position);
}

// rows [T*k, D] in sorted order -> [T, D]: each token's k rows summed. An embedding bag of fixed
// size k per token reads the rows where they lie, instead of gathering a [T, k, D] copy to sum.
torch::Tensor sum_per_token(const torch::Tensor& rows, const torch::Tensor& position_of_slot, int64_t k) {
#ifdef MOELAB_WITH_CUDA_KERNELS
  if (slot_row_kernels_apply(rows) && rows.scalar_type() == torch::kBFloat16) {
    const int64_t tokens = position_of_slot.size(0) / k;
    auto sums = torch::empty({tokens, rows.size(1)}, rows.options());
    const LaunchOn on(rows);
    kernels::sum_rows_per_token(rows.const_data_ptr(), position_of_slot.const_data_ptr<int64_t>(), sums.data_ptr(),
                                tokens, k, rows.size(1), on.stream);
    return sums;
  }
#endif
  namespace F = torch::nn::functional;
  return F::embedding_bag(position_of_slot.view({-1, k}), rows, F::EmbeddingBagFuncOptions().mode(torch::kSum));
}

struct GatherSlots : torch::autograd::Function<GatherSlots> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const SlotLayout& layout) {
    ctx->save_for_backward({layout.position_of_slot});
    ctx->saved_data["k"] = layout.k;
    return rows_of_tokens(x, layout.token_of_position);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    return {sum_per_token(grad[0], ctx->get_saved_variables()[0], ctx->saved_data["k"].toInt()), torch::Tensor()};
  }
};

struct SumSlots : torch::autograd::Function<SumSlots> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& rows, const SlotLayout& layout) {
    ctx->save_for_backward({layout.token_of_position});
    return sum_per_token(rows, layout.position_of_slot, layout.k);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    return {rows_of_tokens(grad[0], ctx->get_saved_variables()[0]), torch::Tensor()};
  }
};

}  // namespace

SlotLayout sort_slots_by_expert(const torch::Tensor& expert_index, int64_t experts) {
  SlotLayout layout;
  layout.tokens = expert_index.size(0), layout.k = expert_index.size(1);
  auto flat = expert_index.flatten();
  // Sorted as bytes when the expert ids fit one: a radix sort then passes over 8 key bits, not 64.
  auto keys = experts <= 256 ? flat.to(torch::kByte) : flat;
  auto [sorted_keys, order] = keys.sort(/*stable=*/std::optional<bool>(true), /*dim=*/0);
  layout.slot_of_position = order;
  layout.token_of_position = layout.slot_of_position.div(layout.k, "floor");
  layout.position_of_slot = torch::empty_like(flat).scatter_(0, layout.slot_of_position,
                                                              torch::arange(flat.size(0), flat.options()));
  // Found by binary search in the sorted ids: counting them would be thousands of atomic adds on E
  // counters, then a cumulative sum and a cast.
  layout.group_ends = torch::searchsorted(sorted_keys, torch::arange(experts, sorted_keys.options()), /*out_int32=*/true,
                                          /*right=*/true);
  layout.expert_of_position = sorted_keys.to(torch::kLong);
  return layout;
}

bool slot_row_kernels_apply(const torch::Tensor& rows) { return own_kernel_takes_rows("slot_rows", rows); }

torch::Tensor gather_slots(const torch::Tensor& x, const SlotLayout& layout) { return GatherSlots::apply(x, layout); }

torch::Tensor sum_slots(const torch::Tensor& rows, const SlotLayout& layout) { return SumSlots::apply(rows, layout); }

torch::Tensor gates_in_sorted_order(const torch::Tensor& gate, const SlotLayout& layout) {
  return gate.flatten().index_select(0, layout.slot_of_position);
}

}  // namespace moelab
