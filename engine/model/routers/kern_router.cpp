#include "engine/model/routers/kern_router.hpp"

#include "engine/model/kern_gate.hpp"
#include "engine/model/routers/linear_router.hpp"

namespace moelab {
namespace {

Routing kern_route(const torch::Tensor& s, const GateRule& rule, const torch::Tensor& gamma,
                   const torch::Tensor& selection_bias) {
  if (!rule.kern.after_topk) return keep_top_k(kern_gate(s, gamma, rule.kern.relu), rule, selection_bias);
  // KERN-After: choose on raw scores, then normalise over the k kept scores only.
  Routing r;
  r.expert_index = top_k_experts(s, rule, selection_bias);
  r.gate = kern_gate(s.gather(-1, r.expert_index), gamma, rule.kern.relu);
  return r;
}

class KernRouterImpl : public LinearRouterImpl {
 public:
  KernRouterImpl(const ModelConfig& m, uint64_t seed) : LinearRouterImpl(m) {
    const double init = m.kern.init == "monte_carlo" ? kern_monte_carlo_scale(m.total_experts(), rule_, 20000, seed) : 1.0;
    gamma_ = register_parameter("gamma", torch::full({}, init));
  }

 protected:
  Routing route(const torch::Tensor& s) override { return route_scores(s, rule_, gamma_, selection_bias_); }

 private:
  torch::Tensor gamma_;  // learnable scale
};

[[maybe_unused]] const bool registered =
    register_router("kern", {.route = kern_route, .make = [](const ModelConfig& m, uint64_t seed) -> std::shared_ptr<RouterImpl> {
                               return std::make_shared<KernRouterImpl>(m, seed);
                             }});

}  // namespace

double kern_monte_carlo_scale(int experts, const GateRule& rule, int samples, uint64_t seed) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto y = at::normal(0.0, 1.0, {samples, experts}, generator, torch::kFloat64);
  auto gate = route_scores(y, rule, torch::ones({}, torch::kFloat64)).gate.to(torch::kFloat64);
  auto norm = gate.norm(2, -1);
  auto usable = norm > 0;  // all k kept scores negative under ReLU: no finite scale, vanishingly rare
  return (1.0 / norm.masked_select(usable)).mean().item<double>();
}

}  // namespace moelab
