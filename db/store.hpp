// The SQLite store (DESIGN.md "SQLite store"): the one place that speaks SQL. Typed writers and
// typed reads, all with bound parameters; only `moelab db query` passes a user's SQL through.
// One file, WAL mode, a busy timeout, schema version in PRAGMA user_version, migrations in
// db/migrations.cpp applied on open. Writers upsert on the natural keys so a resumed job never
// duplicates a row (a re-run step replaces the row it wrote before the interruption).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <unordered_map>

#include "db/job_status.hpp"

struct sqlite3;
struct sqlite3_stmt;

namespace moelab {

class Statement;

struct StoreError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct JobRow {
  std::string id;            // content hash of the resolved config
  std::string name;
  std::string sweep;         // sweep name, "" for a job run on its own
  std::string config_json;   // canonical resolved config
  std::string axes_json = "{}";  // dotted path -> value, as chosen by the sweep
  int total_steps = 0;
};

struct MetricRow {
  std::string job_id;
  int64_t step = 0;
  std::string split;         // "train" | "val"
  double loss = 0;
  int64_t tokens = 0;        // tokens seen up to and including this step
  double lr = 0;
  double grad_norm = 0;      // train rows; NaN-free, 0 for val
  double tokens_per_s = 0;
  double wall_time = 0;      // seconds since the job's first start
};

struct RoutingRow {
  std::string job_id;
  int64_t step = 0;
  int layer = 0;
  std::vector<double> expert_fraction;  // fraction of routed token slots per expert, sums to 1
  double load_std = 0;                  // std of expert_fraction
  double load_max_over_mean = 0;
  int dead_experts = 0;                 // experts that got no token
  double positive_gates = 0;            // mean number of gates > 0 per token
  double fewer_than_k = 0;              // share of tokens with fewer than k positive gates
  double router_cosine = 0;             // mean pairwise cosine similarity of router weight rows
};

// Where a job stands and where it runs, as the runners, `sweep cancel` and reports need it.
struct JobState {
  JobStatus status = JobStatus::queued;
  int attempts = 0;
  std::string error;
  std::string executor, executor_id, host, run_dir;  // as set_job_executor recorded them ("" before the first start)
  EvalStatus eval;
};

// A member of a sweep: the job as planned (sweep and axes are this sweep's) and where it stands.
struct SweepJob {
  JobRow job;
  JobState state;
};

// One line of `sweep status`: a job's progress as its metrics show it.
struct JobProgress {
  std::string id, name;
  JobStatus status = JobStatus::queued;
  int64_t step = 0;  // the newest logged training step, 0 before any
  int total_steps = 0;
  std::optional<double> train_loss, val_loss;  // at the newest logged step
  std::optional<double> eta_seconds;           // running jobs: steps left at the last logged throughput
  std::optional<int64_t> peak_resident_bytes, peak_gpu_bytes;
  std::string executor_id;
  int attempts = 0;
  EvalStatus eval;
  std::string axes_json;
};

// A job's newest routing statistics, averaged over its MoE layers.
struct RoutingMeans {
  std::string job_id;
  int64_t step = 0;
  double load_std = 0, load_max_over_mean = 0, dead_experts = 0, positive_gates = 0, fewer_than_k = 0,
         router_cosine = 0;
};

struct CheckpointRow {
  std::string job_id;
  int64_t step = 0;
  std::string path;
  std::string sha256;
};

struct EvalRow {
  std::string job_id;
  int64_t step = 0;
  std::string task, metric;  // e.g. "arc_easy", "acc_norm"
  double value = 0;
  std::optional<double> stderr_value;
  int64_t samples = 0;
  std::string source;        // where the task data came from; "fixture:..." marks fixture data
};

class Store {
 public:
  // Opens (creating the file and parent directory if needed) and migrates to the newest schema.
  // Throws StoreError naming the path when it cannot be opened or is not a moelab store.
  explicit Store(const std::string& path);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  static int schema_version();   // the newest version migrations produce
  int user_version() const;      // the file's PRAGMA user_version
  const std::string& path() const { return path_; }

