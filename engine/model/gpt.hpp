// The GPT-2 style decoder of the paper: token + learned position embeddings, pre-LayerNorm blocks
// of causal attention and a dense or MoE feed-forward, final LayerNorm, output tied to the embedding.
#pragma once

#include <torch/torch.h>

#include "engine/config/job_config.hpp"
#include "engine/model/attention.hpp"
#include "engine/model/feed_forward.hpp"

namespace moelab {

class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const ModelConfig& m, uint64_t seed);
  torch::Tensor forward(const torch::Tensor& x, torch::Tensor& aux_loss);

  torch::nn::LayerNorm ln_attn{nullptr}, ln_ffn{nullptr};
  CausalSelfAttention attn{nullptr};
  DenseMlp mlp{nullptr};  // exactly one of mlp / moe is set
  MoeLayer moe{nullptr};
};
TORCH_MODULE(Block);

struct LmOutput {
  torch::Tensor logits;    // [B, T, V]
  torch::Tensor aux_loss;  // scalar, sum over layers of the routers' balancing losses
};

class GptImpl : public torch::nn::Module {
 public:
  GptImpl(const ModelConfig& m, uint64_t seed);
  LmOutput forward(const torch::Tensor& tokens);  // tokens [B, T] int64, T <= seq_len
  // Mean next-token cross-entropy of `targets` [B, T] plus the balancing losses.
  torch::Tensor loss(const torch::Tensor& tokens, const torch::Tensor& targets);
  std::vector<MoeLayer> moe_layers() const;
  const ModelConfig& config() const { return config_; }

  torch::nn::Embedding token_embedding{nullptr}, position_embedding{nullptr};
  torch::nn::ModuleList blocks;
  torch::nn::LayerNorm ln_final{nullptr};

 private:
  void initialise_weights(uint64_t seed);
  LmOutput forward_padded(const torch::Tensor& tokens);  // logits over the vocabulary that output_logits pads
  torch::Tensor output_logits(const torch::Tensor& h);    // h [B, T, d] -> [B, T, vocab or padded vocab]
  ModelConfig config_;
};
TORCH_MODULE(Gpt);

// Analytic sizes of a config (no model is built): the paper's 125M-active MoE is ~520M in total.
struct ModelSize {
  int64_t total_params = 0;   // tied embedding counted once
  int64_t active_params = 0;  // parameters a token touches: top-k of the experts
  int64_t flops_per_token = 0;  // training FLOPs: 6 * active matmul params + causal attention
};
ModelSize model_size(const ModelConfig& m);

}  // namespace moelab
