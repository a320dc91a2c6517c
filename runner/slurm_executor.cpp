#include "runner/slurm_executor.hpp"

#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "db/store.hpp"
#include "runner/job_queue.hpp"

namespace moelab {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct CommandResult {
  int code;
  std::string output;
};

CommandResult run_command(const std::string& command) {
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return {127, "cannot start: " + command};
  std::string output;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof buffer, pipe)) output.append(buffer, n);
  int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128, output};
}

std::string quoted(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}


// Slurm's view of this user's array tasks: "123_4" -> state, from squeue, which lists pending,
// running and recently finished tasks. Accounting (sacct) is often off on small clusters, and the
// job records its own end in its store, so squeue is all the runner asks.
std::map<std::string, std::string> squeue_states() {
  std::map<std::string, std::string> states;
  auto result = run_command("squeue -h -r -t all -o '%i %T' --me");
  if (result.code != 0) throw std::runtime_error("squeue failed: " + result.output);
  std::istringstream lines(result.output);
  std::string task, state;
  while (lines >> task >> state) states[task] = state;
  return states;
}

bool is_active(const std::string& slurm_state) {
  static const std::set<std::string> active = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED",
                                               "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "STOPPED"};
  return active.count(slurm_state) > 0;
}

std::string timestamp() {
  char buffer[32];
  std::time_t now = std::time(nullptr);
  std::strftime(buffer, sizeof buffer, "%Y%m%d-%H%M%S", std::localtime(&now));
  return buffer;
}

}  // namespace

SlurmOptions parse_slurm_options(const json& section) {
  SlurmOptions o;
  if (!section.is_object()) throw ConfigError("slurm: expected an object");
  static const std::vector<std::string> keys = {"partition", "account", "qos",          "time",           "mem",
                                                "cpus",      "gpus",    "max_parallel", "signal_seconds", "extra"};
  auto text = [&](const std::string& key, std::string& out) {
    if (!section[key].is_string()) throw ConfigError("slurm." + key + ": expected a string, got " + section[key].dump());
    out = section[key];
  };
  auto count = [&](const std::string& key, int& out) {
    out = json_int(section[key], "slurm." + key, 0);
  };
  for (auto& [key, value] : section.items()) {
    if (key == "partition") text(key, o.partition);
    else if (key == "account") text(key, o.account);
    else if (key == "qos") text(key, o.qos);
    else if (key == "time") text(key, o.time);
    else if (key == "mem") text(key, o.mem);
    else if (key == "cpus") count(key, o.cpus);
    else if (key == "gpus") count(key, o.gpus);
    else if (key == "max_parallel") count(key, o.max_parallel);
    else if (key == "signal_seconds") count(key, o.signal_seconds);
    else if (key == "extra") {
      if (!value.is_array() || !std::all_of(value.begin(), value.end(), [](const json& v) { return v.is_string(); }))
        throw ConfigError("slurm.extra: expected a list of strings (sbatch options such as \"--constraint=h100\")");
      o.extra = value.get<std::vector<std::string>>();
    } else {
      throw ConfigError("slurm." + key + ": unknown key" + did_you_mean(key, keys));
    }
  }
  return o;
}

std::string sbatch_script(const SlurmOptions& o, const SweepSpec& spec, const std::string& job_list,
                          const std::string& log_dir, const SlurmRun& run, size_t tasks) {
  const std::string& sweep = spec.name;
  std::ostringstream s;
  s << "#!/bin/bash\n";
  s << "#SBATCH --job-name=moelab-" << sweep << "\n";
  s << "#SBATCH --array=0-" << tasks - 1;
  if (o.max_parallel > 0) s << "%" << o.max_parallel;
  s << "\n";
  s << "#SBATCH --output=" << log_dir << "/%A_%a.out\n";
  s << "#SBATCH --requeue\n";
  s << "#SBATCH --signal=B:USR2@" << o.signal_seconds << "\n";
  if (!o.partition.empty()) s << "#SBATCH --partition=" << o.partition << "\n";
  if (!o.account.empty()) s << "#SBATCH --account=" << o.account << "\n";
  if (!o.qos.empty()) s << "#SBATCH --qos=" << o.qos << "\n";
  if (!o.time.empty()) s << "#SBATCH --time=" << o.time << "\n";
  if (!o.mem.empty()) s << "#SBATCH --mem=" << o.mem << "\n";
  if (o.cpus > 0) s << "#SBATCH --cpus-per-task=" << o.cpus << "\n";
  if (o.gpus > 0) s << "#SBATCH --ntasks=" << o.gpus << "\n#SBATCH --gpus-per-task=1\n";
  for (auto& directive : o.extra) s << "#SBATCH " << directive << "\n";
  // Data parallel: one process per GPU through srun (rank and world size from SLURM_PROCID /
  // SLURM_NTASKS, engine/train/data_parallel.hpp); a CPU job or a single GPU runs the trainer directly.
  const bool data_parallel = o.gpus > 1;
  const std::string launcher = data_parallel ? "srun --kill-on-bad-exit=1 " : "";
  s << R"SH(
set -u
job_id=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" )SH" << quoted(job_list) << R"SH()
run_dir=)SH" << quoted(run.workdir) << R"SH(/$job_id
echo "moelab: array task $SLURM_ARRAY_TASK_ID is job $job_id (restart ${SLURM_RESTART_COUNT:-0}) on $(hostname)"
)SH";
  if (data_parallel)
    // Rank 0 runs on the allocation's first node and serves the rendezvous there; the port comes
    // from the job id so that array tasks sharing a node do not collide.
    s << R"SH(export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
)SH";
  s << R"SH(# The job writes its own store in its run directory; the runner merges it into the main one.
)SH" << launcher << quoted(run.moelab_binary)
    << R"SH( train --config "$run_dir/config.json" --db "$run_dir/job.db" --run-dir "$run_dir" --resume &
