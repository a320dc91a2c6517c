// MOELAB_ATEN_ONLY=1 in the environment turns moelab's own CUDA kernels off: every op then takes
// ATen's path, as in a build without nvcc. For measuring the kernels against ATen in one build
// (bench/side_by_side.py's side "aten") and for ruling them out when a GPU result looks wrong.
#pragma once

#include <cstdlib>
#include <string>

namespace moelab::kernels {

inline bool own_kernels_enabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("MOELAB_ATEN_ONLY");
    return value == nullptr || std::string(value).empty() || std::string(value) == "0";
  }();
  return enabled;
}

}  // namespace moelab::kernels
