// Experts and dropless sort-based dispatch (DESIGN.md "Performance rules").
// Each expert is a two-matrix MLP d -> hidden -> d with GELU; all experts' weights live in stacked
// tensors so that dispatch can group tokens by expert and run one matmul per expert group.
#pragma once

#include <torch/torch.h>

namespace moelab {

class ExpertsImpl : public torch::nn::Module {
 public:
  ExpertsImpl(int experts, int d_model, int hidden);
  // x [T, d]; expert_index and gate [T, k]. Returns sum_j gate[t, j] * expert_{index[t, j]}(x[t]).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& expert_index, const torch::Tensor& gate);
  // One expert applied to rows x [n, d]; the reference the dispatch is tested against.
  torch::Tensor apply_expert(int e, const torch::Tensor& x);

  torch::Tensor w_in, b_in, w_out, b_out;  // [E, d, h], [E, h], [E, h, d], [E, d]
};
TORCH_MODULE(Experts);

}  // namespace moelab
