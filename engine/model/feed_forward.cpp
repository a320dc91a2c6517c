#include "engine/model/feed_forward.hpp"

namespace moelab {

DenseMlpImpl::DenseMlpImpl(int d_model, int hidden) {
  up = register_module("up", torch::nn::Linear(d_model, hidden));
  down = register_module("down", torch::nn::Linear(hidden, d_model));
}

torch::Tensor DenseMlpImpl::forward(const torch::Tensor& x) { return down(torch::gelu(up(x))); }

MoeLayerImpl::MoeLayerImpl(const ModelConfig& m, uint64_t seed) {
  router = register_module("router", Router(m, seed));
  experts = register_module("experts", Experts(m.total_experts(), m.d_model, m.expert_hidden()));
}

torch::Tensor MoeLayerImpl::forward(const torch::Tensor& x, torch::Tensor& aux_loss) {
  auto tokens = x.reshape({-1, x.size(-1)});
  auto routing = router(tokens);
  aux_loss = aux_loss + routing.aux_loss;
  return experts(tokens, routing.expert_index, routing.gate).view(x.sizes());
}

}  // namespace moelab
