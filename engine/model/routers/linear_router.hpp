// Routers with learned scores s = W x + b (one row per expert). A plain gate router, whose gates are
// a function of all E scores with the top k kept, is one register_gate_router line in its own file.
#pragma once

#include "engine/model/router.hpp"

namespace moelab {

class LinearRouterImpl : public RouterImpl {
 public:
  explicit LinearRouterImpl(const ModelConfig& m);

 protected:
  torch::Tensor scores(const torch::Tensor& x) override { return proj_(x); }
  torch::Tensor direction_rows() const override { return proj_->weight; }

  torch::nn::Linear proj_{nullptr};
};

// Registers `name` as a linear router whose gates are Gate(scores) over all experts, top-k kept.
template <torch::Tensor (*Gate)(const torch::Tensor& scores)>
bool register_gate_router(const std::string& name) {
  return register_router(
      name, {.route = [](const torch::Tensor& s, const GateRule& rule, const torch::Tensor&, const torch::Tensor& bias) {
               return keep_top_k(Gate(s), rule, bias);
             },
             .make = [](const ModelConfig& m, uint64_t) -> std::shared_ptr<RouterImpl> {
               return std::make_shared<LinearRouterImpl>(m);
             }});
}

}  // namespace moelab
