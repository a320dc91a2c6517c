#include "engine/model/router.hpp"

#include <cmath>
#include <random>

#include "engine/model/kern_gate.hpp"

namespace moelab {
namespace {

constexpr double kNormEps = 1e-8;  // keeps norms and sums off zero in divisions

// Gate values over all experts for routers that score every expert before top-k.
torch::Tensor dense_gates(const torch::Tensor& s, const GateRule& rule, const torch::Tensor& gamma) {
  switch (rule.kind) {
    case RouterKind::Softmax: return torch::softmax(s, -1);
    case RouterKind::Sigmoid: return torch::sigmoid(s);
    case RouterKind::Tanh: return torch::tanh(s);
    case RouterKind::Kern: return kern_gate(s, gamma, rule.kern.relu);
    case RouterKind::KMeans: return s;  // cosine similarities; gates are set to 1/k after selection
    case RouterKind::Dense: break;
  }
  TORCH_CHECK(false, "dense models have no router");
}

}  // namespace

GateRule gate_rule(const ModelConfig& m) {
  return GateRule{m.router_kind(), m.active_experts(), m.renormalize, m.kern};
}

Routing route_scores(const torch::Tensor& scores, const GateRule& rule, const torch::Tensor& gamma,
                     const torch::Tensor& selection_bias) {
  // Half-precision scores are promoted; fp64 stays fp64 so gradients can be checked numerically.
  auto s = scores.scalar_type() == torch::kDouble ? scores : scores.to(torch::kFloat);
  auto shifted = [&](const torch::Tensor& v) { return selection_bias.defined() ? v + selection_bias : v; };
  Routing r;
  if (rule.kind == RouterKind::Kern && rule.kern.after_topk) {
    // KERN-After: choose on raw scores, then normalise over the k kept scores only.
    r.expert_index = std::get<1>(shifted(s).topk(rule.top_k, -1));
    r.gate = kern_gate(s.gather(-1, r.expert_index), gamma, rule.kern.relu);
  } else {
    auto g = dense_gates(s, rule, gamma);
    r.expert_index = std::get<1>(shifted(g).topk(rule.top_k, -1));
    r.gate = rule.kind == RouterKind::KMeans ? torch::full_like(r.expert_index, 1.0 / rule.top_k, s.options())
                                            : g.gather(-1, r.expert_index);
  }
  if (rule.renormalize) r.gate = r.gate / (r.gate.sum(-1, true) + kNormEps);
  r.aux_loss = torch::zeros({}, s.options());
  return r;
}

double kern_monte_carlo_scale(int experts, const GateRule& rule, int samples, uint64_t seed) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto y = at::normal(0.0, 1.0, {samples, experts}, generator, torch::kFloat64);
  auto gate = route_scores(y, rule, torch::ones({}, torch::kFloat64)).gate.to(torch::kFloat64);
  auto norm = gate.norm(2, -1);
  auto usable = norm > 0;  // all k kept scores negative under ReLU: no finite scale, vanishingly rare
  return (1.0 / norm.masked_select(usable)).mean().item<double>();
}

torch::Tensor count_per_expert(const torch::Tensor& expert_index, int64_t experts) {
  auto flat = expert_index.flatten();
  return torch::zeros({experts}, flat.options()).scatter_add_(0, flat, torch::ones_like(flat));
}

RouterImpl::RouterImpl(const ModelConfig& m, uint64_t seed) : config_(m), rule_(gate_rule(m)) {
  const int E = m.total_experts();
  if (rule_.kind == RouterKind::KMeans) {
    auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
    auto c = at::normal(0.0, 1.0, {E, m.d_model}, generator);
    centroids_ = register_buffer("centroids", c / c.norm(2, -1, true));
  } else {
    proj_ = register_module("proj", torch::nn::Linear(m.d_model, E));
  }
  if (rule_.kind == RouterKind::Kern) {
    double init = m.kern.init == "monte_carlo" ? kern_monte_carlo_scale(E, rule_, 20000, seed) : 1.0;
    gamma_ = register_parameter("gamma", torch::full({}, init));
  }
  if (m.balance_kind() == Balance::AuxFree || rule_.kind == RouterKind::KMeans)
    selection_bias_ = register_buffer("selection_bias", torch::zeros({E}));
  load_counts_ = register_buffer("load_counts", torch::zeros({E}, torch::kFloat64));
  positive_gates_ = register_buffer("positive_gates", torch::zeros({}, torch::kFloat64));
  fewer_than_k_ = register_buffer("fewer_than_k", torch::zeros({}, torch::kFloat64));
  routed_tokens_ = register_buffer("routed_tokens", torch::zeros({}, torch::kFloat64));
}

torch::Tensor RouterImpl::scores(const torch::Tensor& x) {
  // Router math stays in fp32 under autocast: top-k on bf16 scores would tie and flip experts.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKeySet(c10::DispatchKey::AutocastCUDA));
  auto x32 = x.to(torch::kFloat);
  if (rule_.kind == RouterKind::KMeans) return torch::mm(x32 / (x32.norm(2, -1, true) + kNormEps), centroids_.t());
  return proj_(x32);
}

Routing RouterImpl::forward(const torch::Tensor& x) {
  auto s = scores(x);
  auto r = route_scores(s, rule_, gamma_, selection_bias_);
  r.aux_loss = balance_loss(s, r.expert_index);
  if (is_training()) update_balancing_state(x, r);
  return r;
}

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
  if (rule_.kind == RouterKind::KMeans) {
    // Each centroid moves toward the mean direction of the tokens routed to it; unused ones stay.
    auto x32 = x.to(torch::kFloat);
    auto unit = x32 / (x32.norm(2, -1, true) + kNormEps);
    auto k = r.expert_index.size(1);
    auto sums = torch::zeros_like(centroids_).index_add_(0, r.expert_index.flatten(), unit.repeat_interleave(k, 0));
    auto hit = (counts > 0).unsqueeze(1).to(torch::kFloat);
    auto means = sums / counts.clamp_min(1).unsqueeze(1).to(torch::kFloat);
    const double decay = config_.centroid_decay;
    auto moved = decay * centroids_ + (1 - decay) * means;
    moved = moved / (moved.norm(2, -1, true) + kNormEps);
    centroids_.copy_(hit * moved + (1 - hit) * centroids_);
  }
}

std::vector<torch::Tensor> RouterImpl::statistics() const {
  return {load_counts_, positive_gates_, fewer_than_k_, routed_tokens_};
}

std::vector<torch::Tensor> RouterImpl::balancing_state() const {
  std::vector<torch::Tensor> state;
  for (const auto& t : {selection_bias_, centroids_})
    if (t.defined()) state.push_back(t);
  return state;
}

torch::Tensor RouterImpl::direction_rows() const { return centroids_.defined() ? centroids_ : proj_->weight; }

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
