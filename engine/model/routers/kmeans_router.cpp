// Online K-Means router (the second paper): parameter-free. Each expert keeps an EMA centroid of the
// hidden states routed to it; a token goes to the k experts of highest cosine similarity, gated 1/k
// each; per-expert selection biases, moved by the sign of the load error, balance the load.
#include "engine/model/router.hpp"

namespace moelab {
namespace {

constexpr double kNormEps = 1e-8;  // keeps norms off zero in divisions

torch::Tensor unit_rows(const torch::Tensor& x) { return x / (x.norm(2, -1, true) + kNormEps); }

Routing kmeans_route(const torch::Tensor& cosine, const GateRule& rule, const torch::Tensor&,
                     const torch::Tensor& selection_bias) {
  Routing r;
  r.expert_index = top_k_experts(cosine, rule, selection_bias);
  r.gate = torch::full_like(r.expert_index, 1.0 / rule.top_k, cosine.options());
  return r;
}

class KMeansRouterImpl : public RouterImpl {
 public:
  KMeansRouterImpl(const ModelConfig& m, uint64_t seed) : RouterImpl(m, /*own_selection_bias=*/true) {
    auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
    auto c = at::normal(0.0, 1.0, {m.total_experts(), m.d_model}, generator);
    centroids_ = register_buffer("centroids", c / c.norm(2, -1, true));
  }

  std::vector<torch::Tensor> balancing_state() const override {
    auto state = RouterImpl::balancing_state();
    state.push_back(centroids_);
    return state;
  }

 protected:
  torch::Tensor scores(const torch::Tensor& x) override { return torch::mm(unit_rows(x), centroids_.t()); }
  torch::Tensor direction_rows() const override { return centroids_; }

  // Each centroid moves toward the mean direction of the tokens routed to it; unused ones stay.
  void learn(const torch::Tensor& x, const Routing& r, const torch::Tensor& counts) override {
    auto unit = unit_rows(x.to(torch::kFloat));
    auto k = r.expert_index.size(1);
    auto sums = torch::zeros_like(centroids_).index_add_(0, r.expert_index.flatten(), unit.repeat_interleave(k, 0));
    auto hit = (counts > 0).unsqueeze(1).to(torch::kFloat);
    auto means = sums / counts.clamp_min(1).unsqueeze(1).to(torch::kFloat);
    const double decay = config_.centroid_decay;
    auto moved = unit_rows(decay * centroids_ + (1 - decay) * means);
    centroids_.copy_(hit * moved + (1 - hit) * centroids_);
  }

 private:
  torch::Tensor centroids_;  // [E, d] unit rows, EMA of routed hidden states
};

[[maybe_unused]] const bool registered =
    register_router("kmeans", {.route = kmeans_route, .make = [](const ModelConfig& m, uint64_t seed) -> std::shared_ptr<RouterImpl> {
                                 return std::make_shared<KMeansRouterImpl>(m, seed);
                               }});

}  // namespace
}  // namespace moelab
