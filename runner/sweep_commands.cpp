// `moelab sweep plan|run|status|cancel` and `moelab db query` (runner/cli.cpp's table dispatches them).
#include "runner/sweep_commands.hpp"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <set>
#include <sstream>
#include <thread>

#include "db/default_paths.hpp"
#include "db/store.hpp"
#include "engine/train/run_dir_lock.hpp"
#include "runner/command_line.hpp"
#include "runner/job_queue.hpp"
#include "runner/local_executor.hpp"
#include "runner/slurm_executor.hpp"

namespace moelab {
namespace po = boost::program_options;
using nlohmann::json;

namespace {


std::string axes_text(const json& axes) {
  std::string out;
  for (auto& [path, value] : axes.items()) out += (out.empty() ? "" : " ") + path + "=" + (value.is_string() ? value.get<std::string>() : value.dump());
  return out;
}

// Columns padded to their widest cell.
void print_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(header.size());
  for (size_t c = 0; c < header.size(); ++c) width[c] = header[c].size();
  for (auto& row : rows)
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  auto print_row = [&](const std::vector<std::string>& row) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) line += row[c] + std::string(c + 1 < row.size() ? width[c] - row[c].size() + 2 : 0, ' ');
    std::printf("%s\n", line.c_str());
  };
  print_row(header);
  for (auto& row : rows) print_row(row);
}

}  // namespace

