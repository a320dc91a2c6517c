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

void Scorer::score_window(const std::vector<uint32_t>& tokens, size_t first, size_t end, TokenScores& s) {
  const size_t start = end - std::min<size_t>(end, context());
  auto lp = log_probs({tokens.begin() + start, tokens.begin() + end});  // row r predicts token start + r + 1
  auto [top, top_index] = lp.max(-1);
  auto lp_rows = lp.accessor<double, 2>();
  auto top_rows = top.accessor<double, 1>();
  auto index_rows = top_index.accessor<int64_t, 1>();
  for (size_t i = first; i < end; ++i) {
    const size_t row = i - start - 1;
    s.logprob[i] = lp_rows[row][tokens[i]];
    s.top_token[i] = uint32_t(index_rows[row]);
    s.top_logprob[i] = top_rows[row];
  }
  if (end == tokens.size()) {
    s.next_token = uint32_t(index_rows[end - start - 1]);
    s.next_logprob = top_rows[end - start - 1];
  }
}

TokenScores Scorer::score(const std::vector<uint32_t>& tokens, const BetweenPasses& between_passes) {
  TORCH_CHECK(!tokens.empty(), "score: no tokens");
  TORCH_CHECK(context() >= 2, "score: a context of ", context(), " token cannot condition on anything");
  const size_t n = tokens.size(), window = context(), stride = window / 2;
  TokenScores s;
  s.logprob.assign(n, std::nan(""));
  s.top_token.assign(n, 0);
  s.top_logprob.assign(n, std::nan(""));
  size_t end = std::min(n, window);
  between_passes();
  score_window(tokens, 1, end, s);
  for (size_t next; end < n; end = next) {
    next = std::min(n, end + stride);  // the window [next - context, next) keeps >= context/2 tokens of history
    between_passes();
    score_window(tokens, end, next, s);
  }
  return s;
}

std::vector<uint32_t> Scorer::generate(std::vector<uint32_t> tokens, int64_t max_tokens, const std::vector<std::string>& stop,
                                       const BetweenPasses& between_passes) {
  std::vector<uint32_t> generated;
  std::string text;
  for (int64_t i = 0; i < max_tokens; ++i) {
    between_passes();
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
