#include "engine/kernels/slot_rows.hpp"

#include <cuda_runtime.h>

#include "engine/kernels/bf16_vector.cuh"
#include "engine/kernels/cuda_check.cuh"
#include "engine/kernels/warp_per_row.cuh"

namespace moelab::kernels {
namespace {

__global__ void gather_kernel(const uint4* __restrict__ x, const int64_t* __restrict__ index, uint4* __restrict__ out,
                              int64_t out_rows, int64_t vectors_per_row) {
  const int64_t row = warp_row();
  if (row >= out_rows) return;
  const uint4* from = x + index[row] * vectors_per_row;
  uint4* to = out + row * vectors_per_row;
  for (int64_t i = threadIdx.x % 32; i < vectors_per_row; i += 32) to[i] = from[i];
}

__global__ void sum_kernel(const uint4* __restrict__ rows, const int64_t* __restrict__ slots, uint4* __restrict__ out,
                           int64_t tokens, int64_t k, int64_t vectors_per_row) {
  const int64_t token = warp_row();
  if (token >= tokens) return;
  const int64_t* own = slots + token * k;
  for (int64_t i = threadIdx.x % 32; i < vectors_per_row; i += 32) {
    float total[kPerVector] = {};
    for (int64_t j = 0; j < k; ++j) {
      float row[kPerVector];
      unpack(rows[own[j] * vectors_per_row + i], row);
#pragma unroll
      for (int e = 0; e < kPerVector; ++e) total[e] += row[e];
    }
    out[token * vectors_per_row + i] = pack(total);
  }
}

}  // namespace

void gather_rows(const void* x, const int64_t* index, void* out, int64_t out_rows, int64_t row_bytes,
                 CUstream_st* stream) {
  if (out_rows == 0) return;
  gather_kernel<<<blocks_for(out_rows), kRowsPerBlock * 32, 0, stream>>>(
      static_cast<const uint4*>(x), index, static_cast<uint4*>(out), out_rows, row_bytes / int64_t(sizeof(uint4)));
  check_launch("gather_rows");
}

void sum_rows_per_token(const void* rows, const int64_t* slots, void* out, int64_t tokens, int64_t k, int64_t width,
                        CUstream_st* stream) {
  if (tokens == 0) return;
  sum_kernel<<<blocks_for(tokens), kRowsPerBlock * 32, 0, stream>>>(static_cast<const uint4*>(rows), slots,
                                                                    static_cast<uint4*>(out), tokens, k,
                                                                    width / kPerVector);
  check_launch("sum_rows_per_token");
}

}  // namespace moelab::kernels
