// The SQLite store on real files: migrations, upserts that never duplicate, views, transactions and
// many processes writing one file at once.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "db/schema.hpp"
#include "db/store.hpp"
#include "run_moelab.hpp"

namespace fs = std::filesystem;
using namespace moelab;

namespace {

// A value read through a connection of its own: Store::query refuses PRAGMAs that can write
// (journal_mode), and this sees what the file says, not what one Store believes.
std::string raw_value(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
  sqlite3_stmt* stmt = nullptr;
  sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr);
  std::string value = sqlite3_step(stmt) == SQLITE_ROW ? reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0))
                                                       : "<no row: " + std::string(sqlite3_errmsg(db)) + ">";
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return value;
}

void raw_exec(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  sqlite3_open(path.c_str(), &db);
  sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr);
  sqlite3_close(db);
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string writer_job(int writer) {
  std::string id = "w";  // built in two steps: "w" + to_string trips a GCC 12 -Wrestrict false positive
  id += std::to_string(writer);
  return id;
}

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("moelab_store_" + std::to_string(getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name = "moelab.db") const { return (dir_ / name).string(); }

  static void add_job(Store& s, const std::string& id, const std::string& axes = "{}") {
    s.upsert_job(JobRow{id, "job-" + id, "sweep", "{}", axes, 100});
  }
  static MetricRow metric(const std::string& job, int64_t step, const std::string& split, double loss) {
    return MetricRow{job, step, split, loss, step * 1000, 1e-3, 0.5, 1e4, 1.0};
  }
  static std::string one(const Store& s, const std::string& sql) { return s.query(sql).at(0).at(0); }

  // Forks `processes` children that all start work(i) at the same moment (they block on a pipe
  // until the parent closes it) and returns what each failed child reported; empty when all succeeded.
  std::vector<std::string> run_at_once(int processes, const std::function<void(int)>& work) const {
    int start[2];
    if (pipe(start) != 0) return {"pipe failed"};
    std::vector<pid_t> children;
    for (int i = 0; i < processes; ++i) {
      pid_t pid = fork();
      if (pid == 0) {
        close(start[1]);
        char byte;
        while (read(start[0], &byte, 1) > 0) {
        }
        try {
          work(i);
          _exit(0);
        } catch (const std::exception& e) {
          std::ofstream(dir_ / ("failure_" + std::to_string(i))) << e.what();
          _exit(1);
        }
      }
      children.push_back(pid);
    }
    close(start[0]);
    close(start[1]);  // every child sees end-of-file now and starts
    std::vector<std::string> failures;
    for (int i = 0; i < processes; ++i) {
      int status = 0;
      waitpid(children[i], &status, 0);
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        failures.push_back("process " + std::to_string(i) + ": " + read_file(dir_ / ("failure_" + std::to_string(i))));
    }
    return failures;
  }

  fs::path dir_;
};

std::string message_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const StoreError& e) {
    return e.what();
  }
  return "<no StoreError>";
}

// The message of the QueryRefused that fn throws, or why it threw none.
std::string refusal_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const QueryRefused& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<not a QueryRefused: ") + e.what() + ">";
  }
  return "<no QueryRefused>";
}

constexpr std::chrono::milliseconds kQueryLimit{10000};

TEST_F(StoreTest, FreshFileIsMigratedToTheNewestSchemaInWalMode) {
  const std::string nested = (dir_ / "runs" / "deeper" / "moelab.db").string();
  Store s(nested);
  EXPECT_EQ(s.user_version(), Store::schema_version());
  EXPECT_EQ(raw_value(nested, "PRAGMA user_version"), std::to_string(Store::schema_version()));
  EXPECT_EQ(raw_value(nested, "PRAGMA journal_mode"), "wal");
  EXPECT_EQ(one(s, "PRAGMA foreign_keys"), "1");
  EXPECT_EQ(one(s, "SELECT group_concat(name, ',') FROM (SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                   "AND name NOT LIKE 'sqlite_%' ORDER BY name)"),
            "checkpoints,evals,events,final_train_loss,job_axes,job_progress,jobs,latest_val_loss,metrics,routing_stats,"
            "sweep_jobs,sweeps");
}

TEST_F(StoreTest, ReopeningKeepsDataAndDoesNotMigrateAgain) {
  std::string schema_cookie;
  {
    Store s(path());
    add_job(s, "a");
    s.put_metric(metric("a", 1, "train", 2.0));
    schema_cookie = one(s, "PRAGMA schema_version");  // SQLite bumps it on every schema change
  }
  Store again(path());
  EXPECT_EQ(again.user_version(), Store::schema_version());
  EXPECT_EQ(one(again, "PRAGMA schema_version"), schema_cookie);
  EXPECT_EQ(one(again, "SELECT count(*) || ':' || loss FROM metrics"), "1:2.0");
}

TEST_F(StoreTest, RefusesATextFileNamingIt) {
  const std::string text = "this is not a database, just some text that is long enough to have a header";
  std::ofstream(path("text.db")) << text;
  auto message = message_of([&] { Store s(path("text.db")); });
  EXPECT_NE(message.find(path("text.db")), std::string::npos) << message;
  EXPECT_NE(message.find("not a database"), std::string::npos) << message;  // sqlite's own words
  EXPECT_EQ(read_file(path("text.db")), text);
}

TEST_F(StoreTest, RefusesAStoreFromANewerVersionWithoutTouchingIt) {
  raw_exec(path("future.db"), "PRAGMA user_version = 999");
  auto message = message_of([&] { Store s(path("future.db")); });
  EXPECT_NE(message.find("newer"), std::string::npos) << message;
  EXPECT_NE(message.find(path("future.db")), std::string::npos) << message;
  EXPECT_EQ(raw_value(path("future.db"), "PRAGMA journal_mode"), "delete");
  EXPECT_EQ(raw_value(path("future.db"), "PRAGMA user_version"), "999");
}

