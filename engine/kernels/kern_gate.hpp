// KERN's gate g = gamma * ReLU(u / ||u||_2), u = v + eps, over each row of fp32 scores v [rows, n],
// in one kernel each way (kern_gate.cu), as softmax is, where ATen's composition (an add, the fused
// weight-norm pair and ReLU, and the sum that gives gamma's gradient) launches several. One
// warp per row; the arithmetic is weight normalisation's (v * (gamma / norm)), in fp32.
#pragma once

#include <cstdint>

struct CUstream_st;  // cudaStream_t

namespace moelab::kernels {

// v: fp32 [rows, n] contiguous; gamma: one fp32 on the device. Writes the gates (fp32 [rows, n]) and
// each row's norm ||v + eps|| (fp32 [rows]) for the backward.
void kern_gate_forward(const float* v, const float* gamma, float* gate, float* norm, int64_t rows, int64_t n, float eps,
                       bool relu, CUstream_st* stream);

// The blocks the backward launches for `rows`: the size of its scratch buffer `partials`.
int64_t kern_gate_backward_blocks(int64_t rows);

// From the gates' gradient: the scores' gradient (fp32 [rows, n]) and gamma's (one fp32), summed
// over the rows in a fixed order within the same kernel. partials: fp32 [kern_gate_backward_blocks].
// Launches of it on one device must not overlap (they share a counter of finished blocks); the
// engine's run one after another on one stream.
void kern_gate_backward(const float* v, const float* gamma, const float* norm, const float* grad_gate, float* grad_v,
                        float* grad_gamma, float* partials, int64_t rows, int64_t n, float eps, bool relu,
                        CUstream_st* stream);

}  // namespace moelab::kernels
