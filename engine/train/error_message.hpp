// The line a failed command prints and a failed job records.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <exception>
#include <string>

namespace moelab {

// LibTorch's errors carry a C++ backtrace in what(): dozens of frames that bury the one line a user
// acts on. It is left out unless MOELAB_BACKTRACE=1 asks for it.
inline std::string error_message(const std::exception& e) {
  const char* backtrace = std::getenv("MOELAB_BACKTRACE");
  const bool wanted = backtrace != nullptr && std::string(backtrace) == "1";
  if (const auto* torch_error = dynamic_cast<const c10::Error*>(&e); torch_error && !wanted)
    return torch_error->what_without_backtrace();
  return e.what();
}

}  // namespace moelab
