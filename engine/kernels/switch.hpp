// MOELAB_ATEN_ONLY in the environment turns moelab's own CUDA kernels off, so that their ops take
// ATen's path as in a build without nvcc: `1` (or `all`) turns every kernel off, a comma-separated
// list of kernel names (kKernelNames) only those. For measuring the kernels against ATen in one
// build (bench/side_by_side.py's side "aten"), and for ruling one out when a GPU result looks wrong
// while the others keep running.
#pragma once

#include <algorithm>
#include <array>
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

// Whether the kernel `name` may run in this process; the environment is read on the first call.
inline bool own_kernel_enabled(const std::string& name) {
  static const std::set<std::string> off = kernels_turned_off(std::getenv("MOELAB_ATEN_ONLY"));
  return off.count(name) == 0;
}

}  // namespace moelab::kernels
