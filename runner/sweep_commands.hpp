// `moelab sweep ...` and `moelab db query`.
#pragma once

#include <string>
#include <vector>

namespace moelab {

int sweep_command(const std::vector<std::string>& args);
int db_command(const std::vector<std::string>& args);

}  // namespace moelab
