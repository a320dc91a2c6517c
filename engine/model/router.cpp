#include "engine/model/router.hpp"

#include <map>
#include <stdexcept>

#include "engine/config/router_registry.hpp"

namespace moelab {
namespace {

constexpr double kNormEps = 1e-8;  // keeps norms and sums off zero in divisions

// A function-local map, so that registrations from other files' static initialisers find it built.
std::map<std::string, RouterModule>& modules() {
  static std::map<std::string, RouterModule> registered;
  return registered;
}

}  // namespace

bool register_router(const std::string& name, RouterModule module) {
  modules()[name] = module;
  return true;
}

std::vector<std::string> registered_routers() {
  std::vector<std::string> names;
  for (auto& [name, module] : modules()) names.push_back(name);
  return names;
}

const RouterModule& router_module(const std::string& name) {
  auto it = modules().find(name);
  if (it == modules().end())
    throw std::invalid_argument("router \"" + name + "\" has no module: " +
                                (router_row(name).has_experts() ? "its file in engine/model/routers/ registers none"
                                                                : "a model without experts has no router"));
  return it->second;
}

GateRule gate_rule(const ModelConfig& m) {
  return GateRule{m.router, m.active_experts(), m.renormalize, m.kern};
}

torch::Tensor top_k_experts(const torch::Tensor& values, const GateRule& rule, const torch::Tensor& selection_bias) {
  const auto& shifted = selection_bias.defined() ? values + selection_bias : values;
  return std::get<1>(shifted.topk(rule.top_k, -1));
}

Routing keep_top_k(const torch::Tensor& gates, const GateRule& rule, const torch::Tensor& selection_bias) {
  Routing r;
  r.expert_index = top_k_experts(gates, rule, selection_bias);
  r.gate = gates.gather(-1, r.expert_index);
  return r;
}

Routing route_scores(const torch::Tensor& scores, const GateRule& rule, const torch::Tensor& gamma,
                     const torch::Tensor& selection_bias) {
  // Half-precision scores are promoted; fp64 stays fp64 so gradients can be checked numerically.
  auto s = scores.scalar_type() == torch::kDouble ? scores : scores.to(torch::kFloat);
  Routing r = router_module(rule.router).route(s, rule, gamma, selection_bias);
  if (rule.renormalize) r.gate = r.gate / (r.gate.sum(-1, true) + kNormEps);
  r.aux_loss = torch::zeros({}, s.options());
  return r;
}

torch::Tensor count_per_expert(const torch::Tensor& expert_index, int64_t experts) {
  auto flat = expert_index.flatten();
  return torch::zeros({experts}, flat.options()).scatter_add_(0, flat, torch::ones_like(flat));
}

Router::Router(const ModelConfig& m, uint64_t seed) : ModuleHolder(router_module(m.router).make(m, seed)) {}

RouterImpl::RouterImpl(const ModelConfig& m, bool own_selection_bias) : config_(m), rule_(gate_rule(m)) {
  const int E = m.total_experts();
  if (m.balance_kind() == Balance::AuxFree || own_selection_bias)
    selection_bias_ = register_buffer("selection_bias", torch::zeros({E}));
  load_counts_ = register_buffer("load_counts", torch::zeros({E}, torch::kFloat64));
  positive_gates_ = register_buffer("positive_gates", torch::zeros({}, torch::kFloat64));
  fewer_than_k_ = register_buffer("fewer_than_k", torch::zeros({}, torch::kFloat64));
  routed_tokens_ = register_buffer("routed_tokens", torch::zeros({}, torch::kFloat64));
}

Routing RouterImpl::forward(const torch::Tensor& x) {
  torch::Tensor s;
  {
    // Router math stays in fp32 under autocast: top-k on bf16 scores would tie and flip experts.
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKeySet(c10::DispatchKey::AutocastCUDA));
    s = scores(x.to(torch::kFloat));
  }
  auto r = route(s);
  r.aux_loss = balance_loss(s, r.expert_index);
  if (is_training()) update_balancing_state(x, r);
  return r;
}

