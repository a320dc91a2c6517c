#include "eval/tasks.hpp"

#include <nlohmann/json.hpp>
#include <stdexcept>

namespace moelab {
namespace {

// eval/tasks.json as it was at build time (eval/CMakeLists.txt writes it into this include).
const char* const kTaskTableJson =
#include "tasks_json.inc"
    ;

std::vector<EvalTask> read_task_table() {
  std::vector<EvalTask> tasks;
  for (auto& row : nlohmann::json::parse(kTaskTableJson))
    tasks.push_back({row.at("name").get<std::string>(), row.at("metric").get<std::string>()});
  return tasks;
}

}  // namespace

const std::vector<EvalTask>& eval_tasks() {
  static const std::vector<EvalTask> tasks = read_task_table();
  return tasks;
}

std::vector<std::string> eval_task_names() {
  std::vector<std::string> names;
  for (auto& task : eval_tasks()) names.push_back(task.name);
  return names;
}

std::string eval_task_list(const std::string& separator) {
  std::string list;
  for (auto& task : eval_tasks()) list += (list.empty() ? "" : separator) + task.name;
  return list;
}

const EvalTask& eval_task(const std::string& name) {
  for (auto& task : eval_tasks())
    if (task.name == name) return task;
  throw std::invalid_argument("unknown task \"" + name + "\" (known: " + eval_task_list() + ")");
}

}  // namespace moelab
