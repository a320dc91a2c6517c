// Sweep specs (DESIGN.md "Sweep specs"): one JSON file describes an ablation study; expansion turns
// it into jobs, each a resolved config whose content hash is its id.
//
//   {"name": "routers", "base": {<job config>},
//    "axes": {"model.router": ["softmax", "kern"], "seed": [0, 1, 2]},       cartesian product
//    "zip": [{"model.experts": [32, 64], "model.top_k": [4, 8]}],            lists that vary together
//    "include": [{"model.router": "dense"}],                                 extra jobs (dotted paths)
//    "exclude": [{"model.router": "kern", "seed": 2}],                       drop matching jobs
//    "max_attempts": 3, "local": {"jobs": 2, "ranks": 1}, "slurm": {...}}
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/config/job_config.hpp"

namespace moelab {

struct LocalOptions {
  int jobs = 0;   // concurrent jobs; 0: one per `ranks` GPUs, else 1 on CPU
  int ranks = 1;  // data-parallel processes per job: one per GPU, or Gloo processes sharing the cores
};

// The evaluation stage of each job: lm-eval on its final checkpoint once training is done.
struct EvalStage {
  bool enabled = false;
  std::vector<std::string> tasks;  // default: the six of the paper
  int limit = 0;                   // documents per task; 0: all
  int every = 0;                   // also every checkpoint at a multiple of this step (kept from pruning); 0: final only
};

// `moelab eval` arguments that evaluate a job's newest checkpoint into `db`.
std::vector<std::string> eval_arguments(const EvalStage& stage, const std::string& job_id, const std::string& db);

struct SweepSpec {
  std::string name;
  nlohmann::json base = nlohmann::json::object();
  std::vector<std::pair<std::string, std::vector<nlohmann::json>>> axes;  // dotted path -> values
  std::vector<std::vector<std::pair<std::string, std::vector<nlohmann::json>>>> zips;
  std::vector<nlohmann::json> include, exclude;  // objects of dotted path -> value
  int max_attempts = 3;
  LocalOptions local;
  EvalStage eval;
  nlohmann::json slurm = nlohmann::json::object();  // kept for the Slurm executor
  nlohmann::json source;                            // the spec as written
  std::string file;                                 // where it was read from ("" when not from a file)
};

struct PlannedJob {
  std::string id;
  nlohmann::json axes = nlohmann::json::object();  // dotted path -> value this job took
  JobConfig config;
};

// Parses and checks a spec; throws ConfigError whose message starts with the JSON path in the spec
// ("axes.model.toplk: ...") and says what was expected. load_sweep_spec's errors, and expand's for a
// spec it loaded, start with the file.
SweepSpec parse_sweep_spec(const nlohmann::json& j);
SweepSpec load_sweep_spec(const std::string& path);

// All jobs of the spec in a stable order, duplicates (same resolved config) removed. Throws
// ConfigError naming the combination when one resolves to an invalid config.
std::vector<PlannedJob> expand(const SweepSpec& spec);

}  // namespace moelab
