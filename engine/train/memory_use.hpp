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

}  // namespace moelab
