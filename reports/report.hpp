// `moelab report`: the paper's tables for one sweep, as markdown (report.md with every study, the
// missing jobs and the plots), one CSV per table, and plots drawn by reports/plot.py (matplotlib).
#pragma once

#include <string>
#include <vector>

#include "db/default_paths.hpp"
#include "reports/studies.hpp"

namespace moelab {

struct ReportOptions {
  std::string db_path = kDefaultStorePath;
  std::string sweep;
  std::vector<Study> studies;            // empty: every study that applies to the sweep
  std::vector<std::string> formats = {"md", "csv", "png", "svg"};
  std::string out_dir;                   // default: <db dir>/reports/<sweep>
  bool paper = false;                    // put the paper's figures beside ours
  std::string python;                    // default: <source>/.venv/bin/python
};

// Writes the report and returns the files written. Throws with a message naming the problem (no
// store, no such sweep, unknown format, plotting failed).
std::vector<std::string> write_report(const ReportOptions& options);

}  // namespace moelab
