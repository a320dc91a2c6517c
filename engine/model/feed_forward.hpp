// The two feed-forward blocks a layer can have: a dense MLP, or a mixture of experts (router + experts).
#pragma once

#include <torch/torch.h>

#include "engine/model/experts.hpp"
#include "engine/model/router.hpp"

namespace moelab {

class DenseMlpImpl : public torch::nn::Module {
 public:
  DenseMlpImpl(int d_model, int hidden);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Linear up{nullptr}, down{nullptr};
};
TORCH_MODULE(DenseMlp);

class MoeLayerImpl : public torch::nn::Module {
 public:
  MoeLayerImpl(const ModelConfig& m, uint64_t seed);
  // x [B, T, d] -> output [B, T, d]; the router's balancing loss is added to `aux_loss`.
  torch::Tensor forward(const torch::Tensor& x, torch::Tensor& aux_loss);

  Router router{nullptr};
  Experts experts{nullptr};
};
TORCH_MODULE(MoeLayer);

}  // namespace moelab
