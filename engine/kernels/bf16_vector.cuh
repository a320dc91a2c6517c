// Eight bf16 values moved as one 16-byte vector (uint4) and computed on as floats: the loads and
// stores of the kernels over bf16 rows (cross_entropy.cu, gated_gelu.cu, slot_rows.cu).
#pragma once

#include <cuda_bf16.h>

namespace moelab::kernels {

constexpr int kPerVector = 8;  // bf16 values per 16 bytes

__device__ inline void unpack(const uint4& v, float (&f)[kPerVector]) {
  const auto* pairs = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int p = 0; p < kPerVector / 2; ++p) {
    const float2 two = __bfloat1622float2(pairs[p]);
    f[2 * p] = two.x, f[2 * p + 1] = two.y;
  }
}

// Rounded to nearest, as ATen rounds fp32 results to bf16.
__device__ inline uint4 pack(const float (&f)[kPerVector]) {
  uint4 v;
  auto* pairs = reinterpret_cast<__nv_bfloat162*>(&v);
#pragma unroll
  for (int p = 0; p < kPerVector / 2; ++p) pairs[p] = __floats2bfloat162_rn(f[2 * p], f[2 * p + 1]);
  return v;
}

}  // namespace moelab::kernels
