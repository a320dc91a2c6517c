#include <malloc.h>

#include "runner/cli.hpp"

int main(int argc, char** argv) {
  // Training allocates and frees tensors of tens to hundreds of MB every step (the logits alone are
  // tokens x vocabulary). glibc serves those with mmap and returns them at free, so every step
  // page-faults its memory in again: on the demo that was half of the CPU time, in the kernel.
  // Keeping large blocks in the heap, and the heap untrimmed, lets the next step reuse them.
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  return moelab::run_cli(std::vector<std::string>(argv + 1, argv + argc));
}
