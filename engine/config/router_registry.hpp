// The router registry: one row per router, in the order tables and plots show them. Config parsing
// (names and aliases), model construction (the module the router's own file in engine/model/routers/
// registers under the row's name), parameter counts, report order and labels, and plot colours all
// read it. Adding a router is its own file in engine/model/routers/ plus one row in router_registry.cpp.
// Torch-free, so that the config, the store and the reports build without LibTorch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/config/job_config.hpp"

namespace moelab {

// A variant of a router chosen by its own options (KERN without ReLU, ...). Its label is the router's
// name plus `suffix`; several variants at once append their suffixes in the row's order.
struct RouterVariant {
  std::string suffix;                     // "_no_relu"
  std::string colour;                     // plot colour when it is the only variant set
  bool (*is_set)(const ModelConfig& m);   // whether m is this variant
  void (*set)(ModelConfig& m);            // makes m this variant
  bool alias = true;                      // the label is also a value model.router accepts
};

struct RouterRow {
  std::string name;     // model.router's value, and the label of the router without variants
  std::string colour;   // plot colour, the same in every figure
  // Learned router parameters of one MoE layer with `experts` experts over `d_model`; null only for
  // "dense", which has no router and no experts.
  int64_t (*parameters)(int64_t experts, int64_t d_model) = nullptr;
  // Whether an auxiliary loss has router parameters to train (K-Means balances by its own bias only).
  bool trained_by_gradient = true;
  // The config object of the router's own options ("model.kern"): the label already says them, so
  // reports do not show them as settings. Empty when it has none.
  std::string options_path;
  std::vector<RouterVariant> variants;

  bool has_experts() const { return parameters != nullptr; }
};

const std::vector<RouterRow>& router_rows();

// The row of a router's canonical name (ModelConfig::router after parsing); throws ConfigError
// "model.router: unknown router ..." listing every accepted name.
const RouterRow& router_row(const std::string& name);

// Resolves model.router as parsed: an alias ("kern_no_relu") becomes its router with the variant's
// options set, so that both spellings are one job; throws ConfigError for an unknown name.
void resolve_router_name(ModelConfig& m);

// Every label in display order: each row's name, then its variants' labels.
std::vector<std::string> router_labels();
// Position of a label (ModelConfig::router_label()) in tables and plots; labels the registry does not
// list (several variants at once) come after all that it does.
int router_order(const std::string& label);
// The plot colour of a label, or "" when the registry has none for it (reports/plot.py picks one).
std::string router_colour(const std::string& label);
// Whether a dotted config path is part of what a router label says (model.router, a router's options).
bool is_router_path(const std::string& path);

}  // namespace moelab
