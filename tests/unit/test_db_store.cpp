// The SQLite store on real files: migrations, upserts that never duplicate, views, transactions and
// many processes writing one file at once.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "db/store.hpp"

namespace fs = std::filesystem;
using namespace moelab;

namespace {

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
  static std::string one(Store& s, const std::string& sql) { return s.query(sql).at(0).at(0); }

  fs::path dir_;
};

TEST_F(StoreTest, FreshFileIsMigratedToTheNewestSchemaInWalMode) {
  Store s(path());
  EXPECT_EQ(s.user_version(), Store::schema_version());
  sqlite3* raw = nullptr;  // PRAGMA journal_mode counts as a write, so Store::query refuses it
  sqlite3_open(path().c_str(), &raw);
  sqlite3_stmt* stmt = nullptr;
  sqlite3_prepare_v2(raw, "PRAGMA journal_mode", -1, &stmt, nullptr);
  ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0)), "wal");
  sqlite3_finalize(stmt);
  sqlite3_close(raw);
  EXPECT_EQ(one(s, "SELECT count(*) FROM sqlite_master WHERE name IN "
                   "('jobs','metrics','routing_stats','checkpoints','evals','events','sweeps')"),
            "7");
}

TEST_F(StoreTest, ReopeningKeepsDataAndDoesNotMigrateAgain) {
  {
    Store s(path());
    add_job(s, "a");
    s.put_metric(metric("a", 1, "train", 2.0));
  }
  Store again(path());
  EXPECT_EQ(again.user_version(), Store::schema_version());
  EXPECT_EQ(one(again, "SELECT count(*) FROM metrics"), "1");
}

TEST_F(StoreTest, RefusesFilesThatAreNotItsStores) {
  std::ofstream(path("text.db")) << "this is not a database, just some text that is long enough to have a header";
  try {
    Store s(path("text.db"));
    FAIL() << "opened a text file";
  } catch (const StoreError& e) {
    EXPECT_NE(std::string(e.what()).find(path("text.db")), std::string::npos) << e.what();
  }
  sqlite3* raw = nullptr;
  sqlite3_open(path("future.db").c_str(), &raw);
  sqlite3_exec(raw, "PRAGMA user_version = 999", nullptr, nullptr, nullptr);
  sqlite3_close(raw);
  try {
    Store s(path("future.db"));
    FAIL() << "opened a store from the future";
  } catch (const StoreError& e) {
    EXPECT_NE(std::string(e.what()).find("newer"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path("future.db")), std::string::npos) << e.what();
  }
}

TEST_F(StoreTest, RewritingAStepReplacesItsRow) {
  Store s(path());
  add_job(s, "a");
  s.put_metric(metric("a", 10, "train", 3.0));
  s.put_metric(metric("a", 10, "train", 2.5));
  s.put_metric(metric("a", 10, "val", 2.7));
  EXPECT_EQ(one(s, "SELECT count(*) FROM metrics WHERE split = 'train'"), "1");
  EXPECT_EQ(one(s, "SELECT loss FROM metrics WHERE split = 'train'"), "2.5");
  s.put_checkpoint(CheckpointRow{"a", 10, "x.pt", "aa"});
  s.put_checkpoint(CheckpointRow{"a", 10, "x.pt", "bb"});
  EXPECT_EQ(one(s, "SELECT group_concat(sha256) FROM checkpoints"), "bb");
  s.put_eval(EvalRow{"a", 10, "piqa", "acc", 0.6, 0.01, 100, "fixture:piqa"});
  s.put_eval(EvalRow{"a", 10, "piqa", "acc", 0.7, std::nullopt, 100, "fixture:piqa"});
  EXPECT_EQ(one(s, "SELECT value || '/' || ifnull(stderr, 'null') FROM evals"), "0.7/null");
}

TEST_F(StoreTest, RowsForUnknownJobsAreRejectedNamingTheJob) {
  Store s(path());
  try {
    s.put_metric(metric("ghost", 1, "train", 1.0));
    FAIL();
  } catch (const StoreError& e) {
    EXPECT_NE(std::string(e.what()).find("ghost"), std::string::npos);
  }
  EXPECT_THROW(s.set_job_status("ghost", "running"), StoreError);
}

TEST_F(StoreTest, ViewsAnswerTheObviousQuestions) {
  Store s(path());
  add_job(s, "a", R"({"model.router": "kern", "seed": 1})");
  add_job(s, "b", R"({"model.router": "softmax", "seed": 1})");
  for (int step : {100, 300, 200}) s.put_metric(metric("a", step, "val", 5.0 - step / 100.0));
  s.put_metric(metric("b", 100, "val", 4.5));
  s.put_metric(metric("a", 250, "train", 1.5));
  auto latest = s.query("SELECT job_id, step, loss FROM latest_val_loss ORDER BY job_id");
  ASSERT_EQ(latest.size(), 2u);
  EXPECT_EQ(latest[0], (std::vector<std::string>{"a", "300", "2.0"}));
  EXPECT_EQ(latest[1], (std::vector<std::string>{"b", "100", "4.5"}));
  EXPECT_EQ(one(s, "SELECT value FROM job_axes WHERE job_id = 'b' AND axis = 'model.router'"), "softmax");
  EXPECT_EQ(one(s, "SELECT count(*) FROM job_axes"), "4");
  EXPECT_EQ(one(s, "SELECT step || ':' || train_loss FROM job_progress WHERE job_id = 'a'"), "250:1.5");
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
  EXPECT_EQ(one(s, "SELECT count(*) FROM metrics"), "0");
  EXPECT_EQ(one(s, "SELECT count(*) FROM routing_stats"), "0");
}

TEST_F(StoreTest, StatusTransitionsCountAttemptsAndStampTimes) {
  Store s(path());
  add_job(s, "a");
  EXPECT_EQ(s.job_status("a"), "queued");
  s.set_job_status("a", "running");
  s.set_job_status("a", "interrupted", "", 75);
  s.set_job_status("a", "running");
  EXPECT_EQ(one(s, "SELECT attempts || ':' || (finished_at IS NULL) FROM jobs"), "2:1");
  s.set_job_status("a", "failed", "boom", 3);
  EXPECT_EQ(one(s, "SELECT status || ':' || error || ':' || exit_code || ':' || (finished_at >= started_at) FROM jobs"),
            "failed:boom:3:1");
}

TEST_F(StoreTest, QueryRefusesWrites) {
  Store s(path());
  EXPECT_THROW(s.query("DELETE FROM jobs"), StoreError);
}

// 8 processes write 500 rows each into one file, in small transactions, at the same time.
TEST_F(StoreTest, ConcurrentWritersLoseAndDuplicateNothing) {
  const int writers = 8, rows = 500;
  {
    Store s(path());
    for (int w = 0; w < writers; ++w) add_job(s, "w" + std::to_string(w));
  }
  std::vector<pid_t> children;
  for (int w = 0; w < writers; ++w) {
    pid_t pid = fork();
    if (pid == 0) {
      try {
        Store s(path());
        for (int i = 0; i < rows; i += 10)
          s.transaction([&] {
            for (int j = i; j < i + 10; ++j) s.put_metric(metric("w" + std::to_string(w), j, "train", j));
          });
        _exit(0);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "writer %d: %s\n", w, e.what());
        _exit(1);
      }
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "a writer failed";
  }
  Store s(path());
  EXPECT_EQ(one(s, "SELECT count(*) FROM metrics"), std::to_string(writers * rows));
  EXPECT_EQ(one(s, "SELECT count(*) FROM (SELECT DISTINCT job_id, step FROM metrics)"), std::to_string(writers * rows));
}

}  // namespace
