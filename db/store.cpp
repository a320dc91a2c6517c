#include "db/store.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "db/schema.hpp"

namespace moelab {
namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

[[noreturn]] void fail(sqlite3* db, const std::string& what, const std::string& sql) {
  throw StoreError("sqlite " + what + " failed: " + sqlite3_errmsg(db) + " (in: " + sql.substr(0, 120) + ")");
}

// Prepares the first statement of sql; tail, when given, receives what follows it.
sqlite3_stmt* prepare(sqlite3* db, const std::string& sql, const char** tail = nullptr) {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db, sql.c_str(), int(sql.size()), &stmt, tail) != SQLITE_OK) fail(db, "prepare", sql);
  if (!stmt) throw StoreError("sqlite prepare failed: no statement in \"" + sql.substr(0, 120) + "\"");
  return stmt;
}

// Whether sql holds a statement (not just blanks, semicolons and comments).
bool has_statement(sqlite3* db, const char* sql) {
  sqlite3_stmt* stmt = nullptr;
  sqlite3_prepare_v2(db, sql, -1, &stmt, nullptr);
  sqlite3_finalize(stmt);
  return stmt != nullptr || sqlite3_errcode(db) != SQLITE_OK;
}

// A connection cannot close while statements are unfinalized, so the cache goes first.
void close_connection(sqlite3* db, std::unordered_map<std::string, sqlite3_stmt*>& statements) {
  for (auto& [sql, stmt] : statements) sqlite3_finalize(stmt);
  statements.clear();
  sqlite3_close(db);
}

// How long a writer waits for another one's lock before it gives up. Jobs write in small
// transactions, so a long wait means something is stuck, not busy.
constexpr std::chrono::milliseconds kBusyTimeout{60000};

// PRAGMA journal_mode=WAL needs exclusive access to convert the file, and SQLite answers "database
// is locked" at once instead of calling the busy handler: several processes opening a new store
// together run into that. So this retries within the busy timeout. Once a file is in WAL mode
// (a property of the file) the pragma changes nothing and succeeds at the first try.
void use_wal(sqlite3* db) {
  const std::string sql = "PRAGMA journal_mode=WAL";
  const auto deadline = std::chrono::steady_clock::now() + kBusyTimeout;
  for (std::chrono::milliseconds pause{1};; pause = std::min(pause * 2, std::chrono::milliseconds{100})) {
    std::string mode;
    auto keep_mode = [](void* out, int, char** values, char**) {
      *static_cast<std::string*>(out) = values[0] ? values[0] : "";
      return 0;
    };
    const int rc = sqlite3_exec(db, sql.c_str(), keep_mode, &mode, nullptr);
    if (rc == SQLITE_OK && mode == "wal") return;
    if (rc == SQLITE_OK) throw StoreError("the file stays in journal mode '" + mode + "', not WAL");
    if (rc != SQLITE_BUSY || std::chrono::steady_clock::now() > deadline) fail(db, "exec", sql);
    std::this_thread::sleep_for(pause);
  }
}

// Checks that the file is one of ours: SQLite (reading fails otherwise), not from a newer moelab,
// and not some other program's database (tables but version 0).
// Version and tables are read in one statement, hence one snapshot: a store that another process is
// migrating right now shows either both or neither.
void check_is_moelab_store(const Store& store) {
  auto row = store.query("SELECT (SELECT user_version FROM pragma_user_version), (SELECT count(*) FROM sqlite_master)").at(0);
  const int version = std::stoi(row[0]);
  if (version > Store::schema_version())
    throw StoreError("schema version " + std::to_string(version) + " is newer than this moelab knows (" +
                     std::to_string(Store::schema_version()) + ")");
  if (version == 0 && row[1] != "0") throw StoreError("it holds tables but no moelab schema version");
}

}  // namespace

// One use of a prepared statement; binds by position, steps to completion. A writer's statement
// comes from the store's cache (prepared once per connection) and is reset for the next use on
// scope exit; a one-shot statement (ad-hoc reads, whose SQL varies) is finalized instead, so the
// cache does not grow with every distinct query.
class Statement {
 public:
  enum class Ownership { cached, one_shot };
  Statement(sqlite3* db, sqlite3_stmt* stmt, const std::string& sql, Ownership ownership)
      : db_(db), sql_(sql), stmt_(stmt), ownership_(ownership) {}
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  ~Statement() {
    if (ownership_ == Ownership::one_shot) {
      sqlite3_finalize(stmt_);
      return;
    }
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }

