// Causal multi-head self-attention over scaled_dot_product_attention (fused kernels where available).
#pragma once

#include <torch/torch.h>

namespace moelab {

class CausalSelfAttentionImpl : public torch::nn::Module {
 public:
  CausalSelfAttentionImpl(int d_model, int heads);
  torch::Tensor forward(const torch::Tensor& x);  // [B, T, d] -> [B, T, d]

  torch::nn::Linear qkv{nullptr}, out{nullptr};

 private:
  int heads_;
};
TORCH_MODULE(CausalSelfAttention);

}  // namespace moelab
