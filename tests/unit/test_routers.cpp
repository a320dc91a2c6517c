// Router gate values on fixed logits against numbers worked out by hand, gradients against finite
// differences in fp64, and KERN's Monte-Carlo scale against an independent estimate.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "engine/model/kern_gate.hpp"
#include "engine/model/router.hpp"
#include "engine/model/routers/kern_router.hpp"
#include "kern_gate_cases.hpp"

using namespace moelab;

namespace {

GateRule rule(const std::string& router, int k, bool renormalize = false, KernOptions kern = {}) {
  return GateRule{router, k, renormalize, kern};
}

torch::Tensor logits() { return torch::tensor({1.0, 2.0, -1.0, 0.5}, torch::kFloat64).unsqueeze(0); }
torch::Tensor kern_gamma(double g) { return torch::full({}, g, torch::kFloat64); }

void expect_route(const Routing& r, std::vector<int64_t> index, std::vector<double> gate, double tol = 1e-6) {
  ASSERT_EQ(r.expert_index.size(1), int64_t(index.size()));
  for (size_t j = 0; j < index.size(); ++j) {
    EXPECT_EQ(r.expert_index[0][j].item<int64_t>(), index[j]) << "slot " << j;
    EXPECT_NEAR(r.gate[0][j].item<double>(), gate[j], tol) << "slot " << j;
  }
}

}  // namespace

// exp(1), exp(2), exp(-1), exp(0.5) = 2.718282, 7.389056, 0.367879, 1.648721; sum 12.123939.
TEST(Router, SoftmaxKeepsTopProbabilities) {
  expect_route(route_scores(logits(), rule("softmax", 2), {}), {1, 0}, {0.609460, 0.224208});
}

// Renormalised over the two kept: e^2 / (e^2 + e^1) = sigmoid(1) = 0.731059.
TEST(Router, SoftmaxRenormalisedSumsToOne) {
  expect_route(route_scores(logits(), rule("softmax", 2, true), {}), {1, 0}, {0.731059, 0.268941});
}

TEST(Router, SigmoidAndTanhGateTheKeptScores) {
  expect_route(route_scores(logits(), rule("sigmoid", 2), {}), {1, 0}, {0.880797, 0.731059});
  expect_route(route_scores(logits(), rule("tanh", 3), {}), {1, 0, 3}, {0.964028, 0.761594, 0.462117});
}

// ||s|| = sqrt(1 + 4 + 1 + 0.25) = 2.5; s / ||s|| = (0.4, 0.8, -0.4, 0.2); times gamma 1.5.
TEST(Router, KernNormalisesRectifiesAndScales) {
  expect_route(route_scores(logits(), rule("kern", 2), kern_gamma(1.5)), {1, 0}, {1.2, 0.6});
}

// With k = 4 the fourth expert is still chosen although ReLU zeroed its gate.
TEST(Router, KernKeepsZeroGatesAmongTheTopK) {
  auto r = route_scores(logits(), rule("kern", 4), kern_gamma(1.0));
  expect_route(r, {1, 0, 3, 2}, {0.8, 0.4, 0.2, 0.0});
  EXPECT_EQ((r.gate > 0).sum().item().toLong(), 3);
}

TEST(Router, KernWithoutReluKeepsNegativeGates) {
  KernOptions no_relu{.relu = false};
  expect_route(route_scores(logits(), rule("kern", 4, false, no_relu), kern_gamma(1.0)), {1, 0, 3, 2},
               {0.8, 0.4, 0.2, -0.4});
}

// s = (3, -4, 0.5, 0): before top-k ||s|| = sqrt(25.25); after top-2 only (3, 0.5) are normalised.
TEST(Router, KernAfterTopKNormalisesOnlyTheKeptScores) {
  auto s = torch::tensor({3.0, -4.0, 0.5, 0.0}, torch::kFloat64).unsqueeze(0);
  KernOptions after{.after_topk = true};
  const double kept_norm = std::sqrt(9.0 + 0.25), full_norm = std::sqrt(25.25);
  expect_route(route_scores(s, rule("kern", 2, false, after), kern_gamma(1.0)), {0, 2},
               {3.0 / kept_norm, 0.5 / kept_norm});
  expect_route(route_scores(s, rule("kern", 2), kern_gamma(1.0)), {0, 2}, {3.0 / full_norm, 0.5 / full_norm});
}

