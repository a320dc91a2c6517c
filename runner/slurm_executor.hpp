// The Slurm executor: one sbatch job array per `sweep run`. Each array task finds its job id in a
// job list written at submission, runs `moelab train --resume` in the job's run directory and
// writes the job's own SQLite file there (no locking across a shared filesystem); the runner merges
// those files into the main store. Tasks are requeued by Slurm (--requeue) and, shortly before
// their time limit, checkpoint and requeue themselves on a signal (--signal=B:USR2@N).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runner/sweep_spec.hpp"

namespace moelab {

class Store;

struct SlurmRun {
  std::string db_path, workdir, moelab_binary;
  int max_attempts = 3;
  bool wait = true;  // follow the array until it leaves the queue
};

// The spec's "slurm" section; parse_slurm_options throws ConfigError naming "slurm.<key>".
struct SlurmOptions {
  std::string partition, account, qos, time, mem;
  int cpus = 0;          // per job (--cpus-per-task); 0 leaves it to the cluster
  int gpus = 0;          // per job; more than one starts one process per GPU with srun
  int max_parallel = 0;  // the %M of --array; 0: no limit
  int signal_seconds = 120;  // how long before the time limit a job is told to checkpoint and requeue
  std::vector<std::string> extra;  // further "#SBATCH ..." directives, verbatim
};
SlurmOptions parse_slurm_options(const nlohmann::json& section);

// The array script for `job_ids` (its job list is written beside it); exposed for tests.
std::string sbatch_script(const SlurmOptions& o, const SweepSpec& spec, const std::string& job_list,
                          const std::string& log_dir, const SlurmRun& run, size_t tasks);

int run_slurm(const std::vector<PlannedJob>& jobs, const SweepSpec& spec, const SlurmRun& options);

// Merges the per-job stores of the sweep's Slurm jobs into `store` and marks jobs that Slurm no
// longer knows but that never recorded an end as failed ("lost"). Returns how many are still queued
// or running on the cluster.
int refresh_slurm_jobs(Store& store, const std::string& sweep);

}  // namespace moelab
