#include "engine/kernels/gated_gelu.hpp"

#include <cuda_runtime.h>

#include "engine/kernels/bf16_vector.cuh"
#include "engine/kernels/cuda_check.cuh"
#include "engine/kernels/warp_per_row.cuh"

namespace moelab::kernels {
namespace {

// GELU(x) = x * Phi(x), Phi the standard normal distribution function, as torch::gelu computes it
// by default (no tanh approximation); its derivative is Phi(x) + x * phi(x).
__device__ float normal_cdf(float x) { return 0.5f * (1.f + erff(x * 0.70710678118654752f)); }
__device__ float normal_pdf(float x) { return 0.39894228040143268f * expf(-0.5f * x * x); }

__global__ void forward_kernel(const uint4* __restrict__ hidden, const float* __restrict__ gate,
                               uint4* __restrict__ out, int64_t rows, int64_t vectors_per_row) {
  const int64_t row = warp_row();
  if (row >= rows) return;
  const float g = gate[row];
  for (int64_t i = row * vectors_per_row + threadIdx.x % 32; i < (row + 1) * vectors_per_row; i += 32) {
    float x[kPerVector];
    unpack(hidden[i], x);
#pragma unroll
    for (int e = 0; e < kPerVector; ++e) x[e] = x[e] * normal_cdf(x[e]) * g;
    out[i] = pack(x);
  }
}

__global__ void backward_kernel(const uint4* __restrict__ hidden, const float* __restrict__ gate,
                                const uint4* __restrict__ grad_out, uint4* __restrict__ grad_hidden,
                                float* __restrict__ grad_gate, int64_t rows, int64_t vectors_per_row) {
  const int64_t row = warp_row();
  if (row >= rows) return;  // whole warps, so the shuffles below see all 32 lanes
  const float g = gate[row];
  float gate_sum = 0.f;
  for (int64_t i = row * vectors_per_row + threadIdx.x % 32; i < (row + 1) * vectors_per_row; i += 32) {
    float x[kPerVector], dy[kPerVector];
    unpack(hidden[i], x);
    unpack(grad_out[i], dy);
#pragma unroll
    for (int e = 0; e < kPerVector; ++e) {
      const float cdf = normal_cdf(x[e]);
      gate_sum += dy[e] * x[e] * cdf;
      x[e] = dy[e] * g * (cdf + x[e] * normal_pdf(x[e]));
    }
    grad_hidden[i] = pack(x);
  }
  gate_sum = warp_sum(gate_sum);
  if (threadIdx.x % 32 == 0) grad_gate[row] = gate_sum;
}

}  // namespace

void gated_gelu_forward(const void* hidden, const float* gate, void* out, int64_t rows, int64_t width,
                        CUstream_st* stream) {
  if (rows == 0) return;
  forward_kernel<<<blocks_for(rows), kRowsPerBlock * 32, 0, stream>>>(
      static_cast<const uint4*>(hidden), gate, static_cast<uint4*>(out), rows, width / kPerVector);
  check_launch("gated_gelu_forward");
}

void gated_gelu_backward(const void* hidden, const float* gate, const void* grad_out, void* grad_hidden,
                         float* grad_gate, int64_t rows, int64_t width, CUstream_st* stream) {
  if (rows == 0) return;
  backward_kernel<<<blocks_for(rows), kRowsPerBlock * 32, 0, stream>>>(
      static_cast<const uint4*>(hidden), gate, static_cast<const uint4*>(grad_out), static_cast<uint4*>(grad_hidden),
      grad_gate, rows, width / kPerVector);
  check_launch("gated_gelu_backward");
}

}  // namespace moelab::kernels
