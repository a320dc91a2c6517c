// The evaluation tasks: eval/tasks.json is the one task table. It is embedded in the binary at build
// time and read here; eval/prepare_tasks.py reads the same file to prepare each task's data.
#pragma once

#include <string>
#include <vector>

namespace moelab {

struct EvalTask {
  std::string name;    // moelab's name and lm-eval's (with a moelab_ prefix in our configs), e.g. "arc_easy"
  std::string metric;  // what the paper reports: acc, or acc_norm where answers differ much in length
};

// The six zero-shot tasks of the KERN paper's Table 1, in its order.
const std::vector<EvalTask>& eval_tasks();
std::vector<std::string> eval_task_names();
// "arc_easy, arc_challenge, ..." with `separator` between the names.
std::string eval_task_list(const std::string& separator = ", ");
// The task of that name; throws std::invalid_argument naming it and the tasks there are.
const EvalTask& eval_task(const std::string& name);

}  // namespace moelab
