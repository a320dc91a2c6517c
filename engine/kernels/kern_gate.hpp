// KERN's gate g = gamma * ReLU(u / ||u||_2), u = v + eps, over each row of fp32 scores v [rows, n],
// in one kernel each way (kern_gate.cu): what softmax costs, where ATen's composition (an add, the
// fused weight-norm pair and ReLU, and the sum that gives gamma's gradient) launches several. One
// warp per row; the arithmetic is weight normalisation's (v * (gamma / norm)), in fp32.
#pragma once

#include <cstdint>

struct CUstream_st;  // cudaStream_t

namespace moelab::kernels {

// v: fp32 [rows, n] contiguous; gamma: one fp32 on the device. Writes the gates (fp32 [rows, n]) and
// each row's norm ||v + eps|| (fp32 [rows]) for the backward.
void kern_gate_forward(const float* v, const float* gamma, float* gate, float* norm, int64_t rows, int64_t n, float eps,
                       bool relu, CUstream_st* stream);

// From the gates' gradient: the scores' gradient (fp32 [rows, n]) and each row's share of gamma's
// gradient (fp32 [rows]; gamma's gradient is their sum).
void kern_gate_backward(const float* v, const float* gamma, const float* norm, const float* grad_gate, float* grad_v,
                        float* grad_gamma_per_row, int64_t rows, int64_t n, float eps, bool relu, CUstream_st* stream);

}  // namespace moelab::kernels
