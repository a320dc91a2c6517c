// KERN's gate function: g = gamma * act(v / ||v||_2) along the last dimension of scores v [T, n],
// act = ReLU unless disabled (DESIGN.md "Routers").
#pragma once

#include <torch/torch.h>

namespace moelab {

// Added to every score before the norm: an all-zero row becomes uniform rather than 0/0, and any
// other gate moves by at most eps / ||v||, as with eps added to the norm.
constexpr double kKernScoreEps = 1e-8;

// On a GPU moelab's kernels where they apply (below), on the CPU one pass over each row each way;
// elsewhere (a GPU without the kernels) kern_gate_composition.
torch::Tensor kern_gate(const torch::Tensor& v, const torch::Tensor& gamma, bool relu);

// The same from ATen's ops: what a GPU without moelab's kernels runs, and what the tests hold the
// CPU pass and the CUDA kernels to.
torch::Tensor kern_gate_composition(const torch::Tensor& v, const torch::Tensor& gamma, bool relu);

// Whether kern_gate takes the fused kernels (engine/kernels/kern_gate.hpp) for these inputs: fp32
// scores [T, n] and gamma on a GPU, in a build with the kernels, unless
// MOELAB_ATEN_ONLY turns it off (engine/kernels/switch.hpp).
bool fused_kern_gate_applies(const torch::Tensor& v, const torch::Tensor& gamma);

}  // namespace moelab