TEST_F(StoreTest, RefusesAnotherProgramsDatabase) {
  raw_exec(path("other.db"), "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)");
  auto message = message_of([&] { Store s(path("other.db")); });
  EXPECT_NE(message.find(path("other.db")), std::string::npos) << message;
  EXPECT_EQ(raw_value(path("other.db"), "SELECT group_concat(name) FROM sqlite_master"), "accounts");
  EXPECT_EQ(raw_value(path("other.db"), "PRAGMA journal_mode"), "delete");
}

TEST_F(StoreTest, RewritingAStepReplacesItsRow) {
  Store s(path());
  add_job(s, "a");
  s.put_metric(MetricRow{"a", 10, "train", 3.0, 1000, 1e-3, 0.9, 500, 1.0});
  s.put_metric(MetricRow{"a", 10, "train", 2.5, 2000, 2e-3, 0.4, 700, 9.0});  // the resumed run's step 10
  s.put_metric(metric("a", 10, "val", 2.7));
  EXPECT_EQ(one(s, "SELECT count(*) FROM metrics WHERE split = 'train'"), "1");
  EXPECT_EQ(s.query("SELECT loss, tokens, lr, grad_norm, tokens_per_s, wall_time FROM metrics WHERE split = 'train'"),
            (std::vector<std::vector<std::string>>{{"2.5", "2000", "0.002", "0.4", "700.0", "9.0"}}));
  s.put_routing(RoutingRow{"a", 10, 0, {0.25, 0.75}, 0.25, 1.5, 0, 2, 0, 0.1});
  s.put_routing(RoutingRow{"a", 10, 0, {0.5, 0.5}, 0, 1, 0, 2, 0, 0.2});
  EXPECT_EQ(one(s, "SELECT count(*) || ':' || expert_fraction_json || ':' || router_cosine FROM routing_stats"),
            "1:[0.5,0.5]:0.2");
  s.put_checkpoint(CheckpointRow{"a", 10, "x.pt", "aa"});
  s.put_checkpoint(CheckpointRow{"a", 10, "x.pt", "bb"});
  EXPECT_EQ(one(s, "SELECT group_concat(sha256) FROM checkpoints"), "bb");
  s.put_eval(EvalRow{"a", 10, "piqa", "acc", 0.6, 0.01, 100, "fixture:piqa"});
  s.put_eval(EvalRow{"a", 10, "piqa", "acc", 0.7, std::nullopt, 100, "fixture:piqa"});
  EXPECT_EQ(one(s, "SELECT group_concat(value || '/' || ifnull(stderr, 'null')) FROM evals"), "0.7/null");
}

TEST_F(StoreTest, RowsForUnknownJobsAreRejectedNamingTheJob) {
  Store s(path());
  add_job(s, "a");
  const std::vector<std::function<void()>> writes = {
      [&] { s.put_metric(metric("ghost", 1, "train", 1.0)); },
      [&] { s.put_routing(RoutingRow{"ghost", 1, 0, {1.0}, 0, 1, 0, 1, 0, 0}); },
      [&] { s.put_checkpoint(CheckpointRow{"ghost", 1, "x.pt", "aa"}); },
      [&] { s.put_eval(EvalRow{"ghost", 1, "piqa", "acc", 0.5, 0.1, 10, "x"}); },
      [&] { s.log_event("ghost", "info", "hello"); },
      [&] { s.set_job_status("ghost", JobStatus::running); },
  };
  for (size_t i = 0; i < writes.size(); ++i) {
    auto message = message_of(writes[i]);
    EXPECT_NE(message.find("ghost"), std::string::npos) << "write " << i << ": " << message;
  }
  EXPECT_EQ(one(s, "SELECT (SELECT count(*) FROM metrics) + (SELECT count(*) FROM routing_stats) + "
                   "(SELECT count(*) FROM checkpoints) + (SELECT count(*) FROM evals) + (SELECT count(*) FROM events)"),
            "0");
}

TEST_F(StoreTest, UpsertingAJobKeepsItsConfigAndWhatItsSweepRecorded) {
  Store s(path());
  s.upsert_job(JobRow{"a", "first", "study", R"({"seed":0})", R"({"seed":0})", 100});
  s.upsert_job(JobRow{"a", "renamed", "", R"({"seed":1})", "{}", 200});  // the job started on its own
  EXPECT_EQ(s.query("SELECT name, sweep, config_json, axes_json, total_steps FROM jobs"),
            (std::vector<std::vector<std::string>>{{"renamed", "study", R"({"seed":0})", R"({"seed":0})", "200"}}));
  s.upsert_job(JobRow{"a", "renamed", "other", "{}", R"({"seed":2})", 200});
  EXPECT_EQ(one(s, "SELECT sweep || ' ' || axes_json FROM jobs"), R"(other {"seed":2})");
  // Both studies keep the job, each with the axes it gave it: a report of either one finds it.
  EXPECT_EQ(s.query("SELECT sweep, axes_json FROM sweep_jobs WHERE job_id = 'a' ORDER BY sweep"),
            (std::vector<std::vector<std::string>>{{"other", R"({"seed":2})"}, {"study", R"({"seed":0})"}}));
}

TEST_F(StoreTest, MigratingAVersion1StoreKeepsEachJobInItsSweep) {
  raw_exec(path(), migrations().at(0).sql + "PRAGMA user_version = 1;"
                   "INSERT INTO jobs (id, name, sweep, config_json, axes_json, created_at) VALUES "
                   "('a', 'a', 'study', '{}', '{\"seed\":1}', 0), ('b', 'b', '', '{}', '{}', 0);");
  Store s(path());
  EXPECT_EQ(s.user_version(), Store::schema_version());
  EXPECT_EQ(s.query("SELECT sweep, job_id, axes_json FROM sweep_jobs"),
            (std::vector<std::vector<std::string>>{{"study", "a", R"({"seed":1})"}}));
  EXPECT_EQ(s.query("SELECT job_id, sweep, axis, value FROM job_axes"),
            (std::vector<std::vector<std::string>>{{"a", "study", "seed", "1"}}));
}

