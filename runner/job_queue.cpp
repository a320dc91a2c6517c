#include "runner/job_queue.hpp"

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "db/store.hpp"

namespace moelab {

std::vector<const PlannedJob*> jobs_to_run(Store& store, const std::vector<PlannedJob>& jobs, const std::string& sweep,
                                           int max_attempts) {
  std::vector<const PlannedJob*> out;
  for (auto& job : jobs) {
    const auto state = store.job_state(job.id);
    if (state && state->status == JobStatus::done) continue;
    if (state && state->attempts >= max_attempts) {
      std::printf("[sweep %s] skip %s (%s): %s after %d attempts (max_attempts %d)\n", sweep.c_str(), job.id.c_str(),
                  job.config.name.c_str(), to_string(state->status).c_str(), state->attempts, max_attempts);
      continue;
    }
    out.push_back(&job);
  }
  return out;
}

std::string job_run_dir(const std::string& workdir, const std::string& job_id) { return workdir + "/" + job_id; }

std::string runner_lock_path(const std::string& workdir) { return workdir + "/runner.lock"; }
std::string runner_log_path(const std::string& workdir) { return workdir + "/runner.log"; }

std::string write_job_config(const PlannedJob& job, const std::string& run_dir, int threads) {
  std::filesystem::create_directories(run_dir);
  auto config = job.config.to_json();
  if (threads > 0) config["train"]["threads"] = threads;
  const std::string path = run_dir + "/config.json";
  std::ofstream(path) << config.dump(2) << "\n";
  return path;
}

}  // namespace moelab
