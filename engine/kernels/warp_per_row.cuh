// The layout kern_gate.cu, gated_gelu.cu and slot_rows.cu share: one warp per row, eight rows per
// block of 256.
#pragma once

#include <cstdint>

namespace moelab::kernels {

constexpr int kRowsPerBlock = 8;

// This warp's row. Rows are whole warps, so a warp past the last row can skip it without breaking
// a shuffle.
__device__ inline int64_t warp_row() { return int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32; }

inline int64_t blocks_for(int64_t rows) { return (rows + kRowsPerBlock - 1) / kRowsPerBlock; }

// The sum over the warp's 32 lanes, in every lane.
__device__ inline float warp_sum(float x) {
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

}  // namespace moelab::kernels
