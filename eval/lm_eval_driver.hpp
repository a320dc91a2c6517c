// `moelab eval`: score a checkpoint with lm-evaluation-harness's own task definitions. The
// checkpoint is served on loopback (`moelab serve`'s server, in this process), lm-eval's
// `local-completions` model talks to it, and the accuracies it reports go to the store.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace moelab {

// The six zero-shot tasks of the KERN paper's Table 1.
const std::vector<std::string>& paper_tasks();

// The max_length lm-eval is given: it left-truncates requests longer than this, and the server scores
// anything shorter with a sliding window over the model's context (Scorer::score). At least 2048
// tokens, so a tiny model's short context never cuts an answer (HellaSwag endings run past 64 tokens).
inline int lm_eval_max_length(int model_context) { return model_context > 2048 ? model_context : 2048; }

struct EvalOptions {
  std::string checkpoint;        // a .pt file, or empty with job_id set
  std::string job_id;            // evaluate this job's newest checkpoint (from the store)
  std::vector<std::string> tasks = paper_tasks();
  int limit = 0;                 // documents per task; 0: all
  std::string db_path = "runs/moelab.db";
  std::string python;            // the venv's python with lm-eval; default <source>/.venv/bin/python
  std::string assets;            // prepared task data and configs; default <assets_dir()>/eval
  std::string output_dir;        // lm-eval's own output (results and samples); default beside the checkpoint
};

struct TaskResult {
  std::string task, metric;  // e.g. "arc_easy", "acc_norm"
  double value = 0;
  std::optional<double> stderr_value;
  int64_t samples = 0;
  std::string source;
};

// Runs lm-eval and records acc and acc_norm (with stderr) per task in the store; returns them.
// Throws naming the task when one is unknown, has no prepared data, or is missing from lm-eval's results.
std::vector<TaskResult> run_eval(const EvalOptions& options);

}  // namespace moelab