// A store written before peaks were recorded keeps its jobs; their peaks are unknown (NULL) until a
// run records one, and a later attempt only ever raises them, also through a job's own store.
TEST_F(StoreTest, PeakMemoryColumnsArriveEmptyAndOnlyRise) {
  raw_exec(path(), migrations().at(0).sql + migrations().at(1).sql + "PRAGMA user_version = 2;"
                   "INSERT INTO jobs (id, name, sweep, config_json, axes_json, created_at) VALUES ('a', 'a', '', '{}', '{}', 0);");
  Store s(path());
  EXPECT_EQ(s.user_version(), Store::schema_version());
  EXPECT_EQ(s.query("SELECT typeof(peak_resident_bytes), typeof(peak_gpu_bytes) FROM jobs"),
            (std::vector<std::vector<std::string>>{{"null", "null"}}));
  s.record_peak_memory("a", 300 << 20, 0);
  s.record_peak_memory("a", 200 << 20, 0);
  EXPECT_EQ(s.query("SELECT peak_resident_bytes, typeof(peak_gpu_bytes) FROM jobs"),
            (std::vector<std::vector<std::string>>{{std::to_string(300 << 20), "null"}}));
  {
    Store job(path("job.db"));
    add_job(job, "a", "{}");
    job.set_job_status("a", JobStatus::running);
    job.record_peak_memory("a", 500 << 20, int64_t(7) << 30);
  }
  s.merge_job_store(path("job.db"));
  EXPECT_EQ(s.query("SELECT peak_resident_bytes, peak_gpu_bytes FROM jobs"),
            (std::vector<std::vector<std::string>>{{std::to_string(500 << 20), std::to_string(int64_t(7) << 30)}}));
  EXPECT_THROW(s.record_peak_memory("nobody", 1, 1), StoreError);
}

TEST_F(StoreTest, ViewsAnswerTheObviousQuestions) {
  Store s(path());
  add_job(s, "a", R"({"model.router": "kern", "seed": 1})");
  add_job(s, "b", R"({"model.router": "softmax", "seed": 1})");
  for (int step : {100, 300, 200}) s.put_metric(metric("a", step, "val", 5.0 - step / 100.0));
  s.put_metric(metric("b", 100, "val", 4.5));
  for (int step : {250, 50}) s.put_metric(metric("a", step, "train", step / 100.0));
  EXPECT_EQ(s.query("SELECT job_id, name, step, loss FROM latest_val_loss ORDER BY job_id"),
            (std::vector<std::vector<std::string>>{{"a", "job-a", "300", "2.0"}, {"b", "job-b", "100", "4.5"}}));
  EXPECT_EQ(s.query("SELECT job_id, step, loss FROM final_train_loss"),
            (std::vector<std::vector<std::string>>{{"a", "250", "2.5"}}));
  EXPECT_EQ(s.query("SELECT job_id, axis, value FROM job_axes ORDER BY job_id, axis"),
            (std::vector<std::vector<std::string>>{
                {"a", "model.router", "kern"}, {"a", "seed", "1"}, {"b", "model.router", "softmax"}, {"b", "seed", "1"}}));
  s.set_job_status("a", JobStatus::running);
  EXPECT_EQ(s.query("SELECT job_id, name, status, step, total_steps, train_loss FROM job_progress ORDER BY job_id"),
            (std::vector<std::vector<std::string>>{{"a", "job-a", "running", "250", "100", "2.5"},
                                                   {"b", "job-b", "queued", "", "100", ""}}));
}

TEST_F(StoreTest, FailedTransactionLeavesNoPartialRows) {
  Store s(path());
  add_job(s, "a");
  EXPECT_THROW(s.transaction([&] {
    s.put_metric(metric("a", 1, "val", 1.0));
    s.put_routing(RoutingRow{"a", 1, 0, {0.5, 0.5}, 0, 1, 0, 2, 0, 0.1});
    throw std::runtime_error("crash between writes");
  }),
               std::runtime_error);
  EXPECT_THROW(s.transaction([&] {
    s.put_metric(metric("a", 2, "val", 1.0));
    s.put_metric(metric("ghost", 2, "val", 1.0));  // a write that SQLite itself refuses
  }),
               StoreError);
  EXPECT_EQ(one(s, "SELECT count(*) FROM metrics"), "0");
  EXPECT_EQ(one(s, "SELECT count(*) FROM routing_stats"), "0");
  s.transaction([&] { s.put_metric(metric("a", 3, "val", 1.0)); });  // the connection is usable afterwards
  EXPECT_EQ(one(s, "SELECT group_concat(step) FROM metrics"), "3");
}

TEST_F(StoreTest, StatusTransitionsCountAttemptsAndStampTimes) {
  Store s(path());
  add_job(s, "a");
  add_job(s, "b");
  EXPECT_EQ(s.job_status("a"), JobStatus::queued);
  EXPECT_EQ(s.job_status("nobody"), std::nullopt);
  s.set_job_status("a", JobStatus::running);
  EXPECT_EQ(one(s, "SELECT attempts || ':' || (started_at > 0) || ':' || (finished_at IS NULL) FROM jobs WHERE id = 'a'"),
            "1:1:1");
  s.set_job_status("a", JobStatus::interrupted, "", 75);
  s.set_job_status("a", JobStatus::running);
  EXPECT_EQ(one(s, "SELECT attempts || ':' || (finished_at IS NULL) FROM jobs WHERE id = 'a'"), "2:1");
  s.set_job_status("a", JobStatus::failed, "boom", 3);
  EXPECT_EQ(one(s, "SELECT status || ':' || error || ':' || exit_code || ':' || (finished_at >= started_at) || ':' || "
                   "attempts FROM jobs WHERE id = 'a'"),
            "failed:boom:3:1:2");
  s.set_job_status("b", JobStatus::running);
  s.set_job_status("b", JobStatus::done, "", 0);
  EXPECT_EQ(one(s, "SELECT status || ':' || exit_code || ':' || (finished_at >= started_at) FROM jobs WHERE id = 'b'"),
            "done:0:1");
  s.count_attempt("b");  // a retry that died before it could say it was running
  EXPECT_EQ(one(s, "SELECT attempts FROM jobs WHERE id = 'b'"), "2");
  EXPECT_EQ(s.job_status("b"), JobStatus::done);
}