child=$!
# Near the time limit: checkpoint, then put the task back in the queue to resume later.
trap 'kill -TERM $child; wait $child; scontrol requeue "$SLURM_JOB_ID"' USR2
# scancel or scontrol requeue: checkpoint before going.
trap 'kill -TERM $child' TERM
status=0
wait $child || status=$?
while kill -0 $child 2>/dev/null; do wait $child; status=$?; done
)SH";
  if (spec.eval.enabled) {
    // The evaluation stage: lm-eval on the final checkpoint, into the job's own store.
    s << "if [[ $status -eq 0 ]]; then\n  " << quoted(run.moelab_binary);
    for (auto& arg : eval_arguments(spec.eval, "$job_id", "$run_dir/job.db")) s << " \"" << arg << "\"";
    s << " || status=$?\nfi\n";
  }
  s << "exit $status\n";
  return s.str();
}

int refresh_slurm_jobs(Store& store, const std::string& sweep) {
  std::vector<SweepJob> on_slurm;
  for (auto& job : store.sweep_jobs(sweep))
    if (job.state.executor == kSlurmExecutor) on_slurm.push_back(std::move(job));
  for (auto& job : on_slurm) store.merge_job_store(job.state.run_dir + "/job.db");
  auto states = squeue_states();
  int active = 0;
  for (auto& [job, state] : on_slurm) {
    auto it = states.find(state.executor_id);
    if (it != states.end() && is_active(it->second)) {
      ++active;
      continue;
    }
    // Gone from the queue: the job's own store has the last word (merged again, as it may have
    // ended a moment ago); if it never recorded an end, Slurm lost it.
    store.merge_job_store(state.run_dir + "/job.db");
    auto status = store.job_status(job.id);
    if (status && is_queued_or_running(*status))
      store.set_job_status(job.id, JobStatus::failed,
                           "Slurm task " + state.executor_id + " left the queue (" +
                               (it == states.end() ? "unknown to squeue" : it->second) +
                               ") without the job recording an end; see its log in " + state.run_dir + "/../slurm");
  }
  return active;
}

int run_slurm(const std::vector<PlannedJob>& jobs, const SweepSpec& spec, const SlurmRun& run) {
  const SlurmOptions options = parse_slurm_options(spec.slurm);
  Store store(run.db_path);
  refresh_slurm_jobs(store, spec.name);
  std::vector<const PlannedJob*> to_submit;
  for (auto* job : jobs_to_run(store, jobs, spec.name, run.max_attempts)) {
    const auto state = store.job_state(job->id);
    const bool on_cluster = state && state->executor == kSlurmExecutor && is_queued_or_running(state->status);
    if (on_cluster) std::printf("[sweep %s] %s is already on the cluster\n", spec.name.c_str(), job->id.c_str());
    else to_submit.push_back(job);
  }
  if (!to_submit.empty()) {
    const std::string submission = run.workdir + "/slurm/" + timestamp();
    fs::create_directories(submission);
    const std::string job_list = submission + "/jobs.txt", script = submission + "/array.sbatch";
    {
      std::ofstream list(job_list);
      for (auto* job : to_submit) {
        write_job_config(*job, job_run_dir(run.workdir, job->id), options.cpus);
        list << job->id << "\n";
      }
    }
    std::ofstream(script) << sbatch_script(options, spec, job_list, submission, run, to_submit.size());
    auto submitted = run_command("sbatch --parsable " + quoted(script));
    if (submitted.code != 0) throw std::runtime_error("sbatch " + script + " failed: " + submitted.output);
    const std::string array_id = submitted.output.substr(0, submitted.output.find_first_of(";\n"));
    store.transaction([&] {
      for (size_t i = 0; i < to_submit.size(); ++i) {
        const auto* job = to_submit[i];
        store.set_job_executor(job->id, kSlurmExecutor, array_id + "_" + std::to_string(i), "", job_run_dir(run.workdir, job->id));
        store.set_job_status(job->id, JobStatus::queued);
      }
    });
    std::printf("[sweep %s] submitted %zu jobs as Slurm array %s (%s)\n", spec.name.c_str(), to_submit.size(),
                array_id.c_str(), script.c_str());
    std::fflush(stdout);
  }
  if (!run.wait) return 0;
  std::string last;
  for (;;) {
    int active = refresh_slurm_jobs(store, spec.name);
    const std::string line = status_summary(store.status_counts(spec.name));
    if (line != last) std::printf("[sweep %s] %s | %d on the cluster\n", spec.name.c_str(), line.c_str(), active), last = line;
    std::fflush(stdout);
    if (active == 0) break;
    std::this_thread::sleep_for(std::chrono::seconds(3));
  }
  for (auto& count : store.status_counts(spec.name))
    if (count.status != JobStatus::done) return 1;
  return 0;
}

}  // namespace moelab