Routing RouterImpl::route(const torch::Tensor& s) { return route_scores(s, rule_, {}, selection_bias_); }

torch::Tensor RouterImpl::balance_loss(const torch::Tensor& s, const torch::Tensor& expert_index) const {
  auto loss = torch::zeros({}, s.options());
  if (config_.balance_kind() == Balance::AuxLoss) {
    // Switch Transformer: E * sum_e f_e * P_e, f_e the share of routed slots, P_e the mean softmax
    // probability. Softmax of the scores is the differentiable load proxy for every router.
    const int E = s.size(1);
    auto f = count_per_expert(expert_index, E).to(s.dtype()) / expert_index.numel();
    loss = loss + config_.aux_loss_coef * E * (f * torch::softmax(s, -1).mean(0)).sum();
  }
  if (config_.z_loss_coef > 0) loss = loss + config_.z_loss_coef * torch::logsumexp(s, -1).pow(2).mean();
  return loss;
}

void RouterImpl::update_balancing_state(const torch::Tensor& x, const Routing& r) {
  torch::NoGradGuard no_grad;
  const int E = load_counts_.size(0);
  auto counts = count_per_expert(r.expert_index, E).to(torch::kFloat64);
  load_counts_ += counts;
  auto positive = (r.gate > 0).sum(-1);
  positive_gates_ += positive.sum().to(torch::kFloat64);
  fewer_than_k_ += (positive < r.gate.size(1)).sum().to(torch::kFloat64);
  routed_tokens_ += static_cast<double>(r.gate.size(0));
  if (selection_bias_.defined()) {
    // Raise the bias of under-loaded experts and lower it for over-loaded ones (sign of the error).
    auto load = counts.to(torch::kFloat);
    selection_bias_ += config_.bias_update_rate * torch::sign(load.mean() - load);
  }
  learn(x, r, counts);
}

std::vector<torch::Tensor> RouterImpl::statistics() const {
  return {load_counts_, positive_gates_, fewer_than_k_, routed_tokens_};
}

std::vector<torch::Tensor> RouterImpl::balancing_state() const {
  if (selection_bias_.defined()) return {selection_bias_};
  return {};
}

RoutingSnapshot RouterImpl::take_snapshot() {
  torch::NoGradGuard no_grad;
  RoutingSnapshot snap;
  auto counts = load_counts_.cpu();
  double total = counts.sum().item<double>();
  auto fraction = total > 0 ? counts / total : counts;
  snap.expert_fraction.assign(fraction.data_ptr<double>(), fraction.data_ptr<double>() + fraction.numel());
  double mean = 1.0 / fraction.numel();
  snap.load_std = fraction.std(/*unbiased=*/false).item<double>();
  snap.load_max_over_mean = total > 0 ? fraction.max().item<double>() / mean : 0.0;
  snap.dead_experts = total > 0 ? (counts == 0).sum().item<int>() : 0;
  double tokens = routed_tokens_.item<double>();
  snap.positive_gates = tokens > 0 ? positive_gates_.item<double>() / tokens : 0.0;
  snap.fewer_than_k = tokens > 0 ? fewer_than_k_.item<double>() / tokens : 0.0;
  auto rows = direction_rows().to(torch::kFloat64).cpu();
  auto unit = rows / (rows.norm(2, -1, true) + kNormEps);
  auto cosine = torch::mm(unit, unit.t());
  const int E = rows.size(0);
  snap.router_cosine = E > 1 ? ((cosine.sum() - cosine.trace()) / (E * (E - 1))).item<double>() : 0.0;
  load_counts_.zero_(), positive_gates_.zero_(), fewer_than_k_.zero_(), routed_tokens_.zero_();
  return snap;
}

}  // namespace moelab