TEST_F(StoreTest, QueryRefusesWritesAndNamesFailingStatements) {
  Store s(path());
  add_job(s, "a");
  EXPECT_THROW(s.query("DELETE FROM jobs"), StoreError);
  EXPECT_THROW(s.query("INSERT INTO sweeps VALUES ('x', '{}', 0)"), StoreError);
  EXPECT_THROW(s.query("SELECT 1; DELETE FROM jobs"), StoreError);
  EXPECT_EQ(one(s, "SELECT count(*) FROM jobs; -- a trailing comment is fine"), "1");
  auto message = message_of([&] { s.query("SELECT no_such_column FROM jobs"); });
  EXPECT_NE(message.find("no such column: no_such_column"), std::string::npos) << message;
  EXPECT_NE(message.find("SELECT no_such_column FROM jobs"), std::string::npos) << message;
  auto table = s.query_table("SELECT id AS job, total_steps FROM jobs");
  EXPECT_EQ(table.columns, (std::vector<std::string>{"job", "total_steps"}));
}

TEST_F(StoreTest, MergingAJobsOwnStoreIsIdempotent) {
  Store main(path());
  add_job(main, "a");
  main.set_job_executor("a", "slurm", "1234_0", "", (dir_ / "a").string());
  main.merge_job_store(path("missing.db"));  // the job has not started yet
  EXPECT_FALSE(fs::exists(path("missing.db")));
  {
    Store job(path("job.db"));
    add_job(job, "a");
    job.set_job_status("a", JobStatus::running);
    job.put_metric(metric("a", 10, "train", 3.0));
    job.put_eval(EvalRow{"a", 10, "piqa", "acc", 0.6, 0.01, 100, "fixture:piqa"});
    job.log_event("a", "info", "started on node1");
  }
  main.merge_job_store(path("job.db"));
  main.merge_job_store(path("job.db"));
  EXPECT_EQ(one(main, "SELECT (SELECT count(*) FROM metrics) || (SELECT count(*) FROM evals) || "
                      "(SELECT count(*) FROM events)"),
            "111");
  EXPECT_EQ(one(main, "SELECT status || ':' || attempts || ':' || executor_id FROM jobs"), "running:1:1234_0");
}

// `moelab db query` (read_only_query) on a real store: whatever the SQL, the file's bytes stay the same
// and no other file appears. Each refusal names what was refused.
TEST_F(StoreTest, ReadOnlyQueryRefusesEveryChangeAndLeavesTheFileAsItWas) {
  {
    Store s(path());
    add_job(s, "a");
    s.put_metric(metric("a", 100, "val", 3.0));
  }
  const std::string before = read_file(path());
  const std::string other = path("other.db"), copy = path("x.db");
  const std::vector<std::pair<std::string, std::string>> refused = {
      {"ATTACH DATABASE '" + other + "' AS other", "ATTACH '" + other + "' refused"},
      {"PRAGMA writable_schema=1", "PRAGMA writable_schema = 1 refused"},
      {"PRAGMA user_version=5", "PRAGMA user_version = 5 refused"},
      {"PRAGMA journal_mode=DELETE", "PRAGMA journal_mode = DELETE refused"},
      {"PRAGMA wal_checkpoint", "PRAGMA wal_checkpoint refused"},  // no value, but it writes
      {"PRAGMA optimize", "PRAGMA optimize refused"},
      {"INSERT INTO sweeps VALUES ('x', '{}', 0)", "INSERT sweeps refused"},
      {"UPDATE jobs SET name = 'x'", "UPDATE jobs refused"},
      {"DELETE FROM metrics", "DELETE metrics refused"},
      {"DROP TABLE metrics", "DROP TABLE metrics refused (it changes the schema)"},
      {"CREATE TABLE t (x)", "CREATE TABLE t (x) refused"},
      {"CREATE TEMP TABLE t (x)", "CREATE TEMP TABLE t (x) refused"},
      {"CREATE TEMP VIEW v AS SELECT 1", "CREATE TEMP VIEW v AS SELECT 1 refused"},
      {"CREATE TEMP TRIGGER g AFTER INSERT ON jobs BEGIN SELECT 1; END", "CREATE TEMP TRIGGER g refused"},
      {"ALTER TABLE jobs ADD COLUMN x", "ALTER TABLE"},
      {"VACUUM INTO '" + copy + "'", "read-only: VACUUM INTO '/"},  // the statement, cut at 60 characters
      {"VACUUM", "VACUUM refused (it writes)"},
      {"REINDEX", "REINDEX"},
      {"ANALYZE", "ANALYZE refused"},
      {"BEGIN IMMEDIATE", "a transaction refused"},
      {"SELECT * FROM temp.sqlite_master", "reading temp.sqlite_temp_master refused"},
  };
  for (auto& [sql, expected] : refused) {
    auto message = refusal_of([&] { read_only_query(path(), sql, kQueryLimit); });
    EXPECT_NE(message.find("db query is read-only: "), std::string::npos) << sql << ": " << message;
    EXPECT_NE(message.find(expected), std::string::npos) << sql << ": " << message;
  }
  // The schema table is allowed to SQLite's own table-valued pragmas, not to the user.
  auto message = message_of([&] { read_only_query(path(), "UPDATE sqlite_master SET sql = ''", kQueryLimit); });
  EXPECT_NE(message.find("may not be modified"), std::string::npos) << message;
  EXPECT_TRUE(read_file(path()) == before) << "the store's bytes changed";
  EXPECT_FALSE(fs::exists(other));
  EXPECT_FALSE(fs::exists(copy));
  Store s(path());
  EXPECT_EQ(one(s, "SELECT count(*) || ':' || min(name) FROM jobs"), "1:job-a");
  EXPECT_EQ(s.user_version(), Store::schema_version());
}

