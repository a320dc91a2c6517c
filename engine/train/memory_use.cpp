#include "engine/train/memory_use.hpp"

#include <sys/resource.h>

#ifdef MOELAB_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

// jemalloc's control interface, weak so that binaries without jemalloc (the tests) link too.
extern "C" int mallctl(const char* name, void* old, size_t* old_size, void* value, size_t size) __attribute__((weak));

namespace moelab {

void return_freed_heap_pages() {
  if (mallctl) mallctl("arena.4096.purge", nullptr, nullptr, nullptr, 0);  // 4096: MALLCTL_ARENAS_ALL
}

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