// A token whose scores are all zero has no direction: its gates come out uniform, gamma / sqrt(E),
// and its gradients finite, instead of 0 / 0. The other token's gates are unaffected.
TEST(Router, KernGivesAnAllZeroRowUniformGates) {
  auto s = torch::cat({torch::zeros({1, 4}, torch::kFloat64), logits()}).requires_grad_(true);
  auto r = route_scores(s, rule("kern", 2), kern_gamma(1.0));
  EXPECT_TRUE(torch::allclose(r.gate[0], torch::full({2}, 0.5, torch::kFloat64), 1e-9, 1e-9)) << r.gate;
  EXPECT_TRUE(torch::allclose(r.gate[1], torch::tensor({0.8, 0.4}, torch::kFloat64), 1e-7, 1e-7)) << r.gate;
  r.gate.sum().backward();
  EXPECT_TRUE(torch::isfinite(s.grad()).all().item<bool>()) << s.grad();
}

// A selection bias changes which experts are chosen but the gates stay the unbiased KERN values.
TEST(Router, SelectionBiasChoosesButDoesNotGate) {
  auto bias = torch::tensor({0.0, 0.0, 0.0, 1.0}, torch::kFloat64);
  expect_route(route_scores(logits(), rule("kern", 2), kern_gamma(1.0), bias), {3, 1}, {0.2, 0.8});
}

TEST(Router, KMeansGatesAreUniformOverTheChosen) {
  auto cosine = torch::tensor({0.1, 0.9, -0.3, 0.5}, torch::kFloat64).unsqueeze(0);
  expect_route(route_scores(cosine, rule("kmeans", 2), {}), {1, 3}, {0.5, 0.5});
}

// d(sum w * gate) / d(scores, gamma) from autograd against central differences, fp64.
TEST(Router, GradientsMatchFiniteDifferences) {
  torch::manual_seed(3);
  std::vector<GateRule> rules = {rule("softmax", 3), rule("softmax", 3, true),
                                 rule("sigmoid", 3), rule("tanh", 3), rule("kern", 3),
                                 rule("kern", 3, false, {.relu = false}),
                                 rule("kern", 3, false, {.after_topk = true})};
  for (auto& r : rules) {
    auto s = torch::randn({5, 8}, torch::kFloat64).requires_grad_(true);
    auto g = torch::full({}, 1.3, torch::kFloat64).requires_grad_(true);
    auto w = torch::randn({5, 3}, torch::kFloat64);
    auto objective = [&](const torch::Tensor& scores, const torch::Tensor& gam) {
      return (route_scores(scores, r, gam).gate * w).sum();
    };
    objective(s, g).backward();
    const double h = 1e-6;
    torch::NoGradGuard no_grad;
    auto flat = s.detach().clone().flatten();
    for (int64_t i = 0; i < flat.numel(); ++i) {
      auto plus = flat.clone(), minus = flat.clone();
      plus[i] += h, minus[i] -= h;
      double numeric = (objective(plus.view({5, 8}), g).item<double>() - objective(minus.view({5, 8}), g).item<double>()) / (2 * h);
      EXPECT_NEAR(s.grad().flatten()[i].item<double>(), numeric, 1e-6) << "router " << r.router << " score " << i;
    }
    if (r.router == "kern") {
      double numeric = (objective(s, g + h).item<double>() - objective(s, g - h).item<double>()) / (2 * h);
      EXPECT_NEAR(g.grad().item<double>(), numeric, 1e-6);
    }
  }
}

// The CPU's one-pass KERN gate gives what ATen's composition gives (kern_gate_cases.hpp), and
// gamma's gradient, summed after the parallel loop, is the same when run again.
TEST(KernGate, CpuPassEqualsTheAtenComposition) { moelab::testing::expect_kern_gate_equals_the_composition(torch::kCPU); }

// An estimate of E[1 / ||top-k(ReLU(y / ||y||))||_2] written with plain loops and another generator.
TEST(Router, MonteCarloScaleAgreesWithAnIndependentEstimate) {
  const int E = 16, k = 4, n = 40000;
  std::mt19937_64 rng(12345);
  std::normal_distribution<double> normal;
  double sum = 0, sum_sq = 0;
  int used = 0;
  for (int i = 0; i < n; ++i) {
    std::vector<double> y(E);
    double norm = 0;
    for (auto& v : y) v = normal(rng), norm += v * v;
    norm = std::sqrt(norm);
    for (auto& v : y) v = std::max(0.0, v / norm);
    std::partial_sort(y.begin(), y.begin() + k, y.end(), std::greater<>());
    double kept = 0;
    for (int j = 0; j < k; ++j) kept += y[j] * y[j];
    if (kept == 0) continue;
    double x = 1 / std::sqrt(kept);
    sum += x, sum_sq += x * x, ++used;
  }
  const double mean = sum / used, standard_error = std::sqrt((sum_sq / used - mean * mean) / used);
  const double ours = kern_monte_carlo_scale(E, rule("kern", k), 20000, 7);
  EXPECT_NEAR(ours, mean, 5 * standard_error * std::sqrt(1.0 + double(used) / 20000));
  EXPECT_GT(ours, 1.0);  // the kept part of a unit vector has norm below 1
}

