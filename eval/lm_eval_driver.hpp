// `moelab eval`: score a checkpoint with lm-evaluation-harness's own task definitions. The
// checkpoint is served on loopback (`moelab serve`'s server, in this process), lm-eval's
// `local-completions` model talks to it, and the accuracies it reports go to the store.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "db/default_paths.hpp"
#include "eval/tasks.hpp"

namespace moelab {

// The max_length lm-eval is given: it left-truncates requests longer than this, and the server scores
// anything shorter with a sliding window over the model's context (Scorer::score). At least 2048
// tokens, so a tiny model's short context never cuts an answer (HellaSwag endings run past 64 tokens).
inline int lm_eval_max_length(int model_context) { return model_context > 2048 ? model_context : 2048; }

struct EvalOptions {
  std::string checkpoint;        // a .pt file, or empty with job_id set
  std::string job_id;            // evaluate this job's newest checkpoint (from the store)
  int every = 0;                 // with job_id: each kept checkpoint at a multiple of this step, and the newest
  std::vector<std::string> tasks = eval_task_names();
  int limit = 0;                 // documents per task; 0: all
  std::string db_path = kDefaultStorePath;
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

// What one checkpoint scored. `checkpoint` is the file, or "" for a job's newest checkpoint.
using EvalResults = std::function<void(const std::string& checkpoint, const std::vector<TaskResult>& results)>;

// One `moelab eval`: checks the tasks, their data and the Python before anything runs or is
// written, then opens the store once, runs lm-eval on each checkpoint the options name, records acc
// and acc_norm (with stderr) per task and the job's evaluation stage in the store, and hands each
// checkpoint's results to `on_results`. Throws naming the task when one is unknown, has no prepared
// data, or is missing from lm-eval's results, and naming the job when it has no checkpoint.
void run_eval(const EvalOptions& options, const EvalResults& on_results);

}  // namespace moelab
