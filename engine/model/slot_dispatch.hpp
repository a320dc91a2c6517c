// Moving tokens to their experts and back (DESIGN.md "Performance rules": dropless sort-based
// dispatch). Each of the T tokens fills k slots, one per chosen expert; sorting the T*k slots by
// expert makes every expert's rows contiguous. Because every token owns exactly k slots, both
// directions are permutations plus a sum over a token's k slots, so forward and backward are
// gathers and per-token sums (embedding bags of k rows): no scatter-add, whose GPU atomics collide k
// ways per element. The experts scale their rows by the gates themselves (experts.cpp), so
// combining is a plain sum.
#pragma once

#include <torch/torch.h>

namespace moelab {

// Where each (token, choice) slot sits once the slots are sorted by expert. Slot t*k + j is
// token t's j-th choice ("token-major"); position p counts the sorted order.
struct SlotLayout {
  torch::Tensor token_of_position;  // [T*k] the token whose slot sits at position p
  torch::Tensor slot_of_position;   // [T*k] the token-major slot at position p
  torch::Tensor position_of_slot;   // [T*k] the inverse: where slot t*k + j sits
  torch::Tensor expert_of_position; // [T*k] int64: the expert whose rows include position p (ascending)
  torch::Tensor group_ends;         // [E] int32: where each expert's rows end in sorted order, on the device
  int64_t tokens = 0, k = 0;
};

// A stable sort, so tokens keep their order within an expert's group.
SlotLayout sort_slots_by_expert(const torch::Tensor& expert_index, int64_t experts);

// x [T, D] -> rows [T*k, D] in sorted order: the row at position p is x[token_of_position[p]].
// Its gradient sums each token's k rows.
torch::Tensor gather_slots(const torch::Tensor& x, const SlotLayout& layout);

// The adjoint of gather_slots: rows [T*k, D] in sorted order -> [T, D], each token the sum of its k
// rows. Its gradient gathers each token's gradient to its k rows.
torch::Tensor sum_slots(const torch::Tensor& rows, const SlotLayout& layout);

// Whether the gathers and sums above take moelab's row kernels (engine/kernels/slot_rows.hpp) for
// rows like these: on a GPU, contiguous, 16-byte rows (the sums: bf16 only), in a build with the
// kernels, unless MOELAB_ATEN_ONLY turns them off.
bool slot_row_kernels_apply(const torch::Tensor& rows);

// gate [T, k] -> [T*k]: the gate of the slot at each sorted position.
torch::Tensor gates_in_sorted_order(const torch::Tensor& gate, const SlotLayout& layout);

}  // namespace moelab
