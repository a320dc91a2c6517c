#include "engine/kernels/kern_gate.hpp"

#include <cuda_runtime.h>

#include "engine/kernels/cuda_check.cuh"
#include "engine/kernels/warp_per_row.cuh"

namespace moelab::kernels {
namespace {

// ReLU as torch::relu has it: NaN stays NaN.
__device__ float activate(float g, bool relu) { return relu && g < 0.f ? 0.f : g; }

__global__ void forward_kernel(const float* __restrict__ v, const float* __restrict__ gamma, float* __restrict__ gate,
                               float* __restrict__ norm_out, int64_t rows, int64_t n, float eps, bool relu) {
  const int64_t row = warp_row();
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const float* u = v + row * n;
  float squares = 0.f;
  for (int64_t j = lane; j < n; j += 32) squares += (u[j] + eps) * (u[j] + eps);
  const float norm = sqrtf(warp_sum(squares));
  const float scale = *gamma / norm;
  for (int64_t j = lane; j < n; j += 32) gate[row * n + j] = activate((u[j] + eps) * scale, relu);
  if (lane == 0) norm_out[row] = norm;
}

// Counts a backward launch's finished blocks; the last one to finish resets it (atomicInc wraps).
__device__ unsigned int finished_blocks = 0;

// With y = u / ||u|| and h the gates' gradient where ReLU passed it: the scores' gradient is
// gamma / ||u|| * (h - y * sum(h * y)), and gamma's is the sum over rows of sum(h * y). Each block
// leaves its rows' sum in `partials`; the last block to finish adds those in a fixed order, so that
// gamma's gradient takes no second kernel and is the same from run to run.
__global__ void backward_kernel(const float* __restrict__ v, const float* __restrict__ gamma,
                                const float* __restrict__ norm_in, const float* __restrict__ grad_gate,
                                float* __restrict__ grad_v, float* __restrict__ grad_gamma, float* __restrict__ partials,
                                int64_t rows, int64_t n, float eps, bool relu) {
  __shared__ float row_sums[kRowsPerBlock];
  __shared__ bool last_block;
  const int64_t row = warp_row();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float hy = 0.f;
  if (row < rows) {  // whole warps, so the shuffles see all 32 lanes
    const float* u = v + row * n;
    const float* g = grad_gate + row * n;
    const float norm = norm_in[row], scale = *gamma / norm;
    auto passed = [&](int64_t j) { return !relu || (u[j] + eps) * scale > 0.f ? g[j] : 0.f; };
    for (int64_t j = lane; j < n; j += 32) hy += passed(j) * ((u[j] + eps) / norm);
    hy = warp_sum(hy);
    for (int64_t j = lane; j < n; j += 32) grad_v[row * n + j] = scale * (passed(j) - (u[j] + eps) / norm * hy);
  }
  if (lane == 0) row_sums[warp] = hy;
  __syncthreads();
  if (threadIdx.x == 0) {
    float block_sum = 0.f;
    for (int w = 0; w < kRowsPerBlock; ++w) block_sum += row_sums[w];
    partials[blockIdx.x] = block_sum;
    __threadfence();  // the partial is visible to every block before the count says it is there
    last_block = atomicInc(&finished_blocks, gridDim.x - 1) == gridDim.x - 1;
    __threadfence();  // and the last block reads the partials only after its count
  }
  __syncthreads();
  if (!last_block || warp != 0) return;
  float total = 0.f;
  for (int64_t b = lane; b < gridDim.x; b += 32) total += __ldcg(partials + b);  // from L2, past this SM's L1
  total = warp_sum(total);
  if (lane == 0) *grad_gamma = total;
}

}  // namespace

void kern_gate_forward(const float* v, const float* gamma, float* gate, float* norm, int64_t rows, int64_t n, float eps,
                       bool relu, CUstream_st* stream) {
  if (rows == 0) return;
  forward_kernel<<<blocks_for(rows), kRowsPerBlock * 32, 0, stream>>>(v, gamma, gate, norm, rows, n, eps, relu);
  check_launch("kern_gate_forward");
}

int64_t kern_gate_backward_blocks(int64_t rows) { return blocks_for(rows); }

void kern_gate_backward(const float* v, const float* gamma, const float* norm, const float* grad_gate, float* grad_v,
                        float* grad_gamma, float* partials, int64_t rows, int64_t n, float eps, bool relu,
                        CUstream_st* stream) {
  if (rows == 0) return check_cuda(cudaMemsetAsync(grad_gamma, 0, sizeof(float), stream), "kern_gate_backward");
  backward_kernel<<<blocks_for(rows), kRowsPerBlock * 32, 0, stream>>>(v, gamma, norm, grad_gate, grad_v, grad_gamma,
                                                                      partials, rows, n, eps, relu);
  check_launch("kern_gate_backward");
}

}  // namespace moelab::kernels
