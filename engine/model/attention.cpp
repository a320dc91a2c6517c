#include "engine/model/attention.hpp"

namespace moelab {

CausalSelfAttentionImpl::CausalSelfAttentionImpl(int d_model, int heads) : heads_(heads) {
  qkv = register_module("qkv", torch::nn::Linear(d_model, 3 * d_model));
  out = register_module("out", torch::nn::Linear(d_model, d_model));
}

torch::Tensor CausalSelfAttentionImpl::forward(const torch::Tensor& x) {
  const auto B = x.size(0), T = x.size(1), d = x.size(2);
  // unbind, not three selects: the backward of each select fills a zeroed gradient of the whole
  // projection and adds the three up; unbind's stacks the three in one pass. Unbinding before the
  // heads are transposed makes that stack the projection's gradient in its own layout, so its view
  // needs no further copy (permuting first would add a reshape copy of it every step).
  auto parts = qkv(x).view({B, T, 3, heads_, d / heads_}).unbind(2);  // 3 x [B, T, H, hd]
  auto head_major = [](const torch::Tensor& t) { return t.transpose(1, 2); };  // [B, H, T, hd]
  auto y = at::scaled_dot_product_attention(head_major(parts[0]), head_major(parts[1]), head_major(parts[2]),
                                            /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true);
  return out(y.transpose(1, 2).reshape({B, T, d}));
}

}  // namespace moelab
