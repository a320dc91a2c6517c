// A job's status, executor and evaluation stage: the values the store's jobs.status, jobs.executor
// and jobs.eval_status columns hold. The one place their text is spelt; everything else compares enums.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace moelab {

enum class JobStatus { queued, running, done, failed, interrupted, cancelled };

// The status as stored and printed: "queued", "running", ...
std::string to_string(JobStatus status);
// Throws std::invalid_argument naming the text and the statuses there are.
JobStatus parse_job_status(std::string_view text);
// An attempt has ended: done, failed, interrupted or cancelled.
bool is_terminal(JobStatus status);
// Queued or running: a runner or the cluster still has the job in hand.
bool is_queued_or_running(JobStatus status);

// How many jobs have one status.
struct StatusCount {
  JobStatus status;
  int jobs = 0;
};
// "2 done, 1 failed": the counts as `sweep status` and the runners print them ("" for none).
std::string status_summary(const std::vector<StatusCount>& counts);

// Where a job runs, as jobs.executor records it ("" before its first start).
inline constexpr char kLocalExecutor[] = "local";
inline constexpr char kSlurmExecutor[] = "slurm";

// The evaluation stage after training, stored as text: "" (not started), "running",
// "done: <what was scored>" or "failed: <why>".
struct EvalStatus {
  enum class Stage { none, running, done, failed };
  Stage stage = Stage::none;
  std::string detail;  // done: what was scored; failed: why

  // Throws std::invalid_argument for text that is none of the forms above.
  static EvalStatus parse(std::string_view text);
  std::string text() const;
  bool operator==(const EvalStatus&) const = default;
};

}  // namespace moelab
