#include "engine/model/gpt.hpp"

#include <cmath>

#include "engine/config/router_registry.hpp"
#include "engine/model/cross_entropy.hpp"

namespace moelab {

BlockImpl::BlockImpl(const ModelConfig& m, uint64_t seed) {
  ln_attn = register_module("ln_attn", torch::nn::LayerNorm(torch::nn::LayerNormOptions({m.d_model})));
  attn = register_module("attn", CausalSelfAttention(m.d_model, m.heads));
  ln_ffn = register_module("ln_ffn", torch::nn::LayerNorm(torch::nn::LayerNormOptions({m.d_model})));
  if (m.is_moe())
    moe = register_module("moe", MoeLayer(m, seed));
  else
    mlp = register_module("mlp", DenseMlp(m.d_model, m.dense_hidden()));
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x, torch::Tensor& aux_loss) {
  auto h = x + attn(ln_attn(x));
  auto normed = ln_ffn(h);
  return h + (moe ? moe(normed, aux_loss) : mlp(normed));
}

GptImpl::GptImpl(const ModelConfig& m, uint64_t seed) : config_(m) {
  token_embedding = register_module("token_embedding", torch::nn::Embedding(m.vocab_size, m.d_model));
  position_embedding = register_module("position_embedding", torch::nn::Embedding(m.seq_len, m.d_model));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int i = 0; i < m.layers; ++i) blocks->push_back(Block(m, seed * 1000003 + i));
  ln_final = register_module("ln_final", torch::nn::LayerNorm(torch::nn::LayerNormOptions({m.d_model})));
  initialise_weights(seed);
}

// GPT-2's initialisation: N(0, 0.02) weights, zero biases, residual projections scaled by 1/sqrt(2L).
void GptImpl::initialise_weights(uint64_t seed) {
  torch::NoGradGuard no_grad;
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  const double std = 0.02, residual_std = 0.02 / std::sqrt(2.0 * config_.layers);
  for (auto& item : named_parameters()) {
    const auto& name = item.key();
    auto& p = item.value();
    bool is_residual_out = name.ends_with("attn.out.weight") || name.ends_with("mlp.down.weight") ||
                           name.ends_with("experts.w_out");
    // Drawn in the order of the weight's shape, not of its memory (w_in lies transposed), so that a
    // seed gives the same model whatever the layout.
    if (p.dim() >= 2)
      p.copy_(torch::empty(p.sizes(), p.options()).normal_(0.0, is_residual_out ? residual_std : std, generator));
    else if (name.ends_with("bias") || name.ends_with("b_in") || name.ends_with("b_out"))
      p.zero_();
  }
}

LmOutput GptImpl::forward(const torch::Tensor& tokens) {
  auto out = forward_padded(tokens);
  out.logits = out.logits.narrow(-1, 0, config_.vocab_size);
  return out;
}

torch::Tensor GptImpl::loss(const torch::Tensor& tokens, const torch::Tensor& targets) {
  auto out = forward_padded(tokens);
  // Padded logits are -inf: they take no probability, so loss and gradients are the vocabulary's.
  return fp32_cross_entropy(out.logits.reshape({-1, out.logits.size(-1)}), targets.reshape(-1)) + out.aux_loss;
}

LmOutput GptImpl::forward_padded(const torch::Tensor& tokens) {
  const auto T = tokens.size(1);
  TORCH_CHECK(T <= config_.seq_len, "sequence of ", T, " tokens exceeds the model's context ", config_.seq_len);
  auto positions = torch::arange(T, tokens.options());
  auto x = token_embedding(tokens) + position_embedding(positions);
  auto aux_loss = torch::zeros({}, x.options().dtype(torch::kFloat));
  for (auto& block : *blocks) x = block->as<Block>()->forward(x, aux_loss);
  return {output_logits(ln_final(x)), aux_loss};
}

// The projection onto the tied token embeddings. On CUDA a vocabulary that is not a multiple of 64
// is padded with zero rows up to the next multiple, and a bias sets their logits to -inf: with
// GPT-2's 50,257 tokens the logits' rows are not 16-byte aligned and cuBLAS falls back to its slow
// unaligned kernels, which made this projection a large share of a bf16 step. Masking the padded
// logits instead of slicing them off keeps the loss's gradient aligned as well. The CPU has no such
// kernels and would only pay for the copies.
torch::Tensor GptImpl::output_logits(const torch::Tensor& h) {
  const auto& weight = token_embedding->weight;
  const int64_t vocab = weight.size(0), padded = (vocab + 63) / 64 * 64;
  if (!h.is_cuda() || padded == vocab) return torch::linear(h, weight);
  const auto options = weight.options().requires_grad(false);
  auto mask = torch::cat({torch::zeros({vocab}, options), torch::full({padded - vocab}, -INFINITY, options)});
  return torch::linear(h, torch::constant_pad_nd(weight, {0, 0, 0, padded - vocab}), mask);
}

std::vector<MoeLayer> GptImpl::moe_layers() const {
  std::vector<MoeLayer> layers;
  for (auto& block : *blocks)
    if (auto moe = block->as<Block>()->moe) layers.push_back(moe);
  return layers;
}

ModelSize model_size(const ModelConfig& m) {
  const int64_t d = m.d_model, L = m.layers;
  const int64_t embeddings = int64_t(m.vocab_size) * d + int64_t(m.seq_len) * d;
  const int64_t layer_norms = 2 * 2 * d;
  const int64_t attention = d * 3 * d + 3 * d + d * d + d;
  int64_t ffn_total, ffn_active;
  if (m.is_moe()) {
    const int64_t E = m.total_experts(), k = m.active_experts(), h = m.expert_hidden();
    const int64_t expert = d * h + h + h * d + d;
    const int64_t router = router_row(m.router).parameters(E, d);
    ffn_total = E * expert + router;
    ffn_active = k * expert + router;
  } else {
    const int64_t h = m.dense_hidden();
    ffn_total = ffn_active = d * h + h + h * d + d;
  }
  ModelSize size;
  size.total_params = embeddings + L * (layer_norms + attention + ffn_total) + 2 * d;
  size.active_params = embeddings + L * (layer_norms + attention + ffn_active) + 2 * d;
  // Matmul weights a token multiplies through (the tied output projection included, position
  // embeddings are a lookup), times 6 for forward + backward; plus causal attention scores and
  // weighted values (PaLM's 12 * L * d * T, halved for the causal mask).
  const int64_t matmul_params = size.active_params - int64_t(m.seq_len) * d;
  size.flops_per_token = 6 * matmul_params + 6 * L * d * m.seq_len;
  return size;
}

}  // namespace moelab
