#include "engine/config/router_registry.hpp"

#include <algorithm>

namespace moelab {
namespace {

// W x + b: one row of d_model weights and a bias per expert.
int64_t linear_scores(int64_t experts, int64_t d_model) { return experts * d_model + experts; }

}  // namespace

// The rows, in the paper's order. Colours are matplotlib's tab10, so that figures look as before.
const std::vector<RouterRow>& router_rows() {
  static const std::vector<RouterRow> rows = {
      {.name = "dense", .colour = "#7f7f7f"},
      {.name = "softmax", .colour = "#1f77b4", .parameters = linear_scores},
      {.name = "sigmoid", .colour = "#2ca02c", .parameters = linear_scores},
      {.name = "tanh", .colour = "#ff7f0e", .parameters = linear_scores},
      {.name = "kern",
       .colour = "#d62728",
       .parameters = [](int64_t experts, int64_t d_model) { return linear_scores(experts, d_model) + 1; },  // + gamma
       .options_path = "model.kern",
       .variants = {{"_no_relu", "#9467bd", [](const ModelConfig& m) { return !m.kern.relu; },
                     [](ModelConfig& m) { m.kern.relu = false; }},
                    {"_after_topk", "#8c564b", [](const ModelConfig& m) { return m.kern.after_topk; },
                     [](ModelConfig& m) { m.kern.after_topk = true; }},
                    {"_mc", "#bcbd22", [](const ModelConfig& m) { return m.kern.init == "monte_carlo"; },
                     [](ModelConfig& m) { m.kern.init = "monte_carlo"; }, /*alias=*/false}}},
      {.name = "kmeans",
       .colour = "#e377c2",
       .parameters = [](int64_t, int64_t) { return int64_t(0); },  // centroids and bias are buffers
       .trained_by_gradient = false},
  };
  return rows;
}

namespace {

// Every value model.router accepts: each row's name, then its aliases.
std::vector<std::string> accepted_names() {
  std::vector<std::string> names;
  for (auto& row : router_rows()) {
    names.push_back(row.name);
    for (auto& v : row.variants)
      if (v.alias) names.push_back(row.name + v.suffix);
  }
  return names;
}

[[noreturn]] void unknown_router(const std::string& name) {
  const auto names = accepted_names();
  std::string list;
  for (auto& n : names) list += (list.empty() ? "" : ", ") + n;
  throw ConfigError("model.router: unknown router \"" + name + "\" (expected one of: " + list + ")" +
                    did_you_mean(name, names));
}

}  // namespace

const RouterRow& router_row(const std::string& name) {
  for (auto& row : router_rows())
    if (row.name == name) return row;
  unknown_router(name);
}

void resolve_router_name(ModelConfig& m) {
  for (auto& row : router_rows()) {
    if (row.name == m.router) return;
    for (auto& v : row.variants) {
      if (!v.alias || m.router != row.name + v.suffix) continue;
      m.router = row.name;
      v.set(m);
      return;
    }
  }
  unknown_router(m.router);
}

bool ModelConfig::is_moe() const { return router_row(router).has_experts(); }

std::string ModelConfig::router_label() const {
  const auto& row = router_row(router);
  std::string label = row.name;
  for (auto& v : row.variants)
    if (v.is_set(*this)) label += v.suffix;
  return label;
}

std::vector<std::string> router_labels() {
  std::vector<std::string> labels;
  for (auto& row : router_rows()) {
    labels.push_back(row.name);
    for (auto& v : row.variants) labels.push_back(row.name + v.suffix);
  }
  return labels;
}

int router_order(const std::string& label) {
  static const std::vector<std::string> labels = router_labels();
  auto it = std::find(labels.begin(), labels.end(), label);
  return int(it - labels.begin());
}

std::string router_colour(const std::string& label) {
  for (auto& row : router_rows()) {
    if (row.name == label) return row.colour;
    for (auto& v : row.variants)
      if (row.name + v.suffix == label) return v.colour;
  }
  return "";
}

bool is_router_path(const std::string& path) {
  if (path == "model.router") return true;
  for (auto& row : router_rows())
    if (!row.options_path.empty() && path.starts_with(row.options_path + ".")) return true;
  return false;
}

}  // namespace moelab
