// Cross-entropy over bf16 logits on CUDA in two kernels (cross_entropy.cu), for the loss of bf16
// training: ATen's path casts the [tokens, vocab] logits to fp32, runs log-softmax and its backward
// in fp32 and casts the gradient back, about 36 bytes of memory traffic per logit (a large share of
// a bf16 step at GPT-2's vocabulary); these read the bf16 logits once each way and write the bf16
// gradient, 6 bytes per logit, with the same fp32 arithmetic. Plain pointers, so that this header
// and the .cu file need no LibTorch; engine/model/cross_entropy.cpp wraps them for autograd.
#pragma once

#include <cstdint>

struct CUstream_st;  // cudaStream_t

namespace moelab::kernels {

// logits: bf16 [rows, vocab] contiguous, 16-byte aligned, vocab a multiple of 8; -inf logits take
// no probability. targets: int64 [rows]. Writes each row's log-sum-exp (fp32 [rows]) and loss
// lse - logit[target] (fp32 [rows]; NaN for a target outside [0, vocab)).
void cross_entropy_forward(const void* logits, const int64_t* targets, float* loss, float* lse, int64_t rows,
                           int64_t vocab, CUstream_st* stream);

// grad_logits (bf16, laid out as logits) = (softmax(row) - one_hot(target)) * grad_loss[row].
void cross_entropy_backward(const void* logits, const int64_t* targets, const float* lse, const float* grad_loss,
                            void* grad_logits, int64_t rows, int64_t vocab, CUstream_st* stream);

}  // namespace moelab::kernels
