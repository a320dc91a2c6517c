// Moving tokens to their experts and back (DESIGN.md "Performance rules": dropless sort-based
// dispatch). Each of the T tokens fills k slots, one per chosen expert; sorting the T*k slots by
// expert makes every expert's rows contiguous. Because every token owns exactly k slots, both
// directions are permutations plus a sum over a token's k slots, so forward and backward are
// gathers and dense reductions: no scatter-add, whose GPU atomics collide k ways per element.
#pragma once

#include <torch/torch.h>

namespace moelab {

// Where each (token, choice) slot sits once the slots are sorted by expert. Slot t*k + j is
// token t's j-th choice ("token-major"); position p counts the sorted order.
struct SlotLayout {
  torch::Tensor token_of_position;  // [T*k] the token whose slot sits at position p
  torch::Tensor slot_of_position;   // [T*k] the token-major slot at position p
  torch::Tensor position_of_slot;   // [T*k] the inverse: where slot t*k + j sits
  torch::Tensor counts;             // [E] slots per expert, on the device
  int64_t tokens = 0, k = 0;
};

// A stable sort, so tokens keep their order within an expert's group.
SlotLayout sort_slots_by_expert(const torch::Tensor& expert_index, int64_t experts);

// x [T, D] -> rows [T*k, D] in sorted order: the row at position p is x[token_of_position[p]].
torch::Tensor gather_slots(const torch::Tensor& x, const SlotLayout& layout);

// rows [T*k, D] in sorted order, gate [T, k] -> [T, D]: out[t] = sum_j gate[t, j] * rows[position of slot t*k + j].
// The result has rows' dtype.
torch::Tensor combine_slots(const torch::Tensor& rows, const torch::Tensor& gate, const SlotLayout& layout);

}  // namespace moelab
