// `moelab sweep plan|run|status|cancel` and `moelab db query`; runner/cli.cpp's table of commands names them.
#pragma once

#include <string>
#include <vector>

namespace moelab {

class Store;

int sweep_plan(const std::vector<std::string>& args);
int sweep_run(const std::vector<std::string>& args);
int sweep_status(const std::vector<std::string>& args);
int sweep_cancel(const std::vector<std::string>& args);
int db_query(const std::vector<std::string>& args);

// The table `moelab sweep status` prints: counts per status, then a line per job.
void print_status(Store& store, const std::string& sweep);

}  // namespace moelab
