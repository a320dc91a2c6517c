#include "engine/kernels/cross_entropy.hpp"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "engine/kernels/bf16_vector.cuh"
#include "engine/kernels/cuda_check.cuh"

namespace moelab::kernels {
namespace {

// One block per row. A row of GPT-2's padded vocabulary is 100 KB of bf16: each thread reads about
// a dozen 16-byte vectors of it.
constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

// A running softmax denominator: sum of exp(v - max) over the values seen, and their max.
struct MaxSum {
  float max;
  float sum;
};

__device__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.max, b.max);
  if (m == -INFINITY) return {m, 0.f};  // nothing but -inf so far (exp(-inf - -inf) would be NaN)
  return {m, a.sum * expf(a.max - m) + b.sum * expf(b.max - m)};
}

__device__ void add(MaxSum& s, float v) {
  if (v > s.max) {
    s.sum = s.sum * expf(s.max - v) + 1.f;
    s.max = v;
  } else if (v != -INFINITY) {
    s.sum += expf(v - s.max);  // a NaN logit lands here and makes the row's loss NaN
  }
}

__device__ MaxSum warp_merge(MaxSum s) {
  for (int offset = 16; offset > 0; offset /= 2)
    s = merge(s, {__shfl_xor_sync(0xffffffffu, s.max, offset), __shfl_xor_sync(0xffffffffu, s.sum, offset)});
  return s;
}

// The whole block's MaxSum, in thread 0.
__device__ MaxSum block_merge(MaxSum s) {
  __shared__ MaxSum per_warp[kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  s = warp_merge(s);
  if (lane == 0) per_warp[warp] = s;
  __syncthreads();
  if (warp == 0) s = warp_merge(lane < kWarps ? per_warp[lane] : MaxSum{-INFINITY, 0.f});
  return s;
}

__global__ void __launch_bounds__(kThreads)
    forward_kernel(const __nv_bfloat16* __restrict__ logits, const int64_t* __restrict__ targets,
                   float* __restrict__ loss, float* __restrict__ lse, int64_t vocab) {
  const int64_t row = blockIdx.x;
  const __nv_bfloat16* x = logits + row * vocab;
  const uint4* vectors = reinterpret_cast<const uint4*>(x);
  MaxSum s{-INFINITY, 0.f};
  for (int64_t i = threadIdx.x; i < vocab / kPerVector; i += kThreads) {
    float f[kPerVector];
    unpack(vectors[i], f);
#pragma unroll
    for (int e = 0; e < kPerVector; ++e) add(s, f[e]);
  }
  s = block_merge(s);
  if (threadIdx.x == 0) {
    const int64_t target = targets[row];
    const float row_lse = s.max + logf(s.sum);
    lse[row] = row_lse;
    loss[row] = target >= 0 && target < vocab ? row_lse - __bfloat162float(x[target]) : NAN;
  }
}

__global__ void __launch_bounds__(kThreads)
    backward_kernel(const __nv_bfloat16* __restrict__ logits, const int64_t* __restrict__ targets,
                    const float* __restrict__ lse, const float* __restrict__ grad_loss,
                    __nv_bfloat16* __restrict__ grad_logits, int64_t vocab) {
  const int64_t row = blockIdx.x;
  const float row_lse = lse[row], scale = grad_loss[row];
  const int64_t target = targets[row];
  const uint4* in = reinterpret_cast<const uint4*>(logits + row * vocab);
  uint4* out = reinterpret_cast<uint4*>(grad_logits + row * vocab);
  for (int64_t i = threadIdx.x; i < vocab / kPerVector; i += kThreads) {
    float f[kPerVector];
    unpack(in[i], f);
#pragma unroll
    for (int e = 0; e < kPerVector; ++e)
      f[e] = (expf(f[e] - row_lse) - (i * kPerVector + e == target ? 1.f : 0.f)) * scale;
    out[i] = pack(f);
  }
}

}  // namespace

void cross_entropy_forward(const void* logits, const int64_t* targets, float* loss, float* lse, int64_t rows,
                           int64_t vocab, CUstream_st* stream) {
  if (rows == 0) return;
  forward_kernel<<<rows, kThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(logits), targets, loss, lse, vocab);
  check_launch("cross_entropy_forward");
}

void cross_entropy_backward(const void* logits, const int64_t* targets, const float* lse, const float* grad_loss,
                            void* grad_logits, int64_t rows, int64_t vocab, CUstream_st* stream) {
  if (rows == 0) return;
  backward_kernel<<<rows, kThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(logits), targets, lse, grad_loss,
                                                 static_cast<__nv_bfloat16*>(grad_logits), vocab);
  check_launch("cross_entropy_backward");
}

}  // namespace moelab::kernels
