// The experts' activation: GELU of the first matmul's output, each row scaled by its slot's gate
// (experts.cpp: the gates scale the second matmul's input, g (a W) = (g a) W).
#pragma once

#include <torch/torch.h>

namespace moelab {

// GELU(hidden) * gate[:, None] for hidden [n, h] and gate [n], in hidden's dtype.
torch::Tensor gated_gelu(const torch::Tensor& hidden, const torch::Tensor& gate);

// Whether gated_gelu takes the fused kernels (engine/kernels/gated_gelu.hpp) for these inputs: bf16
// hidden units in contiguous 16-byte rows and fp32 gates on a GPU, in a build with the kernels,
// unless MOELAB_ATEN_ONLY turns it off (engine/kernels/switch.hpp).
bool fused_gated_gelu_applies(const torch::Tensor& hidden, const torch::Tensor& gate);

}  // namespace moelab
