// Routers (DESIGN.md "Routers"): from a token's hidden state to the k experts it visits and their
// gate values. Scores s = W x + b; each router turns s into gate values, top-k keeps k per token.
// Router math runs in fp32 whatever the surrounding precision.
#pragma once

#include <torch/torch.h>

#include "engine/config/job_config.hpp"

namespace moelab {

struct Routing {
  torch::Tensor expert_index;  // [T, k] int64
  torch::Tensor gate;          // [T, k] fp32
  torch::Tensor aux_loss;      // scalar: auxiliary + z-loss terms already scaled by their coefficients
};

// How gate values come from scores; everything a test needs to route fixed logits by hand.
struct GateRule {
  RouterKind kind = RouterKind::Softmax;
  int top_k = 1;
  bool renormalize = false;
  KernOptions kern;
};

GateRule gate_rule(const ModelConfig& m);

// Gate values and top-k from scores [T, E]. `gamma` scales KERN gates (ignored otherwise);
// `selection_bias` [E] (may be undefined) shifts which experts are chosen but not the gate values
// (auxiliary-loss-free balancing). KMeans scores are cosine similarities; its gates are 1/k.
Routing route_scores(const torch::Tensor& scores, const GateRule& rule, const torch::Tensor& gamma,
                     const torch::Tensor& selection_bias = {});

// KERN's Monte-Carlo gamma (appendix I/L): E[1 / ||g(y)||_2] with g the KERN gate rule at gamma 1
// and y ~ N(0, I_E), estimated from `samples` draws of a generator seeded with `seed`.
double kern_monte_carlo_scale(int experts, const GateRule& rule, int samples, uint64_t seed);

// Routed slots per expert: [experts] int64 on expert_index's device. A scatter-add, not
// torch::bincount, whose CUDA kernel copies the index's min and max to the host (two syncs a call).
torch::Tensor count_per_expert(const torch::Tensor& expert_index, int64_t experts);

// Per-layer routing counters accumulated during training and read at evaluation time.
struct RoutingSnapshot {
  std::vector<double> expert_fraction;
  double load_std = 0, load_max_over_mean = 0, positive_gates = 0, router_cosine = 0;
  double fewer_than_k = 0;  // share of tokens with fewer than k positive gates (ReLU zeroed some)
  int dead_experts = 0;
};

class RouterImpl : public torch::nn::Module {
 public:
  RouterImpl(const ModelConfig& m, uint64_t seed);
  Routing forward(const torch::Tensor& x);  // x [T, d]
  RoutingSnapshot take_snapshot();          // statistics since the last snapshot, then resets them
  // The counters behind the snapshot; data-parallel ranks sum them before one rank takes it.
  std::vector<torch::Tensor> statistics() const;
  // State moved by the routed tokens rather than by gradients (selection bias, K-Means centroids);
  // empty for routers without it. Data-parallel ranks average it after every step.
  std::vector<torch::Tensor> balancing_state() const;

 private:
  torch::Tensor scores(const torch::Tensor& x);
  torch::Tensor balance_loss(const torch::Tensor& scores, const torch::Tensor& expert_index) const;
  void update_balancing_state(const torch::Tensor& x, const Routing& r);
  torch::Tensor direction_rows() const;  // router rows (or centroids) whose cosine similarity is reported

  ModelConfig config_;
  GateRule rule_;
  torch::nn::Linear proj_{nullptr};        // learned routers: s = W x + b
  torch::Tensor gamma_;                    // KERN: learnable scale
  torch::Tensor centroids_;                // kmeans: [E, d] unit rows, EMA of routed hidden states
  torch::Tensor selection_bias_;           // aux_free / kmeans: [E], updated by sign of load error
  torch::Tensor load_counts_, positive_gates_, fewer_than_k_, routed_tokens_;  // statistics since last snapshot
};
TORCH_MODULE(Router);

}  // namespace moelab
