// `moelab train` end to end through the real binary, a real SQLite file and real token files made
// from the embedded Austen corpus: exact resume, interruption, store rows, learning, bad input.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <torch/cuda.h>

#include "db/store.hpp"
#include "run_moelab.hpp"
#include "tiny_job.hpp"
#include "engine/data/token_file.hpp"
#include "engine/train/trainer.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using moelab::testing::run_moelab;

// A temp directory holding a bytes-tokenized slice of the Austen corpus, prepared once per test binary.
class TrainCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("moelab_train_cli_" + std::to_string(getpid()));
    auto r = moelab::testing::prepare_corpus_slice(root_, 400000);
    ASSERT_EQ(r.code, 0) << r.output;
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  // A tiny KERN model on the bytes data; `edit` changes fields before it is written.
  static json tiny_config() {
    return moelab::testing::tiny_kern_job(
        root_ / "data", "tiny", 1,
        {{"steps", 12}, {"batch_size", 8}, {"micro_batch", 4}, {"lr", 3e-3}, {"warmup", 2}, {"min_lr", 3e-4},
         {"log_every", 1}, {"eval_every", 4}, {"eval_batches", 2}, {"checkpoint_every", 4}, {"keep_checkpoints", 3},
         {"precision", "fp32"}, {"device", "cpu"}, {"threads", 1}});
  }

  std::string write_config(const json& config, const std::string& name) {
    auto path = root_ / (name + ".json");
    std::ofstream(path) << config.dump(2);
    return path.string();
  }

  std::string train_args(const std::string& config, const std::string& tag, const std::string& extra = "") {
    return "train --quiet --config " + config + " --db " + (root_ / (tag + ".db")).string() + " --run-dir " +
           (root_ / tag).string() + " " + extra;
  }

  static std::map<int64_t, std::string> losses(const std::string& tag, const std::string& split) {
    moelab::Store store((root_ / (tag + ".db")).string());
    std::map<int64_t, std::string> out;
    // printf('%.17g') keeps every bit of the double, so equal strings mean equal losses.
    for (auto& row : store.query("SELECT step, printf('%.17g', loss) FROM metrics WHERE split = '" + split + "'"))
      out[std::stoll(row[0])] = row[1];
    return out;
  }

  static int64_t count(const std::string& tag, const std::string& sql) {
    moelab::Store store((root_ / (tag + ".db")).string());
    return std::stoll(store.query(sql)[0][0]);
  }

  static inline fs::path root_;
};

TEST_F(TrainCli, InterruptedThenResumedEqualsUninterruptedBitForBit) {
  auto config = write_config(tiny_config(), "resume");
  auto full = run_moelab(train_args(config, "full"));
  ASSERT_EQ(full.code, 0) << full.output;

  auto first = run_moelab(train_args(config, "split", "--stop-after 6"));
  ASSERT_EQ(first.code, moelab::kExitInterrupted) << first.output;
  EXPECT_EQ(count("split", "SELECT count(*) FROM jobs WHERE status = 'interrupted'"), 1);
  auto second = run_moelab(train_args(config, "split", "--resume"));
  ASSERT_EQ(second.code, 0) << second.output;

  auto expected = losses("full", "train"), actual = losses("split", "train");
  ASSERT_EQ(expected.size(), 12u);
  EXPECT_EQ(actual, expected);
  EXPECT_EQ(losses("split", "val"), losses("full", "val"));
  EXPECT_EQ(count("split", "SELECT attempts FROM jobs"), 2);
  EXPECT_EQ(count("split", "SELECT count(*) FROM jobs WHERE status = 'done'"), 1);
}