  Statement& bind(const std::string& v) { return check(sqlite3_bind_text(stmt_, ++index_, v.c_str(), int(v.size()), SQLITE_TRANSIENT)); }
  Statement& bind(double v) { return check(sqlite3_bind_double(stmt_, ++index_, v)); }
  Statement& bind(int64_t v) { return check(sqlite3_bind_int64(stmt_, ++index_, v)); }
  Statement& bind(int v) { return bind(int64_t(v)); }
  template <typename T>
  Statement& bind(const std::optional<T>& v) {
    if (v) return bind(*v);
    return check(sqlite3_bind_null(stmt_, ++index_));
  }

  // Runs a statement that returns no rows; returns the number of rows it changed.
  int run() {
    int rc = sqlite3_step(stmt_);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) fail(db_, "run", sql_);
    return sqlite3_changes(db_);
  }

  bool next_row() {
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc != SQLITE_DONE) fail(db_, "read", sql_);
    return false;
  }
  std::string text(int column) const {
    auto p = sqlite3_column_text(stmt_, column);
    return p ? reinterpret_cast<const char*>(p) : "";
  }
  int64_t integer(int column) const { return sqlite3_column_int64(stmt_, column); }
  double real(int column) const { return sqlite3_column_double(stmt_, column); }
  bool is_null(int column) const { return sqlite3_column_type(stmt_, column) == SQLITE_NULL; }
  std::optional<int64_t> optional_integer(int column) const {
    return is_null(column) ? std::nullopt : std::optional<int64_t>(integer(column));
  }
  std::optional<double> optional_real(int column) const {
    return is_null(column) ? std::nullopt : std::optional<double>(real(column));
  }
  int columns() const { return sqlite3_column_count(stmt_); }
  std::string column_name(int column) const { return sqlite3_column_name(stmt_, column); }
  bool read_only() const { return sqlite3_stmt_readonly(stmt_); }

 private:
  Statement& check(int rc) {
    if (rc != SQLITE_OK) fail(db_, "bind", sql_);
    return *this;
  }
  sqlite3* db_;
  std::string sql_;
  sqlite3_stmt* stmt_;
  Ownership ownership_;
  int index_ = 0;
};

Statement Store::statement(const std::string& sql) const {
  sqlite3_stmt*& cached = statements_[sql];
  if (!cached) cached = prepare(db_, sql);
  return Statement(db_, cached, sql, Statement::Ownership::cached);
}

void Store::write_for_job(const std::string& job_id, const char* table, const std::function<void()>& write) {
  try {
    write();
  } catch (const StoreError&) {
    require_job(job_id, table);  // a clearer message when the job is unknown (a foreign key failed)
    throw;
  }
}

Store::Store(const std::string& path) : path_(path) {
  try {
    auto parent = std::filesystem::path(path).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent);
  } catch (const std::filesystem::filesystem_error& e) {
    throw StoreError(path + ": cannot create the store's directory: " + e.what());
  }
  if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) != SQLITE_OK) {
    std::string message = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    throw StoreError(path + ": cannot open store: " + message);
  }
  // Many processes write one file: wait for locks rather than failing, and let readers run beside writers.
  sqlite3_busy_timeout(db_, int(kBusyTimeout.count()));
  try {
    exec("PRAGMA foreign_keys=ON");
    // Refuse a foreign file before changing it: journal_mode=WAL is written into the file.
    check_is_moelab_store(*this);
    use_wal(db_);
    exec("PRAGMA synchronous=NORMAL");  // safe in WAL mode: a power cut may lose the last commits, never consistency
    migrate();
  } catch (const StoreError& e) {
    close_connection(db_, statements_);
    throw StoreError(path + ": not a usable moelab store: " + e.what());
  }
}

Store::~Store() { close_connection(db_, statements_); }

int Store::schema_version() { return migrations().back().version; }

int Store::user_version() const { return std::stoi(query("PRAGMA user_version")[0][0]); }

void Store::migrate() {
  const int current = user_version();
  for (const auto& m : migrations()) {
    if (m.version <= current) continue;
    transaction([&] {
      // Another process may have migrated while this one waited for the write lock.
      if (user_version() >= m.version) return;
      exec(m.sql);
      exec("PRAGMA user_version = " + std::to_string(m.version));
    });
  }
}

void Store::exec(const std::string& sql) const {
  char* error = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &error) != SQLITE_OK) {
    std::string message = error ? error : "unknown error";
    sqlite3_free(error);
    throw StoreError("sqlite exec failed: " + message + " (in: " + sql.substr(0, 120) + ")");
  }
}

