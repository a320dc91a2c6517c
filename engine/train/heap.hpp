// How the process's heap treats the large tensors a training step allocates and frees.
#pragma once

#include <malloc.h>

namespace moelab {

// Training allocates and frees tensors of tens to hundreds of MB every step (the logits alone are
// tokens x vocabulary). glibc serves those with mmap and returns them at free, so every step
// page-faults its memory in again: on the demo that was half of the CPU time, in the kernel.
// Keeping large blocks in the heap, and the heap untrimmed, lets the next step reuse them.
// Called first thing by every binary that trains or benchmarks training.
inline void keep_large_blocks_in_heap() {
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

}  // namespace moelab