  // Inserts the job or, if it exists, keeps its config and refreshes name and total_steps, and
  // sweep and axes unless the new row leaves them empty. A job with a sweep joins that sweep's
  // members (sweep_jobs) with its axes there.
  void upsert_job(const JobRow& job);
  // Sets started_at on running, finished_at on terminal states; increments attempts on running;
  // error may be empty.
  void set_job_status(const std::string& job_id, JobStatus status, const std::string& error = "",
                      std::optional<int> exit_code = std::nullopt);
  // Where a job runs: executor "local" or "slurm", its process or Slurm job id, the host (if known),
  // and its run directory.
  void set_job_executor(const std::string& job_id, const std::string& executor, const std::string& executor_id,
                        const std::string& host, const std::string& run_dir);
  // Folds a store that one job wrote on its own (a compute node's per-job file) into this one: its
  // rows are upserted, its events added once, and the job's status and attempts taken from it, as
  // the job itself knows them best. Idempotent; a missing file is not an error (nothing ran yet).
  void merge_job_store(const std::string& job_store_path);
  // Raises the job's recorded peak memory to these values where they are higher (bytes; GPU 0 on the CPU).
  void record_peak_memory(const std::string& job_id, int64_t resident_bytes, int64_t gpu_bytes);
  void set_eval_status(const std::string& job_id, const EvalStatus& eval_status);
  // Counts an attempt that ended before the job itself could say it was running.
  void count_attempt(const std::string& job_id);
  void upsert_sweep(const std::string& name, const std::string& spec_json);

  void put_metric(const MetricRow& row);
  void put_routing(const RoutingRow& row);
  void put_checkpoint(const CheckpointRow& row);
  void put_eval(const EvalRow& row);
  void log_event(const std::string& job_id, const std::string& level, const std::string& message);

  // Runs fn inside BEGIN IMMEDIATE ... COMMIT, rolling back if it throws.
  void transaction(const std::function<void()>& fn);

  // Typed reads. A job belongs to every sweep that planned it (studies share runs: the paper's
  // seed-0 routers job is also the seeds study's), so a sweep's jobs are its members in sweep_jobs,
  // not the jobs whose jobs.sweep (the sweep that last ran them) names it. Sweep "" means every job
  // where a read says so.
  std::optional<JobStatus> job_status(const std::string& job_id) const;
  std::optional<JobState> job_state(const std::string& job_id) const;
  // The sweep's jobs, ordered by id.
  std::vector<SweepJob> sweep_jobs(const std::string& sweep) const;
  // Jobs per status, in the order of the statuses' names; sweep "" counts every job.
  std::vector<StatusCount> status_counts(const std::string& sweep) const;
  // The sweep's jobs (sweep "": every job) ordered by name, as `sweep status` lists them.
  std::vector<JobProgress> job_progress(const std::string& sweep) const;
  // The run directories recorded for the sweep's jobs, each once.
  std::vector<std::string> sweep_run_dirs(const std::string& sweep) const;
  // The names of the sweeps the store has, in order.
  std::vector<std::string> sweep_names() const;
  // A job's recorded checkpoints, oldest step first.
  std::vector<CheckpointRow> checkpoints(const std::string& job_id) const;
  // The metrics of the sweep's jobs for one split ("train" or "val"), by job and step.
  std::vector<MetricRow> sweep_metrics(const std::string& sweep, const std::string& split) const;
  // The evaluation scores of the sweep's jobs, oldest step first.
  std::vector<EvalRow> sweep_evals(const std::string& sweep) const;
  // Each of the sweep's jobs that has routing statistics: those of its newest step, over its layers.
  std::vector<RoutingMeans> sweep_routing_means(const std::string& sweep) const;

  // A read-only statement's rows as strings (NULL -> ""): for the store's own checks and for tests
  // that look at the file itself. Code outside db/ uses the typed reads above.
  struct Table {
    std::vector<std::string> columns;
    std::vector<std::vector<std::string>> rows;
  };
  Table query_table(const std::string& sql) const;
  std::vector<std::vector<std::string>> query(const std::string& sql) const { return query_table(sql).rows; }

 private:
  void exec(const std::string& sql) const;
  Statement statement(const std::string& sql) const;
  // The JobState of a row whose columns from `first` on are those JobState reads (see store.cpp).
  JobState read_state(const Statement& s, int first, const std::string& job_id) const;
  void write_for_job(const std::string& job_id, const char* table, const std::function<void()>& write);
  void migrate();
  void require_job(const std::string& job_id, const char* table) const;  // rows must name a known job
  std::string path_;
  sqlite3* db_ = nullptr;
  mutable std::unordered_map<std::string, sqlite3_stmt*> statements_;  // prepared once per connection
};

// A statement `read_only_query` will not run: it would write, attach, or set a pragma.
struct QueryRefused : StoreError {
  using StoreError::StoreError;
};

// `moelab db query`: a user's one statement on a connection of its own that cannot change the store,
// whatever the SQL says. The file is opened read-only (no migration, no WAL conversion), no database
// may be attached, and an authorizer lets through only reads of the main database: SELECT, functions,
// recursive CTEs and the pragmas that only report (table_info(t), user_version, ...). Anything else
// throws QueryRefused naming it. A query still running at time_limit is stopped (StoreError naming the
// limit), so a recursive CTE without end cannot hang the caller. Readable while a writer holds the store.
Store::Table read_only_query(const std::string& path, const std::string& sql, std::chrono::milliseconds time_limit);

}  // namespace moelab
