// Errors of the kernels' CUDA calls become exceptions naming the call, as LibTorch's own do.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace moelab::kernels {

inline void check_cuda(cudaError_t error, const char* what) {
  if (error != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(error));
}

// After a launch: a bad configuration or a missing kernel image shows here, not at the next sync.
inline void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

}  // namespace moelab::kernels
