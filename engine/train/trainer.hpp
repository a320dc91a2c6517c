// `moelab train`: one job from config to loss rows, routing statistics and checkpoints.
#pragma once

#include <string>

#include "db/default_paths.hpp"
#include "engine/config/job_config.hpp"

namespace moelab {

// Exit codes a job ends with; the runner reads them.
enum ExitCode : int {
  kExitOk = 0,
  kExitBadInput = 2,      // config, data or checkpoint problems found before training starts
  kExitDiverged = 3,      // a non-finite loss stopped the job (recorded in the store)
  kExitFailed = 4,        // an error during training: the job is recorded as failed with the reason
  kExitRunDirBusy = 73,   // another process trains in the run directory (run_dir_lock.hpp); nothing written
  kExitInterrupted = 75,  // SIGINT/SIGTERM: a checkpoint was written, `--resume` continues
};

struct TrainOptions {
  std::string db_path = kDefaultStorePath;
  std::string run_dir;      // checkpoints; default default_job_run_dir(<job id>)
  bool resume = false;      // continue from the newest checkpoint in run_dir if there is one
  bool progress = true;     // the live progress line on stderr
  int stop_after = 0;       // test hook: behave as if interrupted after this step (0: never)
  int profile_steps = 0;    // > 0: profile this many steps after warm-up instead of training (step_profile.hpp)
};

// Trains the job; returns an ExitCode. Throws (ConfigError, CheckpointError, runtime_error) on bad
// input before anything is written to the store. Once the job's row exists, an error records the
// job as failed with a one-line reason (while the store can still be written), prints that line
// and returns kExitFailed: no error leaves a job "running". Rank 0 holds the run directory's lock for the
// whole job, taken before it reads a checkpoint; if another process holds it, it says who and
// returns kExitRunDirBusy without writing anything.
int train_job(const JobConfig& config, const TrainOptions& options);

// Installs SIGINT/SIGTERM handlers that ask the running job to checkpoint and stop.
void install_stop_handlers();

}  // namespace moelab
