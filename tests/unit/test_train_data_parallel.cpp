// Data-parallel `moelab train`: two real processes joined by a real TCPStore and Gloo on localhost
// against one process with the same global batch, through the real binary and SQLite store.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include "db/store.hpp"
#include "engine/train/trainer.hpp"
#include "run_moelab.hpp"
#include "tiny_job.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// One rank's process: its exit code and what it printed.
struct RankResult {
  int code;
  std::string output;
};

class TrainDataParallel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("moelab_train_dp_" + std::to_string(getpid()));
    auto r = moelab::testing::prepare_corpus_slice(root_, 400000);
    ASSERT_EQ(r.code, 0) << r.output;
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  // A tiny KERN model: 8 sequences per step in micro-batches of 2, so each of two ranks accumulates
  // two micro-batches; 3 validation batches do not split evenly over 2 ranks.
  static json tiny_config() {
    return moelab::testing::tiny_kern_job(
        root_ / "data", "tiny-dp", 3,
        {{"steps", 8}, {"batch_size", 8}, {"micro_batch", 2}, {"lr", 3e-3}, {"warmup", 2}, {"min_lr", 3e-4},
         {"log_every", 1}, {"eval_every", 4}, {"eval_batches", 3}, {"checkpoint_every", 4}, {"precision", "fp32"},
         {"device", "cpu"}, {"threads", 1}});
  }

  static std::string write_config(const json& config, const std::string& name) {
    auto path = root_ / (name + ".json");
    std::ofstream(path) << config.dump(2);
    return path.string();
  }

  // `moelab train` as `world` processes with the launch contract's variables; waits for all.
  // Small buckets (4 KiB) make the all-reduce run as many buckets, launched from the hooks.
  static std::vector<RankResult> train(const std::string& config, const std::string& tag, int world,
                                       const std::vector<std::string>& extra = {}) {
    static int next_port = 20000 + getpid() % 20000;
    const std::string port = std::to_string(next_port++);
    std::vector<pid_t> pids;
    for (int rank = 0; rank < world; ++rank) {
      const std::string log = (root_ / (tag + ".rank" + std::to_string(rank) + ".log")).string();
      pid_t pid = fork();
      if (pid == 0) {
        setenv("MOELAB_RANK", std::to_string(rank).c_str(), 1);
        setenv("MOELAB_WORLD_SIZE", std::to_string(world).c_str(), 1);
        setenv("MASTER_ADDR", "127.0.0.1", 1);
        setenv("MASTER_PORT", port.c_str(), 1);
        setenv("MOELAB_BUCKET_KB", "4", 1);
        setenv("MOELAB_DIST_TIMEOUT", "120", 1);
        freopen(log.c_str(), "w", stdout);
        dup2(fileno(stdout), STDERR_FILENO);
        std::vector<std::string> args = {MOELAB_BIN, "train", "--quiet", "--config", config, "--db",
                                         (root_ / (tag + ".db")).string(), "--run-dir", (root_ / tag).string()};
        args.insert(args.end(), extra.begin(), extra.end());
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        execv(MOELAB_BIN, argv.data());
        _exit(127);
      }
      pids.push_back(pid);
    }
    std::vector<RankResult> results;
    for (int rank = 0; rank < world; ++rank) {
      int status = 0;
      waitpid(pids[rank], &status, 0);
      std::ifstream log(root_ / (tag + ".rank" + std::to_string(rank) + ".log"));
      results.push_back({WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status),
                         std::string(std::istreambuf_iterator<char>(log), {})});
    }
    return results;
  }

  // step -> column of the metrics rows of one split.
  static std::map<int64_t, double> column(const std::string& tag, const std::string& split, const std::string& name) {
    moelab::Store store((root_ / (tag + ".db")).string());
    std::map<int64_t, double> out;
    for (auto& row : store.query("SELECT step, printf('%.17g', " + name + ") FROM metrics WHERE split = '" + split + "'"))
      out[std::stoll(row[0])] = std::stod(row[1]);
    return out;
  }

  static int64_t count(const std::string& tag, const std::string& sql) {
    moelab::Store store((root_ / (tag + ".db")).string());
    return std::stoll(store.query(sql)[0][0]);
  }

  // Equal step by step within fp32 rounding of a differently ordered sum.
  static void expect_close(const std::map<int64_t, double>& actual, const std::map<int64_t, double>& expected,
                           const std::string& what) {
    ASSERT_EQ(actual.size(), expected.size()) << what;
    for (auto& [step, value] : expected) {
      ASSERT_TRUE(actual.count(step)) << what << " step " << step;
      EXPECT_NEAR(actual.at(step), value, 1e-5 * std::abs(value)) << what << " at step " << step;
    }
  }

  static inline fs::path root_;
};