TEST_F(StoreTest, ReadOnlyQueryReadsTablesViewsAndSchemaPragmas) {
  {
    Store s(path());
    add_job(s, "a");
    s.put_metric(metric("a", 100, "val", 3.0));
    s.put_metric(metric("a", 200, "val", 2.5));
    s.put_metric(metric("a", 200, "train", 2.0));
  }
  auto rows = [&](const std::string& sql) { return read_only_query(path(), sql, kQueryLimit).rows; };
  using Rows = std::vector<std::vector<std::string>>;
  EXPECT_EQ(rows("SELECT job_id, step, loss FROM latest_val_loss"), (Rows{{"a", "200", "2.5"}}));
  EXPECT_EQ(rows("SELECT job_id, status, step, train_loss FROM job_progress"), (Rows{{"a", "queued", "200", "2.0"}}));
  EXPECT_EQ(rows("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5) SELECT sum(i) FROM n"), (Rows{{"15"}}));
  EXPECT_EQ(rows("PRAGMA user_version"), (Rows{{std::to_string(Store::schema_version())}}));
  EXPECT_EQ(rows("PRAGMA table_info(sweeps)").size(), 3u);
  EXPECT_EQ(rows("SELECT name FROM pragma_table_info('sweeps') ORDER BY cid").at(0), (std::vector<std::string>{"name"}));
  EXPECT_EQ(read_only_query(path(), "SELECT id AS job FROM jobs", kQueryLimit).columns, (std::vector<std::string>{"job"}));
  auto message = message_of([&] { read_only_query(path(), "SELECT no_such_column FROM jobs", kQueryLimit); });
  EXPECT_NE(message.find("no such column: no_such_column"), std::string::npos) << message;
}

