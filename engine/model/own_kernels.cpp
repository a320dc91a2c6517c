#include "engine/model/own_kernels.hpp"

namespace moelab {

bool own_kernels_run_on(const torch::Device& device) {
#ifdef MOELAB_WITH_CUDA_KERNELS
  return device.is_cuda() && at::cuda::getDeviceProperties(device.index())->major >= 8;
#else
  return false;
#endif
}

bool own_kernel_takes(const char* kernel, const torch::Tensor& t) {
#ifdef MOELAB_WITH_CUDA_KERNELS
  return own_kernels_run_on(t.device()) && kernels::own_kernel_enabled(kernel);
#else
  return false;
#endif
}

bool own_kernel_takes_rows(const char* kernel, const torch::Tensor& t) {
  return own_kernel_takes(kernel, t) && t.dim() == 2 && t.is_contiguous() && t.size(1) * t.element_size() % 16 == 0 &&
         reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
}

}  // namespace moelab
