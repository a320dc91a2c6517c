// Everything a report needs about one sweep, read from the store in a few queries: its jobs with their
// resolved configs, validation losses by step, evaluation scores and routing statistics.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "db/store.hpp"
#include "engine/config/job_config.hpp"

namespace moelab {

struct EvalScore {
  int64_t step = 0;
  double value = 0;
  std::optional<double> stderr_value;
  int64_t samples = 0;
};

struct JobResult {
  std::string id, name;
  JobStatus status = JobStatus::queued;
  std::string error;
  EvalStatus eval_status;
  JobConfig config;
  std::string router;                                        // router_label(): kern variants apart
  std::map<int64_t, double> val_loss;                        // step -> validation loss
  std::map<std::string, EvalScore> evals;                    // "task/metric" -> newest step's score
  std::optional<RoutingMeans> routing;     // the newest step, averaged over its layers
  std::map<std::string, std::string> setting;                // varying config fields (see below) -> value

  // The loss at the configured last step; none while the job has not got there.
  std::optional<double> final_loss() const;
};

struct SweepResults {
  std::string name;
  std::vector<JobResult> jobs;  // ordered by router (the registry's order), then setting, then seed
  // Dotted config paths whose values differ between jobs, less the seed and the router's identity:
  // what separates one row of a table from another besides the router (e.g. model.seq_len).
  std::vector<std::string> setting_paths;
};

// Throws naming the sweep and listing the ones the store has when it has none by that name.
SweepResults load_sweep_results(const Store& store, const std::string& sweep);

// Orders setting values as numbers when both are numbers (8 before 16), else as text.
bool setting_value_less(const std::string& a, const std::string& b);

}  // namespace moelab
