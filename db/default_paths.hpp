// Where moelab keeps its files when a command is not told otherwise: the one place for default
// paths (the store, a sweep's work directory, a job's run directory), relative to where it runs.
#pragma once

#include <string>

namespace moelab {

inline const std::string kRunsDir = "runs";

// The SQLite store every command reads and writes (--db).
inline const std::string kDefaultStorePath = kRunsDir + "/moelab.db";

// A sweep's work directory (`sweep run --workdir`): its jobs' run directories, the runner's lock and log.
inline std::string default_sweep_workdir(const std::string& sweep) { return kRunsDir + "/" + sweep; }

// A job's run directory for `moelab train` (--run-dir): its checkpoints and log.
inline std::string default_job_run_dir(const std::string& job_id) { return kRunsDir + "/" + job_id; }

}  // namespace moelab
