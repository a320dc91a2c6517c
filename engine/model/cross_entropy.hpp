// The language-model loss: mean cross-entropy of logits [rows, vocab] against targets [rows],
// computed in fp32 whatever the logits' precision.
#pragma once

#include <torch/torch.h>

namespace moelab {

torch::Tensor fp32_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets);

// Whether fp32_cross_entropy takes the fused bf16 kernels (engine/kernels/cross_entropy.hpp) for
// these logits: CUDA, bf16, contiguous 16-byte rows, sm80 or newer, in a build with the kernels,
// unless MOELAB_ATEN_ONLY turns it off (engine/kernels/switch.hpp).
bool fused_cross_entropy_applies(const torch::Tensor& logits);

}  // namespace moelab
