// The `moelab` command line: one binary, one subcommand per verb.
#pragma once

#include <string>
#include <vector>

namespace moelab {

// Runs `moelab <args...>` and returns the process exit code. Errors are printed as "error: ...".
int run_cli(const std::vector<std::string>& args);

}  // namespace moelab