TEST_F(StoreTest, ReadOnlyQueryStopsAQueryWithoutEndAtItsTimeLimit) {
  { Store s(path()); }
  const auto start = std::chrono::steady_clock::now();
  auto message = message_of([&] {
    read_only_query(path(), "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n",
                    std::chrono::milliseconds(300));
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_NE(message.find("time limit of 0.3 s"), std::string::npos) << message;
  EXPECT_GE(seconds, 0.3);
  EXPECT_LT(seconds, 2.0);
}

// A read-only connection to a WAL store reads the last commit while a writer holds the write lock
// with rows not yet committed.
TEST_F(StoreTest, ReadOnlyQueryReadsWhileAWriterHoldsTheStore) {
  Store s(path());
  add_job(s, "a");
  s.put_metric(metric("a", 1, "val", 1.0));
  s.transaction([&] {
    s.put_metric(metric("a", 2, "val", 1.0));
    EXPECT_EQ(read_only_query(path(), "SELECT count(*) FROM metrics", kQueryLimit).rows, (std::vector<std::vector<std::string>>{{"1"}}));
  });
  EXPECT_EQ(read_only_query(path(), "SELECT count(*) FROM metrics", kQueryLimit).rows, (std::vector<std::vector<std::string>>{{"2"}}));
}

// The CLI: a refusal is one line naming what was refused, and exit code 2.
TEST_F(StoreTest, DbQueryCommandRefusesWithExitCode2) {
  ASSERT_TRUE(fs::exists(MOELAB_BIN)) << "build the moelab target: this test runs " MOELAB_BIN;
  { Store s(path()); }
  auto r = moelab::testing::run_moelab("db query \"ATTACH DATABASE '" + path("other.db") + "' AS other\" --db " + path());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_EQ(r.output, "error: db query is read-only: ATTACH '" + path("other.db") + "' refused\n");
  EXPECT_FALSE(fs::exists(path("other.db")));
  r = moelab::testing::run_moelab("db query \"SELECT count(*) AS n FROM jobs\" --db " + path());
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output, "n\n0\n");
}

// 8 processes write 500 rows each into one file, in small transactions, all starting at once.
TEST_F(StoreTest, ConcurrentWritersLoseAndDuplicateNothing) {
  const int writers = 8, rows = 500, per_transaction = 10;
  {
    Store s(path());
    for (int w = 0; w < writers; ++w) add_job(s, writer_job(w));
  }
  auto failures = run_at_once(writers, [&](int w) {
    Store s(path());
    for (int i = 0; i < rows; i += per_transaction)
      s.transaction([&] {
        for (int step = i; step < i + per_transaction; ++step) s.put_metric(metric(writer_job(w), step, "train", step));
      });
  });
  EXPECT_EQ(failures, std::vector<std::string>{});  // a "database is locked" would show here
  Store s(path());
  EXPECT_EQ(one(s, "SELECT count(*) FROM metrics"), std::to_string(writers * rows));
  EXPECT_EQ(one(s, "SELECT count(*) FROM (SELECT DISTINCT job_id, step FROM metrics)"), std::to_string(writers * rows));
  EXPECT_EQ(one(s, "SELECT count(*) FROM (SELECT job_id FROM metrics GROUP BY job_id "
                   "HAVING count(*) = 500 AND min(step) = 0 AND max(step) = 499)"),
            std::to_string(writers));
}

// The runner and its first jobs may all open a store that does not exist yet.
TEST_F(StoreTest, ConcurrentOpenersOfANewFileMigrateItOnce) {
  const int openers = 8;
  auto failures = run_at_once(openers, [&](int w) {
    Store s(path());
    add_job(s, writer_job(w));
    s.put_metric(metric(writer_job(w), 1, "train", 1.0));
  });
  EXPECT_EQ(failures, std::vector<std::string>{});
  Store s(path());
  EXPECT_EQ(s.user_version(), Store::schema_version());
  EXPECT_EQ(one(s, "SELECT count(*) FROM metrics"), std::to_string(openers));
}

// Not a speed assertion (DESIGN.md: speed is shown by benchmarks); prints the rate for the record.
TEST_F(StoreTest, HundredThousandUpsertsInOneTransaction) {
  const int rows = 100000;
  Store s(path());
  add_job(s, "a");
  const auto start = std::chrono::steady_clock::now();
  s.transaction([&] {
    for (int step = 0; step < rows; ++step) s.put_metric(metric("a", step, "train", 1.0));
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("metric upserts: %d rows in one transaction in %.3f s = %.0f rows/s\n", rows, seconds, rows / seconds);
  RecordProperty("metric_upserts_per_s", std::to_string(int64_t(rows / seconds)));
  EXPECT_EQ(one(s, "SELECT count(*) FROM metrics"), std::to_string(rows));
}

}  // namespace

// ---- typed reads: what the runners, `sweep status`, eval and reports read, with bound parameters

TEST(JobStatusText, EveryStatusHasOneNameAndUnknownTextIsNamed) {
  const std::vector<std::pair<JobStatus, std::string>> names = {
      {JobStatus::queued, "queued"}, {JobStatus::running, "running"},         {JobStatus::done, "done"},
      {JobStatus::failed, "failed"}, {JobStatus::interrupted, "interrupted"}, {JobStatus::cancelled, "cancelled"}};
  for (auto& [status, name] : names) {
    EXPECT_EQ(to_string(status), name);
    EXPECT_EQ(parse_job_status(name), status);
    EXPECT_EQ(is_terminal(status), name != "queued" && name != "running") << name;
    EXPECT_EQ(is_queued_or_running(status), !is_terminal(status)) << name;
  }
  try {
    parse_job_status("finished");
    ADD_FAILURE() << "'finished' parsed";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'finished'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("queued, running, done, failed, interrupted, cancelled"), std::string::npos) << e.what();
  }
  EXPECT_EQ(status_summary({{JobStatus::done, 2}, {JobStatus::failed, 1}}), "2 done, 1 failed");
  EXPECT_EQ(status_summary({}), "");
}

TEST(JobStatusText, EvaluationStatusRoundTripsTheStoredText) {
  using Stage = EvalStatus::Stage;
  const std::vector<std::pair<std::string, EvalStatus>> forms = {
      {"", {Stage::none, ""}},
      {"running", {Stage::running, ""}},
      {"done: 6 tasks at step 30", {Stage::done, "6 tasks at step 30"}},
      {"failed: exit code 3 (see x/eval.log)", {Stage::failed, "exit code 3 (see x/eval.log)"}}};
  for (auto& [text, status] : forms) {
    EXPECT_EQ(EvalStatus::parse(text), status) << text;
    EXPECT_EQ(status.text(), text);
  }
  EXPECT_EQ(EvalStatus::parse("done").stage, Stage::done);
  EXPECT_THROW(EvalStatus::parse("donezo"), std::invalid_argument);
  EXPECT_THROW(EvalStatus::parse("paused"), std::invalid_argument);
}

TEST_F(StoreTest, JobStateAndSweepJobsReadBackWhatWasWritten) {
  Store s(path());
  // A quote in a sweep name is a value like any other: parameters are bound, not pasted.
  s.upsert_job(JobRow{"b", "job-b", "it's", R"({"seed":2})", R"({"seed":2})", 50});
  s.upsert_job(JobRow{"a", "job-a", "it's", R"({"seed":1})", R"({"seed":1})", 100});
  s.upsert_job(JobRow{"a", "job-a", "other", R"({"seed":1})", R"({"lr":3})", 100});  // a shares both sweeps
  s.upsert_job(JobRow{"c", "job-c", "", "{}", "{}", 10});                              // in no sweep
  s.set_job_executor("a", kSlurmExecutor, "77_1", "node1", "/runs/a");
  s.set_job_status("a", JobStatus::running);
  s.set_job_status("a", JobStatus::done, "", 0);
  s.set_eval_status("a", EvalStatus{EvalStatus::Stage::done, "6 tasks at step 100"});
  s.set_job_status("b", JobStatus::running);
  s.set_job_status("b", JobStatus::failed, "loss became NaN", 3);

  const JobState a = s.job_state("a").value();
  EXPECT_EQ(a.status, JobStatus::done);
  EXPECT_EQ(a.attempts, 1);
  EXPECT_EQ(a.executor, "slurm");
  EXPECT_EQ(a.executor_id, "77_1");
  EXPECT_EQ(a.host, "node1");
  EXPECT_EQ(a.run_dir, "/runs/a");
  EXPECT_EQ(a.eval, (EvalStatus{EvalStatus::Stage::done, "6 tasks at step 100"}));
  EXPECT_EQ(one(s, "SELECT eval_status FROM jobs WHERE id = 'a'"), "done: 6 tasks at step 100");
  EXPECT_EQ(s.job_state("nobody"), std::nullopt);

  auto jobs = s.sweep_jobs("it's");
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_EQ(jobs[0].job.id, "a");  // ordered by id
  EXPECT_EQ(jobs[0].job.axes_json, R"({"seed":1})");  // this sweep's axes, not the other's
  EXPECT_EQ(jobs[0].job.sweep, "it's");
  EXPECT_EQ(jobs[0].job.config_json, R"({"seed":1})");
  EXPECT_EQ(jobs[0].job.total_steps, 100);
  EXPECT_EQ(jobs[1].job.id, "b");
  EXPECT_EQ(jobs[1].job.name, "job-b");
  EXPECT_EQ(jobs[1].state.status, JobStatus::failed);
  EXPECT_EQ(jobs[1].state.error, "loss became NaN");
  EXPECT_EQ(jobs[1].state.executor, "");
  EXPECT_EQ(s.sweep_jobs("other").at(0).job.axes_json, R"({"lr":3})");
  EXPECT_TRUE(s.sweep_jobs("it").empty());
  EXPECT_EQ(s.sweep_names(), (std::vector<std::string>{"it's", "other"}));
  EXPECT_EQ(s.sweep_run_dirs("it's"), (std::vector<std::string>{"/runs/a"}));
}

TEST_F(StoreTest, StatusCountsAreOfTheSweepOrOfEveryJobInNameOrder) {
  Store s(path());
  for (auto id : {"a", "b", "c", "d"}) add_job(s, id);  // sweep "sweep"
  s.upsert_job(JobRow{"e", "job-e", "", "{}", "{}", 10});
  s.set_job_status("a", JobStatus::running);
  s.set_job_status("b", JobStatus::running);
  s.set_job_status("b", JobStatus::done);
  s.set_job_status("c", JobStatus::cancelled);
  s.set_job_status("e", JobStatus::running);
  auto as_text = [](const std::vector<StatusCount>& counts) { return status_summary(counts); };
  EXPECT_EQ(as_text(s.status_counts("sweep")), "1 cancelled, 1 done, 1 queued, 1 running");
  EXPECT_EQ(as_text(s.status_counts("")), "1 cancelled, 1 done, 1 queued, 2 running");
  EXPECT_TRUE(s.status_counts("no such sweep").empty());
  auto counts = s.status_counts("sweep");
  EXPECT_EQ(counts.at(3).status, JobStatus::running);
  EXPECT_EQ(counts.at(3).jobs, 1);
}

TEST_F(StoreTest, AStatusNoMoelabWritesIsAnErrorNamingStoreAndJob) {
  {
    Store s(path());
    add_job(s, "a");
  }
  raw_exec(path(), "UPDATE jobs SET status = 'finished' WHERE id = 'a'");
  Store s(path());
  auto message = message_of([&] { s.job_state("a"); });
  EXPECT_NE(message.find(path()), std::string::npos) << message;
  EXPECT_NE(message.find("job a"), std::string::npos) << message;
  EXPECT_NE(message.find("'finished'"), std::string::npos) << message;
  EXPECT_NE(message_of([&] { s.status_counts("sweep"); }).find("'finished'"), std::string::npos);
}

TEST_F(StoreTest, CheckpointsOfAJobComeOldestFirst) {
  Store s(path());
  add_job(s, "a");
  add_job(s, "b");
  for (int step : {20, 10, 30}) s.put_checkpoint(CheckpointRow{"a", step, "a/" + std::to_string(step) + ".pt", "h" + std::to_string(step)});
  s.put_checkpoint(CheckpointRow{"b", 5, "b/5.pt", "x"});
  auto checkpoints = s.checkpoints("a");
  ASSERT_EQ(checkpoints.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    const int step = 10 * int(i + 1);
    EXPECT_EQ(checkpoints[i].job_id, "a");
    EXPECT_EQ(checkpoints[i].step, step);
    EXPECT_EQ(checkpoints[i].path, "a/" + std::to_string(step) + ".pt");
    EXPECT_EQ(checkpoints[i].sha256, "h" + std::to_string(step));
  }
  EXPECT_TRUE(s.checkpoints("a' OR '1'='1").empty());
}

TEST_F(StoreTest, SweepMeasurementsAreTheSweepsOwnOnly) {
  Store s(path());
  add_job(s, "a");
  s.upsert_job(JobRow{"z", "job-z", "elsewhere", "{}", "{}", 10});
  s.put_metric(metric("a", 20, "val", 2.5));
  s.put_metric(metric("a", 10, "val", 3.5));
  s.put_metric(metric("a", 10, "train", 9.0));
  s.put_metric(metric("z", 10, "val", 1.0));
  auto val = s.sweep_metrics("sweep", "val");
  ASSERT_EQ(val.size(), 2u);
  EXPECT_EQ(val[0].step, 10);
  EXPECT_DOUBLE_EQ(val[0].loss, 3.5);
  EXPECT_EQ(val[0].tokens, 10000);
  EXPECT_EQ(val[0].split, "val");
  EXPECT_EQ(val[1].step, 20);
  EXPECT_DOUBLE_EQ(val[1].loss, 2.5);

  s.put_eval(EvalRow{"a", 20, "piqa", "acc", 0.7, std::nullopt, 90, "fixture:piqa"});
  s.put_eval(EvalRow{"a", 10, "piqa", "acc", 0.6, 0.01, 100, "hf:piqa"});
  s.put_eval(EvalRow{"z", 10, "piqa", "acc", 0.1, 0.01, 100, "hf:piqa"});
  auto evals = s.sweep_evals("sweep");
  ASSERT_EQ(evals.size(), 2u);
  EXPECT_EQ(evals[0].step, 10);  // oldest first
  EXPECT_DOUBLE_EQ(evals[0].value, 0.6);
  EXPECT_EQ(evals[0].stderr_value, 0.01);
  EXPECT_EQ(evals[0].samples, 100);
  EXPECT_EQ(evals[0].source, "hf:piqa");
  EXPECT_EQ(evals[1].stderr_value, std::nullopt);  // NULL stays none, not 0
  EXPECT_EQ(evals[1].task, "piqa");
  EXPECT_EQ(evals[1].metric, "acc");

  // Step 10 is older; step 20's two layers are averaged.
  s.put_routing(RoutingRow{"a", 10, 0, {1.0}, 9, 9, 9, 9, 9, 9});
  s.put_routing(RoutingRow{"a", 20, 0, {0.5, 0.5}, 0.2, 1.0, 0, 2.0, 0.1, 0.3});
  s.put_routing(RoutingRow{"a", 20, 1, {0.5, 0.5}, 0.4, 2.0, 1, 1.0, 0.3, 0.5});
  s.put_routing(RoutingRow{"z", 20, 0, {1.0}, 5, 5, 5, 5, 5, 5});
  auto routing = s.sweep_routing_means("sweep");
  ASSERT_EQ(routing.size(), 1u);
  EXPECT_EQ(routing[0].job_id, "a");
  EXPECT_EQ(routing[0].step, 20);
  EXPECT_DOUBLE_EQ(routing[0].load_std, 0.3);
  EXPECT_DOUBLE_EQ(routing[0].load_max_over_mean, 1.5);
  EXPECT_DOUBLE_EQ(routing[0].dead_experts, 0.5);
  EXPECT_DOUBLE_EQ(routing[0].positive_gates, 1.5);
  EXPECT_DOUBLE_EQ(routing[0].fewer_than_k, 0.2);
  EXPECT_DOUBLE_EQ(routing[0].router_cosine, 0.4);
}

TEST_F(StoreTest, JobProgressShowsStepLossesEtaAndPeaks) {
  Store s(path());
  const std::string config = R"({"model":{"seq_len":8},"train":{"batch_size":4}})";
  s.upsert_job(JobRow{"r", "b-running", "sweep", config, R"({"seed":1})", 100});
  s.upsert_job(JobRow{"q", "a-queued", "sweep", config, "{}", 100});
  s.upsert_job(JobRow{"x", "c-elsewhere", "", config, "{}", 100});
  s.set_job_status("r", JobStatus::running);
  s.set_job_executor("r", kLocalExecutor, "4242", "host", "/runs/r");
  s.record_peak_memory("r", int64_t(3) << 20, int64_t(3) << 29);
  s.put_metric(MetricRow{"r", 40, "train", 2.0, 0, 1e-3, 0.5, 500, 1.0});
  s.put_metric(MetricRow{"r", 50, "train", 1.5, 0, 1e-3, 0.5, 1000, 2.0});
  s.put_metric(MetricRow{"r", 50, "val", 1.75, 0, 1e-3, 0, 0, 2.0});
  auto progress = s.job_progress("sweep");
  ASSERT_EQ(progress.size(), 2u);
  const JobProgress& q = progress[0];  // ordered by name
  EXPECT_EQ(q.id, "q");
  EXPECT_EQ(q.status, JobStatus::queued);
  EXPECT_EQ(q.step, 0);
  EXPECT_EQ(q.train_loss, std::nullopt);
  EXPECT_EQ(q.val_loss, std::nullopt);
  EXPECT_EQ(q.eta_seconds, std::nullopt);
  EXPECT_EQ(q.peak_resident_bytes, std::nullopt);
  const JobProgress& r = progress[1];
  EXPECT_EQ(r.id, "r");
  EXPECT_EQ(r.name, "b-running");
  EXPECT_EQ(r.status, JobStatus::running);
  EXPECT_EQ(r.step, 50);
  EXPECT_EQ(r.total_steps, 100);
  EXPECT_EQ(r.train_loss, 1.5);
  EXPECT_EQ(r.val_loss, 1.75);
  ASSERT_TRUE(r.eta_seconds);
  EXPECT_DOUBLE_EQ(*r.eta_seconds, 50 * 4 * 8 / 1000.0);  // steps left x tokens per step / tokens per s
  EXPECT_EQ(r.peak_resident_bytes, int64_t(3) << 20);
  EXPECT_EQ(r.peak_gpu_bytes, int64_t(3) << 29);
  EXPECT_EQ(r.executor_id, "4242");
  EXPECT_EQ(r.attempts, 1);
  EXPECT_EQ(r.axes_json, R"({"seed":1})");
  EXPECT_EQ(s.job_progress("").size(), 3u);
  s.set_job_status("r", JobStatus::interrupted);
  EXPECT_EQ(s.job_progress("sweep")[1].eta_seconds, std::nullopt);  // only a running job has an ETA
}

// SQL lives in db/; only `moelab db query` passes a user's statement through. A statement anywhere
// else in moelab's own code and scripts (C++, Python, shell) fails this test, naming file and line.
TEST(SqlPlace, NoSqlOutsideDb) {
  const fs::path root = MOELAB_SOURCE_DIR;
  const std::regex sql(R"((SELECT\s+[\w*(]|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|PRAGMA\s+\w|ATTACH\s+DATABASE|CREATE\s+(TABLE|VIEW|INDEX)))");
  std::vector<std::string> found;
  for (auto folder : {"runner", "engine", "eval", "reports", "scripts", "bench"}) {
    for (auto& entry : fs::recursive_directory_iterator(root / folder)) {
      const auto ext = entry.path().extension();
      if (ext != ".cpp" && ext != ".hpp" && ext != ".py" && ext != ".sh") continue;
      std::ifstream in(entry.path());
      int number = 0;
      for (std::string line; std::getline(in, line);) {
        ++number;
        const bool through_db_query = line.find("db query") != std::string::npos;
        if (std::regex_search(line, sql) && !through_db_query) found.push_back(fs::relative(entry.path(), root).string() + ":" + std::to_string(number) + ": " + line);
      }
    }
  }
  std::string listing;
  for (auto& f : found) listing += f + "\n";
  EXPECT_TRUE(found.empty()) << listing;
  // The check itself finds what it looks for.
  EXPECT_TRUE(std::regex_search(std::string(R"(store.query("SELECT id FROM jobs"))"), sql));
}