// A job killed after its last checkpoint re-runs the lost steps on resume; each row stays unique.
TEST_F(TrainCli, ResumeAfterLostStepsReplacesRowsWithoutDuplicates) {
  auto config = write_config(tiny_config(), "lost");
  ASSERT_EQ(run_moelab(train_args(config, "lost")).code, 0);
  auto before = losses("lost", "train");
  for (int step : {8, 12}) {  // as if killed at step 11: only the step-4 checkpoint survived
    char stem[32];
    std::snprintf(stem, sizeof stem, "step_%08d", step);
    fs::remove(root_ / "lost" / (std::string(stem) + ".pt"));
    fs::remove(root_ / "lost" / (std::string(stem) + ".json"));
  }
  auto resumed = run_moelab(train_args(config, "lost", "--resume"));
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  EXPECT_EQ(losses("lost", "train"), before);
  EXPECT_EQ(count("lost", "SELECT count(*) FROM metrics WHERE split = 'train'"), 12);
  EXPECT_EQ(count("lost", "SELECT count(*) FROM metrics WHERE split = 'val'"), 3);
  EXPECT_EQ(count("lost", "SELECT count(*) FROM routing_stats"), 3 * 2);  // 3 evaluations x 2 MoE layers
  EXPECT_EQ(count("lost", "SELECT count(DISTINCT step) FROM checkpoints"), 3);
}

TEST_F(TrainCli, SigtermCheckpointsAndExitsWithTheInterruptedCode) {
  auto c = tiny_config();
  c["train"]["steps"] = 100000;
  auto config = write_config(c, "sigterm");
  pid_t child = fork();
  if (child == 0) {
    std::string db = (root_ / "sigterm.db").string(), run_dir = (root_ / "sigterm").string();
    execl(MOELAB_BIN, MOELAB_BIN, "train", "--quiet", "--config", config.c_str(), "--db", db.c_str(), "--run-dir",
          run_dir.c_str(), (char*)nullptr);
    _exit(127);
  }
  // Wait until training has logged a few steps, then ask it to stop.
  for (int i = 0; i < 600 && !fs::exists(root_ / "sigterm.db"); ++i) usleep(100000);
  for (int i = 0; i < 600; ++i, usleep(100000))
    if (count("sigterm", "SELECT count(*) FROM metrics") >= 3) break;
  kill(child, SIGTERM);
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), moelab::kExitInterrupted);
  const int64_t last_step = count("sigterm", "SELECT max(step) FROM metrics WHERE split = 'train'");
  EXPECT_EQ(count("sigterm", "SELECT max(step) FROM checkpoints"), last_step);
  EXPECT_EQ(count("sigterm", "SELECT count(*) FROM jobs WHERE status = 'interrupted'"), 1);
}

TEST_F(TrainCli, NonFiniteLossStopsTheJobWithTheErrorRecorded) {
  auto c = tiny_config();
  c["train"]["lr"] = 1e30, c["train"]["min_lr"] = 1e30, c["train"]["grad_clip"] = 0.0;
  auto r = run_moelab(train_args(write_config(c, "nan"), "nan"));
  EXPECT_EQ(r.code, moelab::kExitDiverged) << r.output;
  EXPECT_NE(r.output.find("non-finite loss"), std::string::npos) << r.output;
  moelab::Store store((root_ / "nan.db").string());
  auto job = store.query("SELECT status, error FROM jobs");
  ASSERT_EQ(job.size(), 1u);
  EXPECT_EQ(job[0][0], "failed");
  EXPECT_NE(job[0][1].find("non-finite loss"), std::string::npos);
}

// Validation loss falls well below the unigram (byte) entropy of the corpus: the model learns context.
TEST_F(TrainCli, ShortRunLearnsBeyondUnigramStatistics) {
  moelab::TokenFile train((root_ / "data/train.bin").string());
  std::vector<double> frequency(256, 0.0);
  std::vector<int64_t> tokens(train.size());
  train.read(0, tokens.size(), tokens.data());
  for (auto t : tokens) frequency[t] += 1.0 / tokens.size();
  double entropy = 0;
  for (double p : frequency)
    if (p > 0) entropy -= p * std::log(p);

  auto c = tiny_config();
  c["model"]["d_model"] = 64, c["model"]["seq_len"] = 64;
  c["train"]["steps"] = 500, c["train"]["batch_size"] = 16, c["train"]["micro_batch"] = 16;
  c["train"]["log_every"] = 50, c["train"]["eval_every"] = 500, c["train"]["checkpoint_every"] = 500;
  c["train"]["eval_batches"] = 4, c["train"]["lr"] = 1e-3, c["train"]["min_lr"] = 1e-4, c["train"]["warmup"] = 10;
  c["train"]["threads"] = 2;
  auto r = run_moelab(train_args(write_config(c, "learn"), "learn"));
  ASSERT_EQ(r.code, 0) << r.output;
  const double val = std::stod(losses("learn", "val").at(500));
  EXPECT_LT(val, entropy - 0.5) << "unigram entropy " << entropy << " nats";
}

