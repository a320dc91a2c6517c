// What both executors do before they start a job: choose the jobs that still need to run, and write
// each one's resolved config into its run directory.
#pragma once

#include <string>
#include <vector>

#include "runner/sweep_spec.hpp"

namespace moelab {

class Store;

// Jobs that are not done and have attempts left, in plan order; says which ones it skips and why.
std::vector<const PlannedJob*> jobs_to_run(Store& store, const std::vector<PlannedJob>& jobs, const std::string& sweep,
                                           int max_attempts);

std::string job_run_dir(const std::string& workdir, const std::string& job_id);

// A sweep runner holds <workdir>/runner.lock while it runs (one runner per work directory; the lock
// names its sweep); `sweep run --detach` writes its output to <workdir>/runner.log.
std::string runner_lock_path(const std::string& workdir);
std::string runner_log_path(const std::string& workdir);

// Writes <run_dir>/config.json (threads > 0 sets train.threads, which is not part of the job's id).
std::string write_job_config(const PlannedJob& job, const std::string& run_dir, int threads);

}  // namespace moelab