void expect_all_succeeded(const std::vector<RankResult>& ranks, int code = 0) {
  for (size_t r = 0; r < ranks.size(); ++r) EXPECT_EQ(ranks[r].code, code) << "rank " << r << ":\n" << ranks[r].output;
}

// Losses decide it; grad norms catch a sum where a mean belongs (AdamW hardly notices a scale), the
// routing statistics catch counters that were not added over ranks.
TEST_F(TrainDataParallel, TwoRanksEqualOneRankWithTheSameGlobalBatch) {
  auto config = write_config(tiny_config(), "same");
  auto one = train(config, "one", 1);
  expect_all_succeeded(one);
  auto two = train(config, "two", 2);
  expect_all_succeeded(two);

  auto expected_train = column("one", "train", "loss");
  ASSERT_EQ(expected_train.size(), 8u);
  expect_close(column("two", "train", "loss"), expected_train, "train loss");
  expect_close(column("two", "train", "grad_norm"), column("one", "train", "grad_norm"), "grad norm");
  auto expected_val = column("one", "val", "loss");
  ASSERT_EQ(expected_val.size(), 2u);
  expect_close(column("two", "val", "loss"), expected_val, "validation loss");
  // The final loss is not the step-1 loss: the ranks did train, and in step.
  EXPECT_LT(expected_val.at(8), column("one", "train", "loss").at(1) - 0.3);

  // Rank 0 alone wrote: one row per step and split, one job, its checkpoints.
  EXPECT_EQ(count("two", "SELECT count(*) FROM metrics"), 10);
  EXPECT_EQ(count("two", "SELECT count(*) FROM jobs WHERE status = 'done'"), 1);
  EXPECT_EQ(count("two", "SELECT count(*) FROM checkpoints"), 2);
  moelab::Store one_store((root_ / "one.db").string()), two_store((root_ / "two.db").string());
  const std::string routing = "SELECT step, layer, load_max_over_mean, positive_gates FROM routing_stats ORDER BY step, layer";
  auto a = one_store.query(routing), b = two_store.query(routing);
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i)
    for (size_t j = 2; j < a[i].size(); ++j) EXPECT_NEAR(std::stod(b[i][j]), std::stod(a[i][j]), 1e-9) << routing << " row " << i;
}

TEST_F(TrainDataParallel, InterruptedThenResumedOnTwoRanksEqualsUninterrupted) {
  auto config = write_config(tiny_config(), "resume");
  expect_all_succeeded(train(config, "dp_full", 2));
  expect_all_succeeded(train(config, "dp_split", 2, {"--stop-after", "4"}), moelab::kExitInterrupted);
  EXPECT_EQ(count("dp_split", "SELECT count(*) FROM jobs WHERE status = 'interrupted'"), 1);
  expect_all_succeeded(train(config, "dp_split", 2, {"--resume"}));
  // Same ranks, same order of additions: bit for bit.
  EXPECT_EQ(column("dp_split", "train", "loss"), column("dp_full", "train", "loss"));
  EXPECT_EQ(column("dp_split", "val", "loss"), column("dp_full", "val", "loss"));
  EXPECT_EQ(count("dp_split", "SELECT attempts FROM jobs"), 2);
}

TEST_F(TrainDataParallel, BatchThatDoesNotSplitOverTheRanksIsRefused) {
  auto c = tiny_config();
  c["train"]["micro_batch"] = 8;  // one micro-batch per step: nothing for a second rank
  auto ranks = train(write_config(c, "unsplittable"), "unsplittable", 2);
  for (auto& r : ranks) {
    EXPECT_EQ(r.code, moelab::kExitBadInput) << r.output;
    EXPECT_NE(r.output.find("train.batch_size: 8 sequences per step do not split into 2 ranks"), std::string::npos)
        << r.output;
  }
  EXPECT_FALSE(fs::exists(root_ / "unsplittable.db"));
}

TEST_F(TrainDataParallel, RankOutsideTheWorldIsRefusedNamingTheVariable) {
  auto config = write_config(tiny_config(), "bad_rank");
  setenv("MOELAB_WORLD_SIZE", "2", 1);
  setenv("MOELAB_RANK", "2", 1);
  auto bad = moelab::testing::run_moelab("train --quiet --config " + config + " --db " + (root_ / "bad_rank.db").string() +
                                         " --run-dir " + (root_ / "bad_rank").string());
  unsetenv("MOELAB_WORLD_SIZE");
  unsetenv("MOELAB_RANK");
  EXPECT_EQ(bad.code, moelab::kExitBadInput);
  EXPECT_NE(bad.output.find("MOELAB_RANK=2: outside [0, MOELAB_WORLD_SIZE=2)"), std::string::npos) << bad.output;
  EXPECT_FALSE(fs::exists(root_ / "bad_rank.db"));
}

}  // namespace
