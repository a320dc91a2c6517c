// How much memory a training process has needed at most: what users size `sweep run --jobs` by.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace moelab {

struct PeakMemory {
  int64_t resident_bytes = 0;  // the process's peak resident set (CPU memory)
  int64_t gpu_bytes = 0;       // the peak that the CUDA caching allocator reserved on the device; 0 on the CPU
};

PeakMemory peak_memory(const torch::Device& device);

// Steps between two returns of freed heap pages to the kernel (return_freed_heap_pages).
inline constexpr int kStepsBetweenHeapReturns = 25;

// Gives the pages of freed blocks back to the kernel, where jemalloc keeps them (heap.hpp): kept,
// they spare every step the page faults of its fresh tensors; never returned, the blocks that the
// steps' varying shapes leave unusable add up to a few MB a step. A no-op without jemalloc.
void return_freed_heap_pages();

}  // namespace moelab
