// The experts' activation between their two matmuls, GELU(hidden) scaled by each row's gate, in one
// kernel each way (gated_gelu.cu). ATen's composition runs GELU, the multiply, and backward the
// multiply's two gradients (one a row sum over a materialised product) and GELU's backward: about
// 14 bytes of memory traffic per hidden unit, where these read the bf16 hidden units once forward and
// twice backward, writing once each way: about 10 for the pair, and nothing extra saved for the
// backward. Plain pointers, so that this header and the .cu file need no LibTorch;
// engine/model/gated_gelu.cpp wraps them for autograd.
#pragma once

#include <cstdint>

struct CUstream_st;  // cudaStream_t

namespace moelab::kernels {

// hidden: bf16 [rows, width] contiguous, 16-byte aligned, width a multiple of 8; gate: fp32 [rows].
// out (bf16, laid out as hidden) = GELU(hidden) * gate[row], exact (erf) GELU computed in fp32.
void gated_gelu_forward(const void* hidden, const float* gate, void* out, int64_t rows, int64_t width,
                        CUstream_st* stream);

// From the output's gradient g (bf16, laid out as hidden): the hidden units' gradient
// g * gate[row] * GELU'(hidden) (bf16) and the gates' sum_j g[row, j] * GELU(hidden[row, j]) (fp32 [rows]).
void gated_gelu_backward(const void* hidden, const float* gate, const void* grad_out, void* grad_hidden,
                         float* grad_gate, int64_t rows, int64_t width, CUstream_st* stream);

}  // namespace moelab::kernels
