// Experts and dropless sort-based dispatch (DESIGN.md "Performance rules").
// Each expert is a two-matrix MLP d -> hidden -> d with GELU; all experts' weights live in stacked
// tensors so that dispatch can group tokens by expert and multiply each group by its expert's weights.
#pragma once

#include <torch/torch.h>

#include "engine/model/slot_dispatch.hpp"

namespace moelab {

// How the expert groups are multiplied.
enum class ExpertKernel {
  PerExpertLoop,  // one addmm per non-empty expert; sizes the groups on the host (one sync per layer)
  GroupedMm,      // one at::_grouped_mm per weight with device-side group offsets (no host sync):
                  // CUTLASS kernels on sm90/sm100 in bf16, ATen's own per-group loop elsewhere
};

// GroupedMm for bf16 on CUDA (bf16 tensors, or bf16 autocast), PerExpertLoop otherwise.
ExpertKernel expert_kernel_for(const torch::Tensor& x);

// Whether at::_grouped_mm keeps the group offsets on the device for bf16 on this device: its CUTLASS
// kernels run on compute capability 9.x and 10.x; elsewhere ATen loops over the groups, reading the
// offsets on the host (a sync per matmul, which a captured CUDA graph cannot contain).
bool grouped_mm_stays_on_device(const torch::Device& device);

class ExpertsImpl : public torch::nn::Module {
 public:
  ExpertsImpl(int experts, int d_model, int hidden);
  // x [T, d]; expert_index and gate [T, k]. Returns sum_j gate[t, j] * expert_{index[t, j]}(x[t]).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& expert_index, const torch::Tensor& gate);
  // The same with a chosen kernel (tests run both on the CPU).
  torch::Tensor forward_with_kernel(const torch::Tensor& x, const torch::Tensor& expert_index, const torch::Tensor& gate,
                        ExpertKernel kernel);
  // One expert applied to rows x [n, d]; the reference the dispatch is tested against.
  torch::Tensor apply_expert(int e, const torch::Tensor& x);

  torch::Tensor w_in, b_in, w_out, b_out;  // [E, d, h] (stored as [E, h, d]), [E, h], [E, h, d], [E, d]

 private:
  // Rows grouped by expert (the layout's group ends [E] on the device); the result's rows match them.
  torch::Tensor per_expert_loop(const torch::Tensor& rows, const torch::Tensor& group_ends);
  // Rows in the layout's sorted order, zero-padded to a multiple of 8 columns, and each row's gate
  // [n]; the result's rows are the experts' outputs without their output bias, scaled by their
  // gates, its columns zero-padded to a multiple of 8.
  torch::Tensor grouped_mm(const torch::Tensor& rows, const SlotLayout& layout, const torch::Tensor& gate);
};
TORCH_MODULE(Experts);

}  // namespace moelab
