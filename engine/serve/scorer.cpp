#include "engine/serve/scorer.hpp"

#include <cmath>

#include "engine/train/checkpoint.hpp"

namespace moelab {

Scorer::Scorer(const std::string& checkpoint_path) {
  auto checkpoint = open_checkpoint(checkpoint_path);
  config_ = checkpoint_config(checkpoint);
  model_ = Gpt(config_.model, config_.seed);
  step_ = load_checkpoint(checkpoint, *model_, nullptr).step;
  model_->eval();
  tokenizer_ = make_tokenizer(config_.data.tokenizer);
}

torch::Tensor Scorer::log_probs(const std::vector<uint32_t>& tokens) {
  torch::NoGradGuard no_grad;
  auto ids = torch::tensor(std::vector<int64_t>(tokens.begin(), tokens.end()), torch::kInt64).unsqueeze(0);
  return torch::log_softmax(model_->forward(ids).logits[0].to(torch::kFloat64), -1);
}

TokenScores Scorer::score(const std::vector<uint32_t>& tokens) {
  TORCH_CHECK(!tokens.empty() && int(tokens.size()) <= context(), "score: 1 to ", context(), " tokens");
  auto lp = log_probs(tokens);  // row i predicts token i + 1
  auto [top, top_index] = lp.max(-1);
  const size_t n = tokens.size();
  TokenScores s;
  s.logprob.assign(n, std::nan(""));
  s.top_token.assign(n, 0);
  s.top_logprob.assign(n, std::nan(""));
  for (size_t i = 1; i < n; ++i) {
    s.logprob[i] = lp[i - 1][tokens[i]].item<double>();
    s.top_token[i] = top_index[i - 1].item<int64_t>();
    s.top_logprob[i] = top[i - 1].item<double>();
  }
  s.next_token = top_index[n - 1].item<int64_t>();
  s.next_logprob = top[n - 1].item<double>();
  return s;
}

std::vector<uint32_t> Scorer::generate(std::vector<uint32_t> tokens, int max_tokens, const std::vector<std::string>& stop) {
  std::vector<uint32_t> generated;
  std::string text;
  for (int i = 0; i < max_tokens; ++i) {
    std::vector<uint32_t> window(tokens.end() - std::min<size_t>(tokens.size(), context()), tokens.end());
    auto lp = log_probs(window);
    uint32_t next = lp[lp.size(0) - 1].argmax().item<int64_t>();
    if (next == tokenizer_->end_of_text() && tokenizer_->name() == "gpt2") break;
    tokens.push_back(next), generated.push_back(next);
    text += tokenizer_->decode(std::span(&next, 1));
    for (auto& s : stop)
      if (!s.empty() && text.find(s) != std::string::npos) return generated;
  }
  return generated;
}

}  // namespace moelab