int sweep_plan(const std::vector<std::string>& args) {
  std::string spec_path, db_path;
  po::options_description options("moelab sweep plan");
  options.add_options()("spec", po::value(&spec_path)->required(), "sweep spec JSON")("json", "print jobs as JSON")(
      "db", po::value(&db_path), "show each job's status from this store, if it exists");
  po::positional_options_description positional;
  positional.add("spec", 1);
  po::variables_map vm;
  if (!parse_options(args, "sweep plan SPEC [--json] [--db FILE]", options, vm, positional)) return 0;
  auto spec = load_sweep_spec(spec_path);
  auto jobs = expand(spec);
  if (vm.count("json")) {
    json out = json::array();
    for (auto& job : jobs) out.push_back({{"id", job.id}, {"name", job.config.name}, {"axes", job.axes}, {"config", job.config.to_json()}});
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  std::map<std::string, std::string> status;
  if (!db_path.empty() && std::filesystem::exists(db_path)) {
    Store store(db_path);
    for (auto& [job, state] : store.sweep_jobs(spec.name)) status[job.id] = to_string(state.status);
  }
  std::vector<std::vector<std::string>> rows;
  for (auto& job : jobs)
    rows.push_back({job.id, status.count(job.id) ? status[job.id] : "new", job.config.model.router_label(), axes_text(job.axes)});
  print_table({"id", "status", "router", "axes"}, rows);
  std::printf("%zu jobs in sweep %s\n", jobs.size(), spec.name.c_str());
  return 0;
}

namespace {

int visible_gpus() {
  if (const char* env = std::getenv("CUDA_VISIBLE_DEVICES"); env && *env) {
    int count = 1;
    for (const char* p = env; *p; ++p) count += *p == ',';
    return count;
  }
  return 0;
}

// Settles processes per job and concurrent jobs, and refuses ranks a job's batch or the visible GPUs
// cannot give: a job would otherwise fail at start, after the store has been written.
void check_local_ranks(const std::vector<PlannedJob>& jobs, const SweepSpec& spec, LocalRun& local) {
  if (local.ranks < 0) throw std::runtime_error("--ranks " + std::to_string(local.ranks) + ": expected at least 1");
  if (local.ranks == 0) local.ranks = spec.local.ranks;
  if (local.gpus > 0 && local.gpus < local.ranks)
    throw std::runtime_error("local.ranks " + std::to_string(local.ranks) + ": each job needs that many GPUs, and " +
                             "CUDA_VISIBLE_DEVICES shows " + std::to_string(local.gpus));
  for (auto& job : jobs) {
    try {
      job.config.train.micro_batches_per_rank(local.ranks);
    } catch (const ConfigError& e) {
      throw std::runtime_error("local.ranks " + std::to_string(local.ranks) + ": job " + job.id + " (" + job.config.name +
                               "): " + e.what());
    }
  }
  const int gpu_slots = local.gpus / local.ranks;
  if (local.jobs == 0) local.jobs = spec.local.jobs > 0 ? spec.local.jobs : std::max(1, gpu_slots);
  if (local.gpus > 0) local.jobs = std::min(local.jobs, gpu_slots);
}

// One runner per work directory: a second `sweep run` there would start every job's trainer again.
// The lock's note is the sweep's name, then the log of a detached runner.
ProcessLock take_runner_lock(const std::string& sweep, const std::string& workdir, bool detach) {
  std::filesystem::create_directories(workdir);
  try {
    return ProcessLock(runner_lock_path(workdir), sweep + (detach ? "\n" + runner_log_path(workdir) : ""));
  } catch (const LockHeld& e) {
    throw std::runtime_error("sweep " + sweep + ": another runner (" + e.holder.describe() + ") is running in " + workdir +
                             "; follow it with `moelab sweep status`, stop it with `moelab sweep cancel`");
  }
}

// `sweep run --detach`: the runner goes on in a child in its own session (a closed terminal sends
// it no SIGHUP), output to `log`; the child inherits the runner lock, which is renamed to it.
// Returns true in the parent, which has only to return.
bool run_in_background(ProcessLock& runner, const std::string& log) {
  const int in = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  const int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (in < 0 || out < 0) throw std::runtime_error(log + ": cannot open the runner's log: " + std::strerror(errno));
  std::fflush(stdout), std::fflush(stderr);
  const pid_t child = fork();
  if (child < 0) throw std::runtime_error(std::string("cannot start the runner in the background: ") + std::strerror(errno));
  if (child > 0) {
    close(in), close(out);
    runner.name_holder(child);
    std::printf("runner started in the background: pid %d, log %s\n", int(child), log.c_str());
    return true;
  }
  setsid();
  dup2(in, STDIN_FILENO), dup2(out, STDOUT_FILENO), dup2(out, STDERR_FILENO);
  close(in), close(out);
  return false;
}

}  // namespace

int sweep_run(const std::vector<std::string>& args) {
  std::string spec_path, executor;
  LocalRun local;
  po::options_description options("moelab sweep run");
  options.add_options()
      ("spec", po::value(&spec_path)->required(), "sweep spec JSON")
      ("executor", po::value(&executor)->default_value(std::string(kLocalExecutor)), "local | slurm")
      ("no-wait", "slurm: return once the array is submitted (follow it with `sweep status`)")
      ("jobs", po::value(&local.jobs)->default_value(0)->notifier(in_range("--jobs", 0)),
       "concurrent local jobs (default: the spec's local.jobs, else 1)")
      ("ranks", po::value(&local.ranks)->default_value(0), "data-parallel processes per local job (default: the spec's local.ranks)")
      ("db", po::value(&local.db_path)->default_value(kDefaultStorePath), "SQLite store")
      ("workdir", po::value(&local.workdir), ("run directories (default " + default_sweep_workdir("<sweep name>") + ")").c_str())
      ("detach", "run in the background, logging to <workdir>/runner.log; prints its pid and returns");
  po::positional_options_description positional;
  positional.add("spec", 1);
  po::variables_map vm;
  if (!parse_options(args, "sweep run SPEC [--jobs N] [--ranks N] [--db FILE] [--workdir DIR] [--detach]", options, vm,
                     positional))
    return 0;
  if (executor != kLocalExecutor && executor != kSlurmExecutor) throw std::runtime_error("--executor " + executor + ": expected local or slurm");
  auto spec = load_sweep_spec(spec_path);
  auto jobs = expand(spec);  // a bad spec fails here, before the store is touched
  // Absolute, so that `sweep status` and `sweep cancel` find it from the run directories in the store.
  local.workdir = std::filesystem::absolute(local.workdir.empty() ? default_sweep_workdir(spec.name) : local.workdir).lexically_normal().string();
  local.gpus = visible_gpus();
  if (executor == kLocalExecutor) check_local_ranks(jobs, spec, local);
  local.max_attempts = spec.max_attempts;
  local.moelab_binary = std::filesystem::read_symlink("/proc/self/exe").string();
  const bool detach = vm.count("detach") > 0;
  ProcessLock runner = take_runner_lock(spec.name, local.workdir, detach);
  {
    Store store(local.db_path);
    store.transaction([&] {
      store.upsert_sweep(spec.name, spec.source.dump());
      for (auto& job : jobs) {
        store.upsert_job(JobRow{job.id, job.config.name, spec.name, job.config.to_json().dump(), job.axes.dump(),
                                job.config.train.steps});
        if (store.job_status(job.id) == JobStatus::cancelled) store.set_job_status(job.id, JobStatus::queued);
      }
    });
  }
  if (detach && run_in_background(runner, runner_log_path(local.workdir))) return 0;
  if (executor == kSlurmExecutor)
    return run_slurm(jobs, spec,
                     SlurmRun{local.db_path, local.workdir, local.moelab_binary, spec.max_attempts, !vm.count("no-wait")});
  return run_local(jobs, spec, local);
}

namespace {

bool any_on_slurm(const Store& store, const std::string& sweep) {
  auto jobs = store.sweep_jobs(sweep);
  return std::any_of(jobs.begin(), jobs.end(), [](const SweepJob& j) { return j.state.executor == kSlurmExecutor; });
}

// printf's text of one value, as `sweep status` shows it.
template <typename T>
std::string formatted(const char* format, T value) {
  char text[64];
  std::snprintf(text, sizeof text, format, value);
  return text;
}

std::string peak_memory_text(const JobProgress& p) {
  if (!p.peak_resident_bytes) return "-";
  return formatted("%.0fM", *p.peak_resident_bytes / 1048576.0) +
         (p.peak_gpu_bytes ? formatted(" gpu %.1fG", *p.peak_gpu_bytes / 1073741824.0) : "");
}

}  // namespace

void print_status(Store& store, const std::string& sweep) {
  if (!sweep.empty() && any_on_slurm(store, sweep)) {
    try {
      refresh_slurm_jobs(store, sweep);
    } catch (const std::exception& e) {
      std::printf("warning: cannot refresh Slurm jobs: %s\n", e.what());
    }
  }
  const std::string summary = status_summary(store.status_counts(sweep));
  std::printf("%s%s\n", sweep.empty() ? "all jobs: " : ("sweep " + sweep + ": ").c_str(), summary.empty() ? "no jobs" : summary.c_str());
  std::vector<std::vector<std::string>> rows;
  for (auto& p : store.job_progress(sweep)) {
    auto or_dash = [](const std::optional<double>& v, const char* format) { return v ? formatted(format, *v) : "-"; };
    const std::string eval = p.eval.text();
    rows.push_back({p.id, to_string(p.status), std::to_string(p.step) + "/" + std::to_string(p.total_steps),
                    or_dash(p.train_loss, "%.4f"), or_dash(p.val_loss, "%.4f"), or_dash(p.eta_seconds, "%.0fs"),
                    peak_memory_text(p), p.executor_id, std::to_string(p.attempts), eval.empty() ? "-" : eval,
                    axes_text(json::parse(p.axes_json))});
  }
  print_table({"id", "status", "step", "train_loss", "val_loss", "eta", "peak_mem", "executor_id", "attempts", "eval", "axes"},
              rows);
}

namespace {

// A live runner of a sweep: its runner lock is held, in the work directory of one of the sweep's run
// directories (or the default runs/<sweep>), and names the sweep.
struct LiveRunner {
  std::string workdir;
  LockHolder holder;
  std::string log;  // a detached runner's
};

std::vector<LiveRunner> live_runners(const Store& store, const std::string& sweep) {
  std::set<std::string> workdirs = {std::filesystem::absolute(default_sweep_workdir(sweep)).lexically_normal().string()};
  for (auto& dir : store.sweep_run_dirs(sweep)) workdirs.insert(std::filesystem::path(dir).parent_path().string());
  std::vector<LiveRunner> live;
  for (auto& workdir : workdirs) {
    auto holder = lock_holder(runner_lock_path(workdir));
    if (!holder) continue;
    std::istringstream note(holder->note);
    std::string name, log;
    std::getline(note, name), std::getline(note, log);
    if (name == sweep) live.push_back({workdir, *holder, log});
  }
  return live;
}

void print_runners(const Store& store, const std::string& sweep) {
  auto runners = live_runners(store, sweep);
  if (runners.empty()) std::printf("runner: none alive\n");
  for (auto& r : runners)
    std::printf("runner: alive (%s), work directory %s%s\n", r.holder.describe().c_str(), r.workdir.c_str(),
                r.log.empty() ? "" : (", log " + r.log).c_str());
}

}  // namespace

int sweep_status(const std::vector<std::string>& args) {
  std::string sweep, db_path;
  po::options_description options("moelab sweep status");
  options.add_options()("name", po::value(&sweep), "sweep name (default: every job)")(
      "db", po::value(&db_path)->default_value(kDefaultStorePath), "SQLite store")("watch", "refresh every 2 s while jobs run");
  po::positional_options_description positional;
  positional.add("name", 1);
  po::variables_map vm;
  if (!parse_options(args, "sweep status [NAME] [--watch] [--db FILE]", options, vm, positional)) return 0;
  if (!std::filesystem::exists(db_path)) throw std::runtime_error(db_path + ": no such store");
  Store store(db_path);
  for (;;) {
    if (vm.count("watch")) std::printf("\033[H\033[2J");
    print_status(store, sweep);
    if (!sweep.empty()) print_runners(store, sweep);
    std::fflush(stdout);
    if (!vm.count("watch")) return 0;
    auto counts = store.status_counts(sweep);
    if (std::none_of(counts.begin(), counts.end(), [](const StatusCount& c) { return is_queued_or_running(c.status); }))
      return 0;
    std::this_thread::sleep_for(std::chrono::seconds(2));
  }
}

// The sweep's runners and the trainers of its unfinished jobs on this host get SIGTERM (trainers
// checkpoint; a runner tells its jobs to), found by the locks they hold, so that trainers whose
// runner died are stopped too; then every unfinished job is marked cancelled.
int sweep_cancel(const std::vector<std::string>& args) {
  std::string sweep, db_path;
  po::options_description options("moelab sweep cancel");
  options.add_options()("name", po::value(&sweep)->required(), "sweep name")(
      "db", po::value(&db_path)->default_value(kDefaultStorePath), "SQLite store");
  po::positional_options_description positional;
  positional.add("name", 1);
  po::variables_map vm;
  if (!parse_options(args, "sweep cancel NAME [--db FILE]", options, vm, positional)) return 0;
  if (!std::filesystem::exists(db_path)) throw std::runtime_error(db_path + ": no such store");
  Store store(db_path);
  auto unfinished = [&] {
    std::vector<SweepJob> jobs;
    for (auto& job : store.sweep_jobs(sweep))
      if (job.state.status != JobStatus::done && job.state.status != JobStatus::cancelled) jobs.push_back(std::move(job));
    return jobs;
  };
  std::vector<std::string> stopping;  // lock files whose holders were told to stop
  auto stop = [&](const std::string& lock, const LockHolder& holder, const std::string& what) {
    if (holder.host != this_host() || holder.pid == 0) {
      std::printf("warning: %s (%s) is not a process of this host; stop it there\n", what.c_str(), holder.describe().c_str());
    } else if (kill(pid_t(holder.pid), SIGTERM) == 0) {
      std::printf("stopping %s (%s)\n", what.c_str(), holder.describe().c_str());
      stopping.push_back(lock);
    }
  };
  for (auto& runner : live_runners(store, sweep)) stop(runner_lock_path(runner.workdir), runner.holder, "the runner");
  for (auto& [job, state] : unfinished()) {
    if (state.run_dir.empty()) continue;
    if (auto trainer = lock_holder(run_dir_lock_path(state.run_dir)))
      stop(run_dir_lock_path(state.run_dir), *trainer, "job " + job.id);
  }
  std::fflush(stdout);
  for (int i = 0; i < 600 && !stopping.empty(); ++i) {  // wait up to a minute for their checkpoints
    std::erase_if(stopping, [](const std::string& lock) { return !lock_holder(lock); });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  for (auto& lock : stopping) std::printf("warning: %s is still held a minute after SIGTERM\n", lock.c_str());
  auto jobs = unfinished();
  for (auto& [job, state] : jobs) store.set_job_status(job.id, JobStatus::cancelled, "cancelled by moelab sweep cancel");
  std::printf("cancelled %zu jobs of sweep %s\n", jobs.size(), sweep.c_str());
  return 0;
}

int db_query(const std::vector<std::string>& args) {
  std::string sql, db_path;
  double time_limit = 0;
  po::options_description options("moelab db query");
  options.add_options()("sql", po::value(&sql)->required(), "one read-only SQL statement")(
      "db", po::value(&db_path)->default_value(kDefaultStorePath), "SQLite store")(
      "time-limit", po::value(&time_limit)->default_value(30), "seconds the query may run before it is stopped");
  po::positional_options_description positional;
  positional.add("sql", 1);
  po::variables_map vm;
  if (!parse_options(args, "db query \"SQL\" [--db FILE] [--time-limit SECONDS]", options, vm, positional)) return 0;
  if (!(time_limit > 0)) throw std::runtime_error("--time-limit " + std::to_string(time_limit) + ": give seconds > 0");
  if (!std::filesystem::exists(db_path)) throw std::runtime_error(db_path + ": no such store");
  auto table = read_only_query(db_path, sql, std::chrono::milliseconds(int64_t(time_limit * 1000)));
  print_table(table.columns, table.rows);
  return 0;
}

}  // namespace moelab
