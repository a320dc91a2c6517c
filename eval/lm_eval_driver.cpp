#include "eval/lm_eval_driver.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "db/store.hpp"
#include "engine/serve/completion_server.hpp"
#include "engine/tokenizer/tokenizer.hpp"
#include "engine/train/checkpoint.hpp"

namespace moelab {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string newest_checkpoint_of(const Store& store, const std::string& job_id) {
  auto checkpoints = store.checkpoints(job_id);
  if (checkpoints.empty()) throw std::runtime_error("--job " + job_id + ": no checkpoint recorded in " + store.path());
  return checkpoints.back().path;
}

// The checkpoints of a job that `eval --every N` scores: multiples of N and the newest, if still on disk.
std::vector<std::string> checkpoints_every(const Store& store, const std::string& job_id, int every) {
  auto checkpoints = store.checkpoints(job_id);
  std::vector<std::string> paths;
  for (size_t i = 0; i < checkpoints.size(); ++i)
    if ((checkpoints[i].step % every == 0 || i + 1 == checkpoints.size()) && fs::exists(checkpoints[i].path))
      paths.push_back(checkpoints[i].path);
  if (paths.empty()) throw std::runtime_error("--job " + job_id + ": no checkpoint on disk to evaluate");
  return paths;
}

// Runs lm-eval as a child process with the Hub switched off; its progress goes to our stderr.
int run_lm_eval(const std::string& python, const std::vector<std::string>& args) {
  pid_t pid = fork();
  if (pid == 0) {
    setenv("HF_DATASETS_OFFLINE", "1", 1);
    setenv("HF_HUB_OFFLINE", "1", 1);
    setenv("TOKENIZERS_PARALLELISM", "false", 1);
    dup2(STDERR_FILENO, STDOUT_FILENO);  // our stdout carries only the result table
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(python.c_str()));
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(python.c_str(), argv.data());
    std::perror(("exec " + python).c_str());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

fs::path newest_results_file(const fs::path& dir) {
  fs::path newest;
  for (auto& entry : fs::recursive_directory_iterator(dir)) {
    auto name = entry.path().filename().string();
    if (name.starts_with("results_") && name.ends_with(".json") && (newest.empty() || entry.path() > newest)) newest = entry.path();
  }
  return newest;
}

}  // namespace

namespace {

std::vector<TaskResult> evaluate(const EvalOptions& o, Store& store, Scorer& scorer, const fs::path& assets,
                                 const std::string& python, const json& sources, const std::string& checkpoint);

// The job's evaluation stage in the store, when the store knows the job.
void record_eval_status(Store& store, const std::string& job_id, const EvalStatus& status) {
  if (store.job_status(job_id)) store.set_eval_status(job_id, status);
}

// Scores one checkpoint, with the job's evaluation stage recorded around it.
std::vector<TaskResult> evaluate_checkpoint(const EvalOptions& o, Store& store, const fs::path& assets,
                                            const std::string& python, const json& sources, const std::string& checkpoint) {
  Scorer scorer(checkpoint);  // verifies the checkpoint's checksum
  const std::string job_id = scorer.config().hash();
  record_eval_status(store, job_id, {EvalStatus::Stage::running, ""});
  try {
    auto rows = evaluate(o, store, scorer, assets, python, sources, checkpoint);
    record_eval_status(store, job_id,
                       {EvalStatus::Stage::done, std::to_string(o.tasks.size()) + " tasks at step " + std::to_string(scorer.step())});
    return rows;
  } catch (const std::exception& e) {
    record_eval_status(store, job_id, {EvalStatus::Stage::failed, e.what()});
    throw;
  }
}

}  // namespace

void run_eval(const EvalOptions& o, const EvalResults& on_results) {
  const fs::path assets = o.assets.empty() ? fs::path(assets_dir()) / "eval" : fs::path(o.assets);
  const std::string python = o.python.empty() ? std::string(MOELAB_SOURCE_DIR) + "/.venv/bin/python" : o.python;
  // Everything is checked before anything runs or is written.
  json sources;
  try {
    sources = json::parse(std::ifstream(assets / "sources.json"));
  } catch (const std::exception&) {
    throw std::runtime_error((assets / "sources.json").string() + ": evaluation data not prepared; run scripts/setup.sh");
  }
  for (auto& task : o.tasks) {
    try {
      eval_task(task);
    } catch (const std::invalid_argument& e) {
      throw std::runtime_error(std::string("--tasks: ") + e.what());
    }
    if (!sources.contains(task) || !fs::exists(assets / "tasks" / ("moelab_" + task + ".yaml")))
      throw std::runtime_error("task " + task + ": no prepared data in " + assets.string() + "; run scripts/setup.sh");
  }
  if (!fs::exists(python)) throw std::runtime_error(python + ": no Python with lm-eval; run scripts/setup.sh");
  Store store(o.db_path);
  if (o.every > 0) {
    for (auto& checkpoint : checkpoints_every(store, o.job_id, o.every))
      on_results(checkpoint, evaluate_checkpoint(o, store, assets, python, sources, checkpoint));
    return;
  }
  const std::string checkpoint = o.checkpoint.empty() ? newest_checkpoint_of(store, o.job_id) : o.checkpoint;
  on_results(o.checkpoint, evaluate_checkpoint(o, store, assets, python, sources, checkpoint));
}

namespace {

std::vector<TaskResult> evaluate(const EvalOptions& o, Store& store, Scorer& scorer, const fs::path& assets,
                                 const std::string& python, const json& sources, const std::string& checkpoint) {
  const std::string job_id = scorer.config().hash();

  CompletionServer server(scorer, scorer.config().name);
  const int port = server.bind("127.0.0.1", 0);
  std::thread serving([&] { server.listen(); });
  struct StopServer {
    CompletionServer& server;
    std::thread& thread;
    ~StopServer() { server.stop(), thread.join(); }
  } stop_server{server, serving};

  const fs::path output = (o.output_dir.empty() ? fs::path(checkpoint).parent_path() / "lm_eval" : fs::path(o.output_dir)) /
                          ("step_" + std::to_string(scorer.step()) + "_" + std::to_string(std::time(nullptr)));
  std::string task_list;
  for (auto& task : o.tasks) task_list += (task_list.empty() ? "" : ",") + std::string("moelab_") + task;
  std::vector<std::string> args = {
      "-m", "lm_eval", "--model", "local-completions", "--model_args",
      "base_url=http://127.0.0.1:" + std::to_string(port) + "/v1/completions,tokenizer_backend=remote,tokenized_requests=True,"
          "max_length=" + std::to_string(lm_eval_max_length(scorer.context())) + ",num_concurrent=2,max_retries=3",
      "--tasks", task_list, "--include_path", (assets / "tasks").string(), "--batch_size", "8",
      "--output_path", output.string(), "--log_samples"};
  if (o.limit > 0) args.insert(args.end(), {"--limit", std::to_string(o.limit)});
  std::fprintf(stderr, "[eval] %s step %d: lm-eval on %s%s\n", scorer.config().name.c_str(), scorer.step(), task_list.c_str(),
               o.limit > 0 ? (" (limit " + std::to_string(o.limit) + ")").c_str() : "");
  if (int code = run_lm_eval(python, args); code != 0)
    throw std::runtime_error("lm-eval failed with exit code " + std::to_string(code) + " (its output is above)");

  const fs::path results_file = newest_results_file(output);
  if (results_file.empty()) throw std::runtime_error(output.string() + ": lm-eval wrote no results file");
  json results = json::parse(std::ifstream(results_file));
  std::vector<TaskResult> rows;
  for (auto& task : o.tasks) {
    const std::string key = "moelab_" + task;
    if (!results["results"].contains(key)) throw std::runtime_error("task " + task + ": missing from lm-eval's results " + results_file.string());
    const json& r = results["results"][key];
    const int64_t samples = results["n-samples"][key].value("effective", int64_t(0));
    for (std::string metric : {"acc", "acc_norm"}) {
      if (!r.contains(metric + ",none")) continue;  // winogrande has acc only
      const json& err = r.value(metric + "_stderr,none", json(nullptr));
      rows.push_back({task, metric, r[metric + ",none"].get<double>(),
                      err.is_number() ? std::optional<double>(err.get<double>()) : std::nullopt, samples,
                      sources[task].get<std::string>()});
    }
  }
  store.transaction([&] {
    store.upsert_job(JobRow{job_id, scorer.config().name, "", scorer.config().to_json().dump(), "{}", scorer.config().train.steps});
    for (auto& r : rows)
      store.put_eval(EvalRow{job_id, scorer.step(), r.task, r.metric, r.value, r.stderr_value, r.samples, r.source});
    store.log_event(job_id, "info", "evaluated step " + std::to_string(scorer.step()) + " with lm-eval (" + results_file.string() + ")");
  });
  return rows;
}

}  // namespace

}  // namespace moelab