struct BadInput {
  std::string name;
  std::function<void(json&)> edit;
  std::string expected;  // a fragment the error must contain
};

TEST_F(TrainCli, BadConfigsFailNamingTheFieldAndWriteNothing) {
  std::vector<BadInput> cases = {
      {"unknown_key", [](json& c) { c["model"]["toplk"] = 2; }, "model.toplk: unknown key (did you mean \"top_k\"?)"},
      {"unknown_router", [](json& c) { c["model"]["router"] = "softmx"; }, "model.router: unknown router \"softmx\""},
      {"topk_over_experts", [](json& c) { c["model"]["top_k"] = 5; }, "model.top_k: top_k 5 exceeds experts 4"},
      {"granularity", [](json& c) { c["model"]["granularity"] = 3; }, "model.expert_size: expert_size 32 is not divisible by granularity 3"},
      {"heads", [](json& c) { c["model"]["heads"] = 5; }, "model.d_model: d_model 32 is not divisible by heads 5"},
      {"wrong_type", [](json& c) { c["train"]["steps"] = "ten"; }, "train.steps: expected an integer"},
      {"missing_data", [](json& c) { c["data"]["train"] = "/nonexistent/train.bin"; },
       "data.train: /nonexistent/train.bin: token file not found"},
      {"missing_val", [](json& c) { c["data"]["val"] = "/nonexistent/val.bin"; }, "data.val: /nonexistent/val.bin: token file not found"},
      {"cuda_graph_on_cpu", [](json& c) { c["train"]["cuda_graph"] = true; }, "train.cuda_graph: needs a GPU, and train.device is cpu"},
      // Where "auto" finds a GPU, fp32 MoE layers are what cannot be captured.
      {"cuda_graph_auto", [](json& c) { c["train"]["cuda_graph"] = true, c["train"]["device"] = "auto"; },
       torch::cuda::is_available() ? "train.cuda_graph: MoE layers in fp32 take the per-expert loop"
                                   : "train.cuda_graph: needs a GPU, and this job runs on the CPU"},
  };
  for (auto& bad : cases) {
    auto c = tiny_config();
    bad.edit(c);
    auto r = run_moelab(train_args(write_config(c, "bad_" + bad.name), "bad_" + bad.name));
    EXPECT_NE(r.code, 0) << bad.name;
    EXPECT_NE(r.output.find(bad.expected), std::string::npos) << bad.name << ": " << r.output;
    EXPECT_FALSE(fs::exists(root_ / ("bad_" + bad.name + ".db"))) << bad.name << " wrote a store";
  }
}

// MOELAB_ATEN_ONLY naming no kernel is refused before training starts, in every build (CPU included).
TEST_F(TrainCli, AtenOnlyNamingNoKernelIsRefusedAndNothingIsWritten) {
  setenv("MOELAB_ATEN_ONLY", "gated_gelu,layer_norm", 1);
  auto r = run_moelab(train_args(write_config(tiny_config(), "aten_only"), "aten_only"));
  unsetenv("MOELAB_ATEN_ONLY");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("MOELAB_ATEN_ONLY=gated_gelu,layer_norm: 'layer_norm' is not one of moelab's kernels"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(root_ / "aten_only.db"));
}

