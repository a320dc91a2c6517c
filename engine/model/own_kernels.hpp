// What the autograd wrappers of moelab's CUDA kernels (engine/kernels) share: whether the kernels may
// take a tensor, the autograd names, and the stream they launch on. In a build without the kernels
// (no nvcc) nothing takes them, and ATen's ops run instead.
#pragma once

#include <torch/torch.h>

#ifdef MOELAB_WITH_CUDA_KERNELS
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "engine/kernels/switch.hpp"
#endif

namespace moelab {

// Whether moelab's kernels can run on `device`: a GPU of compute capability 8.0 or newer (the
// kernels are compiled for sm80 and sm90), in a build with the kernels.
bool own_kernels_run_on(const torch::Device& device);

// Whether moelab's kernel `kernel` (engine/kernels/<kernel>.cu) may run on t: they run on its
// device, and neither MOELAB_ATEN_ONLY nor a failed self-check turned it off (engine/kernels/switch.hpp).
bool own_kernel_takes(const char* kernel, const torch::Tensor& t);

// That, and t is rows the kernels' 16-byte loads and stores can move: 2-D, contiguous, each row a
// multiple of 16 bytes from a 16-byte aligned start.
bool own_kernel_takes_rows(const char* kernel, const torch::Tensor& t);

#ifdef MOELAB_WITH_CUDA_KERNELS
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Where a kernel on t's data launches: t's device made current (a launch goes to the current device)
// and LibTorch's current stream there, which its own ops use too (a captured step's while capturing).
struct LaunchOn {
  explicit LaunchOn(const torch::Tensor& t)
      : device(t.device()), stream(at::cuda::getCurrentCUDAStream(t.device().index())) {}
  c10::cuda::CUDAGuard device;
  CUstream_st* stream;
};
#endif

}  // namespace moelab
