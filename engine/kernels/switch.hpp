// MOELAB_ATEN_ONLY in the environment turns moelab's own CUDA kernels off, so that their ops take
// ATen's path as in a build without nvcc: `1` (or `all`) turns every kernel off, a comma-separated
// list of kernel names (kKernelNames) only those. For measuring the kernels against ATen in one
// build (bench/side_by_side.py's side "aten"), and for ruling one out when a GPU result looks wrong
// while the others keep running. Beside it, a kernel that fails its self-check at the start of a
// run is turned off for that run (engine/train/kernel_self_check.hpp).
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace moelab::kernels {

// One per engine/kernels/*.cu.
inline constexpr std::array<std::string_view, 4> kKernelNames = {"cross_entropy", "gated_gelu", "kern_gate", "slot_rows"};

// The kernels that a value of MOELAB_ATEN_ONLY turns off (unset, empty or 0: none). Throws, naming
// the choices, on a name that is not a kernel's.
inline std::set<std::string> kernels_turned_off(const char* value) {
  const std::string list = value == nullptr ? "" : value;
  if (list.empty() || list == "0") return {};
  if (list == "1" || list == "all") return {kKernelNames.begin(), kKernelNames.end()};
  std::set<std::string> off;
  std::stringstream names(list);
  for (std::string name; std::getline(names, name, ',');) {
    if (std::find(kKernelNames.begin(), kKernelNames.end(), name) == kKernelNames.end())
      throw std::invalid_argument("MOELAB_ATEN_ONLY=" + list + ": '" + name +
                                  "' is not one of moelab's kernels; give 1 (all of them) or a comma-separated list of "
                                  "cross_entropy, gated_gelu, kern_gate, slot_rows");
    off.insert(name);
  }
  return off;
}

// The bit that stands for the kernel `name` in the masks below: 1 << its index in kKernelNames.
// Throws for a name that is not a kernel's (a misspelt name would otherwise leave its kernel on).
inline unsigned kernel_bit(std::string_view name) {
  const auto at = std::find(kKernelNames.begin(), kKernelNames.end(), name);
  if (at == kKernelNames.end()) throw std::invalid_argument("'" + std::string(name) + "' is not one of moelab's kernels");
  return 1u << (at - kKernelNames.begin());
}

inline unsigned kernel_bits(const std::set<std::string>& names) {
  unsigned bits = 0;
  for (const auto& name : names) bits |= kernel_bit(name);
  return bits;
}

// The kernels MOELAB_ATEN_ONLY turns off, as bits; the environment is read on the first call.
inline unsigned turned_off_by_environment() {
  static const unsigned off = kernel_bits(kernels_turned_off(std::getenv("MOELAB_ATEN_ONLY")));
  return off;
}

inline bool enabled_by_environment(std::string_view name) { return (turned_off_by_environment() & kernel_bit(name)) == 0; }

// The kernels whose self-check failed at the start of this process's current run. An atomic word,
// as every kernel choice reads it (a relaxed load: it is written before the run's first step).
inline std::atomic<unsigned>& failed_self_check_bits() {
  static std::atomic<unsigned> bits{0};
  return bits;
}

// Turns exactly `names` off for the run (the others back on, as far as MOELAB_ATEN_ONLY allows).
inline void turn_off_for_this_run(const std::set<std::string>& names) {
  failed_self_check_bits().store(kernel_bits(names), std::memory_order_relaxed);
}

// Whether the kernel `name` may run now: neither MOELAB_ATEN_ONLY nor a failed self-check turned it off.
inline bool own_kernel_enabled(std::string_view name) {
  return ((turned_off_by_environment() | failed_self_check_bits().load(std::memory_order_relaxed)) & kernel_bit(name)) == 0;
}

}  // namespace moelab::kernels