void Store::transaction(const std::function<void()>& fn) {
  exec("BEGIN IMMEDIATE");  // takes the write lock now, so the busy timeout (not a deadlock) handles contention
  try {
    fn();
    exec("COMMIT");
  } catch (...) {
    // SQLite may already have rolled back (e.g. on a full disk); a failing ROLLBACK must not hide
    // the error that caused it.
    if (!sqlite3_get_autocommit(db_)) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

void Store::upsert_job(const JobRow& job) {
  statement(
            "INSERT INTO jobs (id, name, sweep, config_json, axes_json, total_steps, created_at) VALUES (?,?,?,?,?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET name = excluded.name, total_steps = excluded.total_steps, "
            // a job started on its own (no sweep, no axes) keeps what its sweep recorded
            "sweep = CASE WHEN excluded.sweep != '' THEN excluded.sweep ELSE sweep END, "
            "axes_json = CASE WHEN excluded.axes_json != '{}' THEN excluded.axes_json ELSE axes_json END")
      .bind(job.id).bind(job.name).bind(job.sweep).bind(job.config_json).bind(job.axes_json).bind(job.total_steps)
      .bind(now_seconds())
      .run();
  if (job.sweep.empty()) return;
  statement("INSERT INTO sweep_jobs (sweep, job_id, axes_json) VALUES (?,?,?) "
            "ON CONFLICT(sweep, job_id) DO UPDATE SET axes_json = excluded.axes_json")
      .bind(job.sweep).bind(job.id).bind(job.axes_json)
      .run();
}

void Store::set_job_status(const std::string& job_id, JobStatus status, const std::string& error,
                           std::optional<int> exit_code) {
  const bool running = status == JobStatus::running;
  const bool terminal = is_terminal(status);
  int changed = statement("UPDATE jobs SET status = ?, error = ?, exit_code = ?, "
                          "attempts = attempts + ?, started_at = CASE WHEN ? THEN ? ELSE started_at END, "
                          "finished_at = CASE WHEN ? THEN ? WHEN ? THEN NULL ELSE finished_at END WHERE id = ?")
                    .bind(to_string(status)).bind(error).bind(exit_code).bind(int(running)).bind(int(running)).bind(now_seconds())
                    .bind(int(terminal)).bind(now_seconds()).bind(int(running)).bind(job_id)
                    .run();
  if (changed == 0) throw StoreError("set_job_status: no job " + job_id);
}

void Store::set_job_executor(const std::string& job_id, const std::string& executor, const std::string& executor_id,
                             const std::string& host, const std::string& run_dir) {
  require_job(job_id, "jobs");
  statement("UPDATE jobs SET executor = ?, executor_id = ?, host = ?, run_dir = ? WHERE id = ?")
      .bind(executor).bind(executor_id).bind(host).bind(run_dir).bind(job_id)
      .run();
}

void Store::merge_job_store(const std::string& job_store_path) {
  if (!std::filesystem::exists(job_store_path)) return;
  Store{job_store_path};  // brings the job's file to this schema version before its tables are read
  statement("ATTACH DATABASE ? AS job").bind(job_store_path).run();
  try {
    transaction([&] {
      exec(R"SQL(
INSERT INTO jobs SELECT * FROM job.jobs WHERE true ON CONFLICT(id) DO NOTHING;
UPDATE jobs SET status = s.status, attempts = s.attempts, started_at = s.started_at, finished_at = s.finished_at,
       exit_code = s.exit_code, error = s.error, host = CASE WHEN s.host != '' THEN s.host ELSE jobs.host END,
       eval_status = CASE WHEN s.eval_status != '' THEN s.eval_status ELSE jobs.eval_status END,
       peak_resident_bytes = nullif(max(ifnull(jobs.peak_resident_bytes, 0), ifnull(s.peak_resident_bytes, 0)), 0),
       peak_gpu_bytes = nullif(max(ifnull(jobs.peak_gpu_bytes, 0), ifnull(s.peak_gpu_bytes, 0)), 0)
  FROM job.jobs AS s WHERE jobs.id = s.id AND s.attempts > 0;
INSERT INTO metrics SELECT * FROM job.metrics WHERE true ON CONFLICT(job_id, step, split) DO UPDATE SET
  loss = excluded.loss, tokens = excluded.tokens, lr = excluded.lr, grad_norm = excluded.grad_norm,
  tokens_per_s = excluded.tokens_per_s, wall_time = excluded.wall_time;
INSERT INTO routing_stats SELECT * FROM job.routing_stats WHERE true ON CONFLICT(job_id, step, layer) DO UPDATE SET
  expert_fraction_json = excluded.expert_fraction_json, load_std = excluded.load_std,
  load_max_over_mean = excluded.load_max_over_mean, dead_experts = excluded.dead_experts,
  positive_gates = excluded.positive_gates, fewer_than_k = excluded.fewer_than_k, router_cosine = excluded.router_cosine;
INSERT INTO checkpoints SELECT * FROM job.checkpoints WHERE true ON CONFLICT(job_id, step) DO UPDATE SET
  path = excluded.path, sha256 = excluded.sha256, created_at = excluded.created_at;
INSERT INTO evals SELECT * FROM job.evals WHERE true ON CONFLICT(job_id, step, task, metric) DO UPDATE SET
  value = excluded.value, stderr = excluded.stderr, samples = excluded.samples, source = excluded.source;
INSERT INTO events (job_id, time, level, message) SELECT e.job_id, e.time, e.level, e.message FROM job.events e
  WHERE NOT EXISTS (SELECT 1 FROM events x WHERE x.job_id = e.job_id AND x.time = e.time AND x.message = e.message)
  ORDER BY e.id;
)SQL");
    });
  } catch (...) {
    exec("DETACH DATABASE job");
    throw;
  }
  exec("DETACH DATABASE job");
}

void Store::record_peak_memory(const std::string& job_id, int64_t resident_bytes, int64_t gpu_bytes) {
  require_job(job_id, "jobs");
  // 0 is "none measured" (no GPU) and stays NULL, as for jobs recorded before peaks were.
  statement("UPDATE jobs SET peak_resident_bytes = nullif(max(ifnull(peak_resident_bytes, 0), ?), 0), "
            "peak_gpu_bytes = nullif(max(ifnull(peak_gpu_bytes, 0), ?), 0) WHERE id = ?")
      .bind(resident_bytes).bind(gpu_bytes).bind(job_id)
      .run();
}

void Store::set_eval_status(const std::string& job_id, const EvalStatus& eval_status) {
  require_job(job_id, "jobs");
  statement("UPDATE jobs SET eval_status = ? WHERE id = ?").bind(eval_status.text()).bind(job_id).run();
}

void Store::count_attempt(const std::string& job_id) {
  require_job(job_id, "jobs");
  statement("UPDATE jobs SET attempts = attempts + 1 WHERE id = ?").bind(job_id).run();
}

void Store::upsert_sweep(const std::string& name, const std::string& spec_json) {
  statement(
            "INSERT INTO sweeps (name, spec_json, created_at) VALUES (?,?,?) "
            "ON CONFLICT(name) DO UPDATE SET spec_json = excluded.spec_json")
      .bind(name).bind(spec_json).bind(now_seconds())
      .run();
}

namespace {

// A stored status column of `whose` ("job <id>"); a value no moelab writes means the file was
// edited or damaged.
template <typename T>
T parse_stored(const std::string& path, const std::string& whose, T (*parse)(std::string_view), const std::string& text) {
  try {
    return parse(text);
  } catch (const std::invalid_argument& e) {
    throw StoreError(path + ": " + whose + ": " + e.what());
  }
}

// The columns JobState reads, in its order, for a query over `jobs j`.
constexpr const char* kStateColumns = "j.status, j.attempts, j.error, j.executor, j.executor_id, j.host, j.run_dir, j.eval_status";

}  // namespace

JobState Store::read_state(const Statement& s, int first, const std::string& job_id) const {
  return JobState{.status = parse_stored(path_, "job " + job_id, parse_job_status, s.text(first)),
                  .attempts = int(s.integer(first + 1)),
                  .error = s.text(first + 2),
                  .executor = s.text(first + 3),
                  .executor_id = s.text(first + 4),
                  .host = s.text(first + 5),
                  .run_dir = s.text(first + 6),
                  .eval = parse_stored(path_, "job " + job_id, EvalStatus::parse, s.text(first + 7))};
}

std::optional<JobStatus> Store::job_status(const std::string& job_id) const {
  Statement s = statement("SELECT status FROM jobs WHERE id = ?");
  s.bind(job_id);
  if (!s.next_row()) return std::nullopt;
  return parse_stored(path_, "job " + job_id, parse_job_status, s.text(0));
}

std::optional<JobState> Store::job_state(const std::string& job_id) const {
  Statement s = statement(std::string("SELECT ") + kStateColumns + " FROM jobs j WHERE j.id = ?");
  s.bind(job_id);
  if (!s.next_row()) return std::nullopt;
  return read_state(s, 0, job_id);
}

std::vector<SweepJob> Store::sweep_jobs(const std::string& sweep) const {
  Statement s = statement(std::string("SELECT j.id, j.name, j.config_json, m.axes_json, j.total_steps, ") + kStateColumns +
                          " FROM sweep_jobs m JOIN jobs j ON j.id = m.job_id WHERE m.sweep = ? ORDER BY j.id");
  s.bind(sweep);
  std::vector<SweepJob> jobs;
  while (s.next_row()) {
    const std::string id = s.text(0);
    jobs.push_back({JobRow{id, s.text(1), sweep, s.text(2), s.text(3), int(s.integer(4))}, read_state(s, 5, id)});
  }
  return jobs;
}

std::vector<StatusCount> Store::status_counts(const std::string& sweep) const {
  Statement s = statement(
      "SELECT status, count(*) FROM jobs WHERE ?1 = '' OR id IN (SELECT job_id FROM sweep_jobs WHERE sweep = ?1) "
      "GROUP BY status ORDER BY status");
  s.bind(sweep);
  std::vector<StatusCount> counts;
  while (s.next_row()) counts.push_back({parse_stored(path_, "a job of sweep '" + sweep + "'", parse_job_status, s.text(0)), int(s.integer(1))});
  return counts;
}

std::vector<JobProgress> Store::job_progress(const std::string& sweep) const {
  // ETA: remaining steps x tokens per step / the last logged tokens per second.
  Statement s = statement(
      "SELECT j.id, j.name, j.status, ifnull(p.step, 0), j.total_steps, p.train_loss, "
      "(SELECT loss FROM latest_val_loss v WHERE v.job_id = j.id), "
      "(SELECT (j.total_steps - m.step) * json_extract(j.config_json, '$.train.batch_size') * "
      "   json_extract(j.config_json, '$.model.seq_len') / m.tokens_per_s FROM metrics m "
      "   WHERE m.job_id = j.id AND m.split = 'train' AND m.tokens_per_s > 0 AND j.status = ?2 "
      "   ORDER BY m.step DESC LIMIT 1), "
      "j.peak_resident_bytes, j.peak_gpu_bytes, j.executor_id, j.attempts, j.eval_status, j.axes_json "
      "FROM jobs j JOIN job_progress p ON p.job_id = j.id "
      "WHERE ?1 = '' OR j.id IN (SELECT job_id FROM sweep_jobs WHERE sweep = ?1) ORDER BY j.name");
  s.bind(sweep).bind(to_string(JobStatus::running));
  std::vector<JobProgress> jobs;
  while (s.next_row()) {
    const std::string id = s.text(0);
    jobs.push_back(JobProgress{.id = id,
                               .name = s.text(1),
                               .status = parse_stored(path_, "job " + id, parse_job_status, s.text(2)),
                               .step = s.integer(3),
                               .total_steps = int(s.integer(4)),
                               .train_loss = s.optional_real(5),
                               .val_loss = s.optional_real(6),
                               .eta_seconds = s.optional_real(7),
                               .peak_resident_bytes = s.optional_integer(8),
                               .peak_gpu_bytes = s.optional_integer(9),
                               .executor_id = s.text(10),
                               .attempts = int(s.integer(11)),
                               .eval = parse_stored(path_, "job " + id, EvalStatus::parse, s.text(12)),
                               .axes_json = s.text(13)});
  }
  return jobs;
}

std::vector<std::string> Store::sweep_run_dirs(const std::string& sweep) const {
  Statement s = statement(
      "SELECT DISTINCT run_dir FROM jobs WHERE run_dir != '' AND id IN (SELECT job_id FROM sweep_jobs WHERE sweep = ?) "
      "ORDER BY run_dir");
  s.bind(sweep);
  std::vector<std::string> dirs;
  while (s.next_row()) dirs.push_back(s.text(0));
  return dirs;
}

std::vector<std::string> Store::sweep_names() const {
  Statement s = statement("SELECT DISTINCT sweep FROM sweep_jobs ORDER BY sweep");
  std::vector<std::string> names;
  while (s.next_row()) names.push_back(s.text(0));
  return names;
}

std::vector<CheckpointRow> Store::checkpoints(const std::string& job_id) const {
  Statement s = statement("SELECT step, path, sha256 FROM checkpoints WHERE job_id = ? ORDER BY step");
  s.bind(job_id);
  std::vector<CheckpointRow> rows;
  while (s.next_row()) rows.push_back({job_id, s.integer(0), s.text(1), s.text(2)});
  return rows;
}

std::vector<MetricRow> Store::sweep_metrics(const std::string& sweep, const std::string& split) const {
  Statement s = statement(
      "SELECT job_id, step, loss, tokens, lr, grad_norm, tokens_per_s, wall_time FROM metrics "
      "WHERE split = ? AND job_id IN (SELECT job_id FROM sweep_jobs WHERE sweep = ?) ORDER BY job_id, step");
  s.bind(split).bind(sweep);
  std::vector<MetricRow> rows;
  while (s.next_row())
    rows.push_back({s.text(0), s.integer(1), split, s.real(2), s.integer(3), s.real(4), s.real(5), s.real(6), s.real(7)});
  return rows;
}

std::vector<EvalRow> Store::sweep_evals(const std::string& sweep) const {
  Statement s = statement(
      "SELECT job_id, step, task, metric, value, stderr, samples, source FROM evals "
      "WHERE job_id IN (SELECT job_id FROM sweep_jobs WHERE sweep = ?) ORDER BY step");
  s.bind(sweep);
  std::vector<EvalRow> rows;
  while (s.next_row())
    rows.push_back({s.text(0), s.integer(1), s.text(2), s.text(3), s.real(4), s.optional_real(5), s.integer(6), s.text(7)});
  return rows;
}

std::vector<RoutingMeans> Store::sweep_routing_means(const std::string& sweep) const {
  Statement s = statement(
      "SELECT t.job_id, t.step, avg(load_std), avg(load_max_over_mean), avg(dead_experts), avg(positive_gates), "
      "avg(fewer_than_k), avg(router_cosine) FROM routing_stats t "
      "WHERE t.job_id IN (SELECT job_id FROM sweep_jobs WHERE sweep = ?) "
      "AND t.step = (SELECT max(step) FROM routing_stats WHERE job_id = t.job_id) GROUP BY t.job_id, t.step");
  s.bind(sweep);
  std::vector<RoutingMeans> rows;
  while (s.next_row())
    rows.push_back({s.text(0), s.integer(1), s.real(2), s.real(3), s.real(4), s.real(5), s.real(6), s.real(7)});
  return rows;
}

void Store::require_job(const std::string& job_id, const char* table) const {
  if (!job_status(job_id)) throw StoreError(std::string(table) + ": no job " + job_id + " in " + path_);
}

void Store::put_metric(const MetricRow& r) {
  write_for_job(r.job_id, "metrics", [&] {
    statement(
              "INSERT INTO metrics (job_id, step, split, loss, tokens, lr, grad_norm, tokens_per_s, wall_time) "
              "VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(job_id, step, split) DO UPDATE SET loss = excluded.loss, "
              "tokens = excluded.tokens, lr = excluded.lr, grad_norm = excluded.grad_norm, "
              "tokens_per_s = excluded.tokens_per_s, wall_time = excluded.wall_time")
        .bind(r.job_id).bind(r.step).bind(r.split).bind(r.loss).bind(r.tokens).bind(r.lr).bind(r.grad_norm)
        .bind(r.tokens_per_s).bind(r.wall_time)
        .run();
  });
}

void Store::put_routing(const RoutingRow& r) {
  write_for_job(r.job_id, "routing_stats", [&] {
    statement(
              "INSERT INTO routing_stats (job_id, step, layer, expert_fraction_json, load_std, load_max_over_mean, "
              "dead_experts, positive_gates, fewer_than_k, router_cosine) VALUES (?,?,?,?,?,?,?,?,?,?) "
              "ON CONFLICT(job_id, step, layer) DO UPDATE SET expert_fraction_json = excluded.expert_fraction_json, "
              "load_std = excluded.load_std, load_max_over_mean = excluded.load_max_over_mean, "
              "dead_experts = excluded.dead_experts, positive_gates = excluded.positive_gates, "
              "fewer_than_k = excluded.fewer_than_k, "
              "router_cosine = excluded.router_cosine")
        .bind(r.job_id).bind(r.step).bind(r.layer).bind(nlohmann::json(r.expert_fraction).dump()).bind(r.load_std)
        .bind(r.load_max_over_mean).bind(r.dead_experts).bind(r.positive_gates).bind(r.fewer_than_k).bind(r.router_cosine)
        .run();
  });
}

void Store::put_checkpoint(const CheckpointRow& r) {
  write_for_job(r.job_id, "checkpoints", [&] {
    statement(
              "INSERT INTO checkpoints (job_id, step, path, sha256, created_at) VALUES (?,?,?,?,?) "
              "ON CONFLICT(job_id, step) DO UPDATE SET path = excluded.path, sha256 = excluded.sha256, "
              "created_at = excluded.created_at")
        .bind(r.job_id).bind(r.step).bind(r.path).bind(r.sha256).bind(now_seconds())
        .run();
  });
}

void Store::put_eval(const EvalRow& r) {
  write_for_job(r.job_id, "evals", [&] {
    statement(
              "INSERT INTO evals (job_id, step, task, metric, value, stderr, samples, source) VALUES (?,?,?,?,?,?,?,?) "
              "ON CONFLICT(job_id, step, task, metric) DO UPDATE SET value = excluded.value, stderr = excluded.stderr, "
              "samples = excluded.samples, source = excluded.source")
        .bind(r.job_id).bind(r.step).bind(r.task).bind(r.metric).bind(r.value).bind(r.stderr_value).bind(r.samples)
        .bind(r.source)
        .run();
  });
}

void Store::log_event(const std::string& job_id, const std::string& level, const std::string& message) {
  write_for_job(job_id, "events", [&] {
    statement("INSERT INTO events (job_id, time, level, message) VALUES (?,?,?,?)")
        .bind(job_id).bind(now_seconds()).bind(level).bind(message)
        .run();
  });
}

namespace {

// The rows of sql, which must be one statement that does not write; NULL reads as "".
Store::Table read_table(sqlite3* db, const std::string& sql) {
  const char* tail = nullptr;
  Statement s(db, prepare(db, sql, &tail), sql, Statement::Ownership::one_shot);
  // prepare reads only the first statement; a second one would be silently ignored.
  if (has_statement(db, tail)) throw StoreError("query takes one statement: " + sql);
  if (!s.read_only()) throw QueryRefused("query refuses a statement that writes: " + sql);
  Store::Table table;
  for (int c = 0; c < s.columns(); ++c) table.columns.push_back(s.column_name(c));
  while (s.next_row()) {
    auto& row = table.rows.emplace_back();
    for (int c = 0; c < s.columns(); ++c) row.push_back(s.text(c));
  }
  return table;
}

// Pragmas that only report. The first take no value; the second an argument naming a table or
// index (table_info(jobs)) or a row limit (integrity_check(10)), never a setting.
const std::set<std::string> kReportingPragmas = {
    "user_version", "schema_version", "application_id", "data_version", "page_size", "page_count", "freelist_count",
    "encoding", "compile_options", "database_list", "collation_list", "function_list", "module_list", "pragma_list"};
const std::set<std::string> kSchemaPragmas = {"table_info",      "table_xinfo",       "table_list",     "index_list", "index_info",
                                              "index_xinfo",     "foreign_key_list",  "foreign_key_check",
                                              "integrity_check", "quick_check"};

// What an authorizer action code does, for the refusal message.
std::string action_name(int action) {
  static const std::map<int, std::string> names = {
      {SQLITE_CREATE_INDEX, "CREATE INDEX"}, {SQLITE_CREATE_TABLE, "CREATE TABLE"}, {SQLITE_CREATE_TEMP_INDEX, "CREATE TEMP INDEX"},
      {SQLITE_CREATE_TEMP_TABLE, "CREATE TEMP TABLE"}, {SQLITE_CREATE_TEMP_TRIGGER, "CREATE TEMP TRIGGER"},
      {SQLITE_CREATE_TEMP_VIEW, "CREATE TEMP VIEW"}, {SQLITE_CREATE_TRIGGER, "CREATE TRIGGER"}, {SQLITE_CREATE_VIEW, "CREATE VIEW"},
      {SQLITE_DELETE, "DELETE"}, {SQLITE_DROP_INDEX, "DROP INDEX"}, {SQLITE_DROP_TABLE, "DROP TABLE"},
      {SQLITE_DROP_TEMP_INDEX, "DROP TEMP INDEX"}, {SQLITE_DROP_TEMP_TABLE, "DROP TEMP TABLE"},
      {SQLITE_DROP_TEMP_TRIGGER, "DROP TEMP TRIGGER"}, {SQLITE_DROP_TEMP_VIEW, "DROP TEMP VIEW"},
      {SQLITE_DROP_TRIGGER, "DROP TRIGGER"}, {SQLITE_DROP_VIEW, "DROP VIEW"}, {SQLITE_INSERT, "INSERT"}, {SQLITE_PRAGMA, "PRAGMA"},
      {SQLITE_READ, "reading"}, {SQLITE_TRANSACTION, "a transaction"}, {SQLITE_UPDATE, "UPDATE"}, {SQLITE_ATTACH, "ATTACH"},
      {SQLITE_DETACH, "DETACH"}, {SQLITE_ALTER_TABLE, "ALTER TABLE"}, {SQLITE_REINDEX, "REINDEX"}, {SQLITE_ANALYZE, "ANALYZE"},
      {SQLITE_CREATE_VTABLE, "CREATE VIRTUAL TABLE"}, {SQLITE_DROP_VTABLE, "DROP VIRTUAL TABLE"}, {SQLITE_SAVEPOINT, "SAVEPOINT"}};
  auto it = names.find(action);
  return it != names.end() ? it->second : "action " + std::to_string(action);
}

std::string lowercase(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
  return text;
}

// What read_only_query's authorizer refused first (SQLite asks no more after a refusal); empty when
// nothing was. For CREATE, DROP and ANALYZE, SQLite's first question is a write to its schema table
// (INSERT sqlite_master), which says less than the statement itself.
struct ReadOnlyGuard {
  std::string refused;
  bool refused_schema_write = false;
  std::chrono::steady_clock::time_point deadline;
  bool timed_out = false;
};

int allow_only_reads(void* user, int action, const char* arg1, const char* arg2, const char* database, const char*) {
  const std::string name = lowercase(arg1 ? arg1 : "");
  switch (action) {
    case SQLITE_SELECT:
    case SQLITE_FUNCTION:
    case SQLITE_RECURSIVE:
      return SQLITE_OK;
    case SQLITE_READ:  // no database: a table SQLite has not placed yet (count(*)), and only main holds tables
      if (!database || std::string_view(database) == "main") return SQLITE_OK;
      break;
    case SQLITE_PRAGMA:
      if ((!arg2 && kReportingPragmas.count(name)) || kSchemaPragmas.count(name)) return SQLITE_OK;
      break;
    case SQLITE_UPDATE:
      // SQLite asks this of itself the first time a connection uses a table-valued pragma
      // (pragma_table_info). No such write can happen: the connection is read-only and defensive,
      // and writable_schema is refused.
      if (name == "sqlite_master" && database && std::string_view(database) == "main") return SQLITE_OK;
      break;
  }
  auto& guard = *static_cast<ReadOnlyGuard*>(user);
  if (guard.refused.empty()) {
    guard.refused_schema_write = name.starts_with("sqlite_") && action != SQLITE_READ;
    guard.refused = action_name(action);
    if (action == SQLITE_PRAGMA) guard.refused += " " + name + (arg2 ? std::string(" = ") + arg2 : "");
    else if (action == SQLITE_READ) guard.refused += std::string(" ") + (database ? database : "?") + "." + name;
    else if (action == SQLITE_ATTACH) guard.refused += std::string(" '") + (arg1 ? arg1 : "") + "'";  // also VACUUM INTO's target
    else if (arg1 && action != SQLITE_TRANSACTION) guard.refused += std::string(" ") + arg1;
  }
  return SQLITE_DENY;
}

// Called every few thousand virtual-machine steps; a non-zero answer interrupts the statement.
int stop_at_deadline(void* user) {
  auto& guard = *static_cast<ReadOnlyGuard*>(user);
  guard.timed_out = std::chrono::steady_clock::now() > guard.deadline;
  return guard.timed_out;
}

std::string seconds_text(std::chrono::milliseconds duration) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", duration.count() / 1000.0);
  return text;
}

// The statement as the user wrote it, on one line and cut short, for messages.
std::string statement_head(const std::string& sql) {
  std::string head;
  for (char c : sql) head += std::isspace(static_cast<unsigned char>(c)) ? ' ' : c;
  const size_t start = head.find_first_not_of(' '), end = head.find_last_not_of(" ;");
  head = start == std::string::npos ? "" : head.substr(start, end - start + 1);
  return head.size() > 60 ? head.substr(0, 57) + "..." : head;
}

}  // namespace

Store::Table Store::query_table(const std::string& sql) const { return read_table(db_, sql); }

Store::Table read_only_query(const std::string& path, const std::string& sql, std::chrono::milliseconds time_limit) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    std::string message = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    throw StoreError(path + ": cannot open store read-only: " + message);
  }
  std::unique_ptr<sqlite3, int (*)(sqlite3*)> connection(db, sqlite3_close);
  ReadOnlyGuard guard{.deadline = std::chrono::steady_clock::now() + time_limit};
  sqlite3_limit(db, SQLITE_LIMIT_ATTACHED, 0);
  sqlite3_db_config(db, SQLITE_DBCONFIG_DEFENSIVE, 1, nullptr);
  sqlite3_set_authorizer(db, allow_only_reads, &guard);
  sqlite3_progress_handler(db, 1000, stop_at_deadline, &guard);
  sqlite3_busy_timeout(db, int(time_limit.count()));  // e.g. while a writer recovers the WAL
  try {
    return read_table(db, sql);
  } catch (const QueryRefused&) {
    throw QueryRefused("db query is read-only: " + statement_head(sql) + " refused (it writes)");
  } catch (const StoreError& e) {
    if (guard.refused_schema_write) throw QueryRefused("db query is read-only: " + statement_head(sql) + " refused (it changes the schema)");
    if (!guard.refused.empty()) throw QueryRefused("db query is read-only: " + guard.refused + " refused");
    if (guard.timed_out)
      throw StoreError("db query stopped: it ran past its time limit of " + seconds_text(time_limit) + " s");
    throw;
  }
}

}  // namespace moelab
