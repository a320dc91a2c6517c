// Routers (DESIGN.md "Routers"): from a token's hidden state to the k experts it visits and their
// gate values. Every router is a RouterImpl whose own file in engine/model/routers/ registers it
// under its name in the router registry (engine/config/router_registry.hpp), which has its row.
// Router math runs in fp32 whatever the surrounding precision.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "engine/config/job_config.hpp"

namespace moelab {

struct Routing {
  torch::Tensor expert_index;  // [T, k] int64
  torch::Tensor gate;          // [T, k] fp32
  torch::Tensor aux_loss;      // scalar: auxiliary + z-loss terms already scaled by their coefficients
};

// How gate values come from scores; everything a test needs to route fixed logits by hand.
struct GateRule {
  std::string router = "softmax";  // a name in the router registry
  int top_k = 1;
  bool renormalize = false;
  KernOptions kern;
};

GateRule gate_rule(const ModelConfig& m);

// Gate values and top-k from scores [T, E], by the rule's router. `gamma` scales KERN gates (ignored
// otherwise); `selection_bias` [E] (may be undefined) shifts which experts are chosen but not the gate
// values (auxiliary-loss-free balancing). KMeans scores are cosine similarities; its gates are 1/k.
Routing route_scores(const torch::Tensor& scores, const GateRule& rule, const torch::Tensor& gamma,
                     const torch::Tensor& selection_bias = {});

// For routers' own files: the rule's k experts with the largest `values` [T, E] plus the selection
// bias, and those experts' gate values taken from `gates` [T, E].
torch::Tensor top_k_experts(const torch::Tensor& values, const GateRule& rule, const torch::Tensor& selection_bias);
Routing keep_top_k(const torch::Tensor& gates, const GateRule& rule, const torch::Tensor& selection_bias);

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

// What every router shares: scores -> routing -> balancing loss, the selection bias, and the
// statistics behind the snapshot. A router says how it scores and routes, and what it learns from
// the tokens routed to it.
class RouterImpl : public torch::nn::Module {
 public:
  Routing forward(const torch::Tensor& x);  // x [T, d]
  RoutingSnapshot take_snapshot();          // statistics since the last snapshot, then resets them
  // The counters behind the snapshot; data-parallel ranks sum them before one rank takes it.
  std::vector<torch::Tensor> statistics() const;
  // State moved by the routed tokens rather than by gradients (selection bias, K-Means centroids);
  // empty for routers without it. Data-parallel ranks average it after every step.
  virtual std::vector<torch::Tensor> balancing_state() const;

 protected:
  // `own_selection_bias`: the router balances by a selection bias whatever model.balance says.
  RouterImpl(const ModelConfig& m, bool own_selection_bias = false);
  virtual torch::Tensor scores(const torch::Tensor& x) = 0;  // x [T, d] fp32 -> [T, E]
  virtual Routing route(const torch::Tensor& scores);        // route_scores with the router's own state
  // After the statistics of a training step: state the routed tokens move (K-Means' centroids).
  virtual void learn(const torch::Tensor& x, const Routing& r, const torch::Tensor& counts) {}
  virtual torch::Tensor direction_rows() const = 0;  // router rows (or centroids) whose cosine similarity is reported

  const ModelConfig config_;
  const GateRule rule_;
  torch::Tensor selection_bias_;  // aux_free, or the router's own: [E], updated by sign of load error

 private:
  torch::Tensor balance_loss(const torch::Tensor& scores, const torch::Tensor& expert_index) const;
  void update_balancing_state(const torch::Tensor& x, const Routing& r);

  torch::Tensor load_counts_, positive_gates_, fewer_than_k_, routed_tokens_;  // statistics since last snapshot
};

// A module holder, as TORCH_MODULE declares one, that builds the router m.router names.
class Router : public torch::nn::ModuleHolder<RouterImpl> {
 public:
  Router(std::nullptr_t) : ModuleHolder(nullptr) {}
  Router(std::shared_ptr<RouterImpl> impl) : ModuleHolder(std::move(impl)) {}
  Router(const ModelConfig& m, uint64_t seed);
};

// What a router's own file registers under its registry name.
struct RouterModule {
  // Gate values and top-k from fp32 (fp64 in tests) scores; route_scores renormalises after it.
  Routing (*route)(const torch::Tensor& scores, const GateRule& rule, const torch::Tensor& gamma,
                   const torch::Tensor& selection_bias);
  std::shared_ptr<RouterImpl> (*make)(const ModelConfig& m, uint64_t seed);
};

// Called once per router, from a static initialiser in its own file (which is why the engine is
// linked whole: engine/CMakeLists.txt). Returns true, so that the file can keep the result.
bool register_router(const std::string& name, RouterModule module);
// Names with a registered module, sorted.
std::vector<std::string> registered_routers();
// The module registered under a registry name; throws std::invalid_argument when there is none.
const RouterModule& router_module(const std::string& name);

}  // namespace moelab
