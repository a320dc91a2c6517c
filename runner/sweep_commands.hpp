// `moelab sweep ...` and `moelab db query`.
#pragma once

#include <string>
#include <vector>

namespace moelab {

class Store;

int sweep_command(const std::vector<std::string>& args);
// The table `moelab sweep status` prints: counts per status, then a line per job.
void print_status(Store& store, const std::string& sweep);
int db_command(const std::vector<std::string>& args);

}  // namespace moelab
