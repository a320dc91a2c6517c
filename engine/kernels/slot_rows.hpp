// The MoE dispatch's two row movements on CUDA (slot_rows.cu), with 16-byte loads and stores and one
// warp per row: gathering token rows into slot rows, and summing each token's k slot rows. ATen's
// index_select moves one element per thread and its embedding bag 64 bytes per warp at a time;
// these are the gathers and sums of engine/model/slot_dispatch.cpp.
#pragma once

#include <cstdint>

struct CUstream_st;  // cudaStream_t

namespace moelab::kernels {

// out[p] = x[index[p]] for p < out_rows: rows of row_bytes bytes (a multiple of 16, rows 16-byte
// aligned), any element type. index: int64 [out_rows], each in [0, rows of x).
void gather_rows(const void* x, const int64_t* index, void* out, int64_t out_rows, int64_t row_bytes,
                 CUstream_st* stream);

// out[t] = sum over j < k of rows[slots[t * k + j]] for t < tokens: bf16 rows of `width` elements
// (a multiple of 8, rows 16-byte aligned), summed in fp32 in the order of j. slots: int64 [tokens * k].
void sum_rows_per_token(const void* rows, const int64_t* slots, void* out, int64_t tokens, int64_t k, int64_t width,
                        CUstream_st* stream);

}  // namespace moelab::kernels
