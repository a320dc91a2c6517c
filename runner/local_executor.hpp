// The local executor: a pool of `moelab train` processes on this machine. A job is `ranks`
// data-parallel processes (the launch contract of engine/train/data_parallel.hpp: one per GPU when
// GPUs exist (CUDA_VISIBLE_DEVICES), else Gloo processes on the CPU); GPUs are handed out `ranks` to
// a job, and on the CPU N concurrent jobs share the cores. Each job's config, logs (train.log from
// rank 0, train.rank<r>.log from the others) and checkpoints live in its run directory; its rows go
// to the store (rank 0 writes them).
#pragma once

#include <string>
#include <vector>

#include "runner/sweep_spec.hpp"

namespace moelab {

struct LocalRun {
  std::string db_path;
  std::string workdir;   // run directories are <workdir>/<job id>
  int jobs = 1;          // concurrent jobs
  int ranks = 1;         // processes per job
  int gpus = 0;          // GPUs to hand out, `ranks` per job
  int max_attempts = 3;
  std::string moelab_binary;  // the `moelab` to run jobs with
};

// Runs every job that is not done and has attempts left; returns 0 when all are done, 1 when some
// failed, 75 when interrupted by SIGINT/SIGTERM (running jobs were told to checkpoint and stop).
// Jobs that finish training go through the spec's evaluation stage, if it has one. A job whose run
// directory a live trainer holds (run_dir_lock.hpp; a previous runner's, say) is followed until it
// ends, not started again; one marked running whose trainer died resumes from its checkpoint.
int run_local(const std::vector<PlannedJob>& jobs, const SweepSpec& spec, const LocalRun& options);

}  // namespace moelab