TEST_F(TrainCli, TruncatedTokenFileIsRefusedNamingIt) {
  fs::create_directories(root_ / "cut");
  for (auto name : {"train.bin", "val.bin", "meta.json"}) fs::copy_file(root_ / "data" / name, root_ / "cut" / name);
  fs::resize_file(root_ / "cut/val.bin", fs::file_size(root_ / "cut/val.bin") - 1);
  auto c = tiny_config();
  c["data"]["val"] = (root_ / "cut/val.bin").string();
  auto r = run_moelab(train_args(write_config(c, "cut"), "cut"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find((root_ / "cut/val.bin").string()), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("truncated"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(root_ / "cut.db"));
}

// A copy of the prepared data in <root>/<name>, to damage.
fs::path copy_of_data(const fs::path& root, const std::string& name) {
  fs::create_directories(root / name);
  for (auto file : {"train.bin", "val.bin", "meta.json"})
    fs::copy_file(root / "data" / file, root / name / file, fs::copy_options::overwrite_existing);
  return root / name;
}

// Random bytes of the right size hold ids beyond the bytes vocabulary (256): refused when the file is
// opened, naming the key, the file and the first bad id, before the store is touched. Before this
// check the job trained until the embedding failed, with a C++ backtrace, and stayed "running".
TEST_F(TrainCli, TokenFileWithIdsOutsideTheVocabularyIsRefusedWhenOpened) {
  const auto dir = copy_of_data(root_, "noise");
  {
    std::ofstream noise(dir / "train.bin", std::ios::binary | std::ios::trunc);
    uint32_t state = 12345;
    for (size_t i = 0; i < fs::file_size(root_ / "data/train.bin"); ++i) noise.put(char((state = state * 1664525u + 1013904223u) >> 24));
  }
  auto c = tiny_config();
  c["data"]["train"] = (dir / "train.bin").string();
  auto r = run_moelab(train_args(write_config(c, "noise"), "noise"));
  EXPECT_EQ(r.code, moelab::kExitBadInput) << r.output;
  EXPECT_NE(r.output.find("data.train: " + (dir / "train.bin").string() + ": token "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("is outside the vocabulary of 256"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("frame #"), std::string::npos) << "no backtrace: " << r.output;
  EXPECT_FALSE(fs::exists(root_ / "noise.db"));
}

// An error after the job's row exists (here: the first checkpoint cannot be written, a directory
// stands where its file goes) records the job as failed with the reason, prints that one line, and
// exits with kExitFailed; the steps trained before it stay in the store.
TEST_F(TrainCli, AnErrorDuringTrainingRecordsTheJobAsFailedWithItsReason) {
  const auto blocker = root_ / "midway/step_00000004.pt.tmp";
  fs::create_directories(blocker);
  auto r = run_moelab(train_args(write_config(tiny_config(), "midway"), "midway"));
  EXPECT_EQ(r.code, moelab::kExitFailed) << r.output;
  size_t error_lines = 0;
  std::istringstream lines(r.output);
  for (std::string line; std::getline(lines, line);) error_lines += line.starts_with("error: ");
  EXPECT_EQ(error_lines, 1u) << r.output;
  EXPECT_NE(r.output.find(blocker.string()), std::string::npos) << r.output;
  moelab::Store store((root_ / "midway.db").string());
  auto job = store.query("SELECT status, exit_code, error FROM jobs");
  ASSERT_EQ(job.size(), 1u);
  EXPECT_EQ(job[0][0], "failed");
  EXPECT_EQ(job[0][1], std::to_string(moelab::kExitFailed));
  EXPECT_NE(job[0][2].find(blocker.string()), std::string::npos) << job[0][2];
  EXPECT_EQ(store.query("SELECT count(*) FROM events WHERE level = 'error'")[0][0], "1");
  EXPECT_EQ(count("midway", "SELECT max(step) FROM metrics WHERE split = 'train'"), 4);
}

TEST_F(TrainCli, DataVerifyChecksEveryFileAgainstItsRecord) {
  const auto dir = copy_of_data(root_, "verify");
  auto intact = run_moelab("data verify " + dir.string());
  EXPECT_EQ(intact.code, 0) << intact.output;
  EXPECT_NE(intact.output.find("train " + (dir / "train.bin").string() + ": ok ("), std::string::npos) << intact.output;
  EXPECT_NE(intact.output.find("val " + (dir / "val.bin").string() + ": ok ("), std::string::npos) << intact.output;
  {
    std::fstream f(dir / "val.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(10);
    f.put('\x41');  // still a byte's id: only the checksum tells
  }
  auto damaged = run_moelab("data verify " + dir.string());
  EXPECT_EQ(damaged.code, 1) << damaged.output;
  EXPECT_NE(damaged.output.find("val " + (dir / "val.bin").string() + ": DAMAGED: SHA-256 "), std::string::npos)
      << damaged.output;
  EXPECT_NE(damaged.output.find("train " + (dir / "train.bin").string() + ": ok ("), std::string::npos) << damaged.output;
  auto missing = run_moelab("data verify " + (root_ / "nowhere").string());
  EXPECT_EQ(missing.code, moelab::kExitBadInput) << missing.output;
  EXPECT_NE(missing.output.find((root_ / "nowhere/meta.json").string() + ": not found"), std::string::npos) << missing.output;
}

// The peak resident memory of the training process is stored with the job and shown by `sweep status`.
TEST_F(TrainCli, PeakMemoryIsRecordedAndShown) {
  ASSERT_EQ(run_moelab(train_args(write_config(tiny_config(), "memory"), "memory")).code, 0);
  const int64_t resident = count("memory", "SELECT peak_resident_bytes FROM jobs");
  EXPECT_GT(resident, 50ll << 20) << "LibTorch alone takes more";
  EXPECT_LT(resident, 2ll << 30);
  EXPECT_EQ(count("memory", "SELECT count(*) FROM jobs WHERE peak_gpu_bytes IS NULL"), 1) << "no GPU, no GPU peak";
  auto status = run_moelab("sweep status --db " + (root_ / "memory.db").string());
  ASSERT_EQ(status.code, 0) << status.output;
  EXPECT_NE(status.output.find("peak_mem"), std::string::npos) << status.output;
  char shown[32];
  std::snprintf(shown, sizeof shown, " %.0fM ", resident / 1048576.0);
  EXPECT_NE(status.output.find(shown), std::string::npos) << shown << " in " << status.output;
}

// Resident memory stays flat over a run whose steps allocate and free ~100 MB of logits each (the
// GPT-2 vocabulary at batch 8 x 64, as in the demo): the peak of 240 steps is at most 1.25x that
// of 80 steps, and under 2 GB. glibc's heap, kept untrimmed, grew by ~20 MB a step (2.2x, 7 GB).
TEST_F(TrainCli, ResidentMemoryStaysFlatOverALongRun) {
  auto c = tiny_config();
  c["model"]["vocab_size"] = 50257, c["model"]["seq_len"] = 64, c["model"]["d_model"] = 64;
  c["train"]["batch_size"] = 8, c["train"]["micro_batch"] = 8, c["train"]["log_every"] = 20;
  c["train"]["eval_every"] = 1000, c["train"]["checkpoint_every"] = 1000, c["train"]["threads"] = 2;
  std::map<int, int64_t> peak;
  for (int steps : {80, 240}) {
    c["train"]["steps"] = steps;
    const std::string tag = "flat" + std::to_string(steps);
    auto r = run_moelab(train_args(write_config(c, tag), tag));
    ASSERT_EQ(r.code, 0) << r.output;
    peak[steps] = count(tag, "SELECT peak_resident_bytes FROM jobs");
  }
  EXPECT_LE(double(peak[240]), 1.25 * peak[80]) << peak[80] << " bytes at 80 steps, " << peak[240] << " at 240";
  EXPECT_LT(peak[240], 2ll << 30);
}

TEST_F(TrainCli, CorruptOrForeignCheckpointIsRefusedAndNothingIsWritten) {
  auto config = write_config(tiny_config(), "ckpt");
  ASSERT_EQ(run_moelab(train_args(config, "ckpt", "--stop-after 4")).code, moelab::kExitInterrupted);
  const int64_t rows = count("ckpt", "SELECT count(*) FROM metrics");
  const auto checkpoint = root_ / "ckpt/step_00000004.pt";

  auto other = tiny_config();
  other["model"]["top_k"] = 1;
  auto foreign = run_moelab(train_args(write_config(other, "ckpt_other"), "ckpt", "--resume"));
  EXPECT_NE(foreign.code, 0);
  EXPECT_NE(foreign.output.find(checkpoint.string() + ": written for another config"), std::string::npos) << foreign.output;

  {
    std::fstream f(checkpoint, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    f.put('\x5a');
  }
  auto corrupt = run_moelab(train_args(config, "ckpt", "--resume"));
  EXPECT_NE(corrupt.code, 0);
  EXPECT_NE(corrupt.output.find(checkpoint.string() + ": checksum mismatch"), std::string::npos) << corrupt.output;
  EXPECT_EQ(count("ckpt", "SELECT count(*) FROM metrics"), rows);
  EXPECT_EQ(count("ckpt", "SELECT attempts FROM jobs"), 1);
}

TEST_F(TrainCli, ParamsPrintsJson) {
  auto r = run_moelab("params --json --config " + write_config(tiny_config(), "params"));
  ASSERT_EQ(r.code, 0) << r.output;
  auto j = json::parse(r.output);
  EXPECT_GT(j["total_params"].get<int64_t>(), j["active_params"].get<int64_t>());
  EXPECT_GT(j["flops_per_token"].get<int64_t>(), 6 * j["active_params"].get<int64_t>() / 2);
}

// Per-step counts come from the profiled steps alone (2 micro-batches, each looking up token and
// position embeddings; one fused AdamW call per parameter group), and self times do not count a
// nested operator twice: their sum stays within the wall time although operators nest deeply.
TEST_F(TrainCli, ProfileStepsCountsOperatorsPerStepAndStoresNothing) {
  auto r = run_moelab("train --config " + write_config(tiny_config(), "profile") + " --db " +
                      (root_ / "profile.db").string() + " --run-dir " + (root_ / "profile").string() +
                      " --profile-steps 3");
  ASSERT_EQ(r.code, 0) << r.output;
  double wall = 0, busy = 0;
  ASSERT_EQ(std::sscanf(r.output.c_str(), "profile of 3 steps on cpu: %lf ms per step; in operators %lf ms", &wall, &busy), 2)
      << r.output;
  EXPECT_GT(busy, 0.5 * wall);
  EXPECT_LE(busy, wall);
  // The busy time by kind of work: the kinds add up to it, and the matmuls and AdamW are among them.
  double matmul = 0, attention = 0, optimizer = 0, other = 0, share = 0;
  const auto kinds = r.output.find("by kind, ms per step:");
  ASSERT_NE(kinds, std::string::npos) << r.output;
  ASSERT_EQ(std::sscanf(r.output.c_str() + kinds,
                        "by kind, ms per step: matmuls %lf (%lf%%), attention %lf (%lf%%), optimizer %lf (%lf%%), other %lf",
                        &matmul, &share, &attention, &share, &optimizer, &share, &other),
            7)
      << r.output;
  EXPECT_NEAR(matmul + attention + optimizer + other, busy, 0.01);
  EXPECT_GT(matmul, 0);
  EXPECT_GT(optimizer, 0);
  EXPECT_GT(other, 0);
  EXPECT_NE(r.output.find("were matmuls and attention all that took time"), std::string::npos) << r.output;

  std::map<std::string, double> calls_per_step;
  std::ifstream csv(root_ / "profile/profile/ops.csv");
  std::string line;
  std::getline(csv, line);
  EXPECT_EQ(line, "name,calls_per_step,ms_per_step,share_of_busy");
  while (std::getline(csv, line)) {
    const auto name_end = line.find("\",");
    calls_per_step[line.substr(1, name_end - 1)] = std::stod(line.substr(name_end + 2));
  }
  EXPECT_EQ(calls_per_step["aten::embedding"], 4.0);
  EXPECT_EQ(calls_per_step["aten::_fused_adamw_"], 2.0);

  auto trace = json::parse(std::ifstream(root_ / "profile/profile/trace.json"));
  EXPECT_GT(trace["traceEvents"].size(), 100u);
  EXPECT_FALSE(fs::exists(root_ / "profile.db"));

  auto negative = run_moelab("train --config " + write_config(tiny_config(), "profile") + " --profile-steps -2");
  EXPECT_EQ(negative.code, 2) << negative.output;
  EXPECT_NE(negative.output.find("--profile-steps -2"), std::string::npos) << negative.output;
}

}  // namespace