namespace {

ModelConfig layer_config(const std::string& router, int experts, int top_k, int d_model = 4) {
  ModelConfig m;
  m.router = router, m.experts = experts, m.top_k = top_k, m.d_model = d_model, m.expert_size = 8;
  return m;
}

torch::Tensor buffer(torch::nn::Module& module, const std::string& name) { return module.named_buffers()[name]; }

}  // namespace

// Switch loss = coef * E * sum_e f_e * P_e with f the share of routed slots and P the mean softmax.
TEST(RouterBalancing, AuxiliaryAndZLossMatchTheirFormulas) {
  auto m = layer_config("softmax", 4, 1);
  m.balance = "aux_loss", m.aux_loss_coef = 0.5, m.z_loss_coef = 0.1;
  Router router(m, 0);
  torch::manual_seed(1);
  auto x = torch::randn({6, 4});
  auto r = router(x);
  auto s = router->named_modules()["proj"]->as<torch::nn::Linear>()->forward(x).to(torch::kFloat64);
  auto p = torch::softmax(s, -1);
  std::vector<double> f(4, 0.0);
  for (int t = 0; t < 6; ++t) f[p[t].argmax().item<int64_t>()] += 1.0 / 6;
  double aux = 0, z = 0;
  for (int e = 0; e < 4; ++e) aux += f[e] * p.select(1, e).mean().item<double>();
  for (int t = 0; t < 6; ++t) z += std::pow(torch::logsumexp(s[t], 0).item<double>(), 2) / 6;
  EXPECT_NEAR(r.aux_loss.item<double>(), 0.5 * 4 * aux + 0.1 * z, 1e-5);
}

// Aux-loss-free balancing: after a training step the bias of each expert moves by the sign of
// (mean load - its load); evaluation leaves it alone.
TEST(RouterBalancing, AuxFreeBiasFollowsTheSignOfTheLoadError) {
  auto m = layer_config("kern", 4, 1);
  m.balance = "aux_free", m.bias_update_rate = 0.25;
  Router router(m, 0);
  auto x = torch::randn({16, 4});
  router->eval();
  router(x);
  EXPECT_TRUE(torch::equal(buffer(*router, "selection_bias"), torch::zeros({4})));
  router->train();
  auto r = router(x);
  auto load = torch::bincount(r.expert_index.flatten(), {}, 4).to(torch::kFloat);
  auto expected = 0.25 * torch::sign(load.mean() - load);
  EXPECT_TRUE(torch::allclose(buffer(*router, "selection_bias"), expected)) << buffer(*router, "selection_bias");
}

// K-Means: with decay 0 a centroid becomes the normalised mean direction of the tokens routed to it.
TEST(RouterBalancing, KMeansCentroidsMoveToTheirTokens) {
  auto m = layer_config("kmeans", 3, 1);
  m.centroid_decay = 0.0;
  Router router(m, 0);
  auto before = buffer(*router, "centroids").clone();
  auto x = torch::randn({12, 4});
  auto r = router(x);
  auto unit = x / x.norm(2, -1, true);
  auto after = buffer(*router, "centroids");
  for (int e = 0; e < 3; ++e) {
    auto mine = (r.expert_index.select(1, 0) == e).nonzero().flatten();
    if (mine.numel() == 0) {
      EXPECT_TRUE(torch::allclose(after[e], before[e])) << "an unused centroid stays";
      continue;
    }
    auto mean = unit.index_select(0, mine).mean(0);
    EXPECT_TRUE(torch::allclose(after[e], mean / mean.norm(), 1e-5, 1e-5)) << "expert " << e;
  }
}

// The snapshot reads the counters of the training steps since the last one, then starts over.
TEST(RouterBalancing, SnapshotSummarisesLoadAndPositiveGates) {
  auto m = layer_config("kern", 4, 2);
  Router router(m, 0);
  auto x = torch::randn({32, 4});
  auto r = router(x);
  auto snap = router->take_snapshot();
  auto load = torch::bincount(r.expert_index.flatten(), {}, 4).to(torch::kFloat64) / 64.0;
  for (int e = 0; e < 4; ++e) EXPECT_NEAR(snap.expert_fraction[e], load[e].item<double>(), 1e-12);
  EXPECT_EQ(snap.dead_experts, (load == 0).sum().item<int64_t>());
  EXPECT_NEAR(snap.positive_gates, (r.gate > 0).sum().item<double>() / 32.0, 1e-12);
  EXPECT_NEAR(snap.load_max_over_mean, load.max().item<double>() * 4, 1e-12);
  EXPECT_NEAR(snap.fewer_than_k, ((r.gate > 0).sum(-1) < 2).sum().item<double>() / 32.0, 1e-12);
  EXPECT_EQ(router->take_snapshot().positive_gates, 0.0);
}
