#include "engine/train/memory_use.hpp"

#include <sys/resource.h>

#ifdef MOELAB_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace moelab {

PeakMemory peak_memory(const torch::Device& device) {
  PeakMemory peak;
  rusage usage{};
  if (getrusage(RUSAGE_SELF, &usage) == 0) peak.resident_bytes = int64_t(usage.ru_maxrss) * 1024;  // Linux: KiB
#ifdef MOELAB_WITH_CUDA
  // Reserved, not allocated: the caching allocator holds what it reserved, so that is what other
  // processes on the GPU cannot have.
  if (device.is_cuda())
    peak.gpu_bytes = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index())
                         .reserved_bytes[size_t(c10::CachingAllocator::StatType::AGGREGATE)]
                         .peak;
#endif
  return peak;
}

}  // namespace moelab
