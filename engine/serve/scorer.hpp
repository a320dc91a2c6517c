// A trained checkpoint as a scoring model: log-probabilities of token sequences and greedy
// continuations, what lm-evaluation-harness asks of a model. Evaluation runs in fp32 on the CPU
// or the checkpoint's device, one request at a time (callers serialise). Sequences longer than the
// model's context are scored with a sliding window: every token is conditioned on at least half a
// context of the tokens before it (a whole one for the first window), never on nothing, so an answer
// longer than a tiny model's context still gets a score instead of an error.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/config/job_config.hpp"
#include "engine/model/gpt.hpp"
#include "engine/tokenizer/tokenizer.hpp"

namespace moelab {

struct TokenScores {
  std::vector<double> logprob;       // logprob[i] = log p(tokens[i] | tokens[<i]); entry 0 has no context (NaN)
  std::vector<uint32_t> top_token;   // the most likely token at each position given its prefix (entry 0 unused)
  std::vector<double> top_logprob;
  uint32_t next_token = 0;           // the greedy next token after the whole sequence
  double next_logprob = 0;
};

// Called before each forward pass of a long computation; it throws to abandon the work (a server's
// request past its deadline, a client gone, a shutdown).
using BetweenPasses = std::function<void()>;

class Scorer {
 public:
  explicit Scorer(const std::string& checkpoint_path);
  TokenScores score(const std::vector<uint32_t>& tokens, const BetweenPasses& between_passes = [] {});  // any length >= 1
  // Greedy continuation of up to max_tokens tokens; the window slides when the context fills up.
  std::vector<uint32_t> generate(std::vector<uint32_t> tokens, int64_t max_tokens, const std::vector<std::string>& stop,
                                 const BetweenPasses& between_passes = [] {});
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  int context() const { return config_.model.seq_len; }
  const JobConfig& config() const { return config_; }
  int step() const { return step_; }

 private:
  torch::Tensor log_probs(const std::vector<uint32_t>& tokens);  // [T, V]
  // Fills positions [first, end) of s from one forward pass over tokens[end - context, end).
  void score_window(const std::vector<uint32_t>& tokens, size_t first, size_t end, TokenScores& s);
  JobConfig config_;
  int step_ = 0;
  Gpt model_{nullptr};
  std::unique_ptr<Tokenizer> tokenizer_;
};

}  // namespace moelab
