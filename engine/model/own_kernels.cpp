#include "engine/model/own_kernels.hpp"

namespace moelab {

bool own_kernels_take(const torch::Tensor& t) {
#ifdef MOELAB_WITH_CUDA_KERNELS
  return kernels::own_kernels_enabled() && t.is_cuda() && at::cuda::getDeviceProperties(t.device().index())->major >= 8;
#else
  return false;
#endif
}

bool own_kernels_take_rows(const torch::Tensor& t) {
  return own_kernels_take(t) && t.dim() == 2 && t.is_contiguous() && t.size(1) * t.element_size() % 16 == 0 &&
         reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
}

}  // namespace moelab
