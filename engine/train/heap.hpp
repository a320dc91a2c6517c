// How the process's heap treats the large tensors a training step allocates and frees. Included
// by exactly one file of each binary that trains or benchmarks training (its main), which also
// links jemalloc (CMake: moelab_use_jemalloc).
#pragma once

// Training allocates and frees tensors of tens to hundreds of MB every step (the logits alone are
// tokens x vocabulary). Returned to the kernel at free, every step page-faults its memory in again;
// kept in glibc's heap instead, the heap fragmented and grew step after step without end. jemalloc
// reuses freed extents without fragmenting: huge blocks stay in the ordinary arenas (no oversize
// arena, which unmaps at free), and freed pages are kept for reuse between the trainer's periodic
// returns of them (return_freed_heap_pages in memory_use.hpp), not purged on a timer. jemalloc
// reads this symbol at start; MALLOC_CONF in the environment still overrides it.
extern "C" const char* malloc_conf;
const char* malloc_conf = "oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1";
