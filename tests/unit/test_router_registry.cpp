// The router registry drives everything a router needs: each row's name and aliases parse, its
// module is registered and builds, its parameter count is what the built model has, and it has a
// place and a colour in reports. The state keys each router's module holds are those that
// checkpoints written before the registry hold, so that they still load.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

#include "engine/config/router_registry.hpp"
#include "engine/model/gpt.hpp"

using namespace moelab;
using nlohmann::json;

namespace {

json small_model(const std::string& router) {
  return {{"model", {{"router", router}, {"vocab_size", 50}, {"seq_len", 16}, {"layers", 2}, {"d_model", 24},
                     {"heads", 4}, {"experts", 8}, {"top_k", 2}, {"expert_size", 32}}}};
}

std::vector<std::string> keys(const torch::OrderedDict<std::string, torch::Tensor>& dict) {
  std::vector<std::string> out;
  for (auto& item : dict) out.push_back(item.key());
  return out;
}

}  // namespace

TEST(RouterRegistry, EveryRowParsesBuildsAndCountsItsParameters) {
  for (auto& row : router_rows()) {
    auto config = parse_job_config(small_model(row.name));
    EXPECT_EQ(config.model.router, row.name);
    EXPECT_EQ(config.model.router_label(), row.name);
    EXPECT_EQ(config.model.is_moe(), row.has_experts()) << row.name;
    Gpt model(config.model, 0);
    int64_t counted = 0;
    for (auto& p : model->parameters()) counted += p.numel();
    EXPECT_EQ(model_size(config.model).total_params, counted) << row.name;
    EXPECT_EQ(model->moe_layers().size(), row.has_experts() ? 2u : 0u) << row.name;
    if (!row.has_experts()) continue;
    int64_t router_parameters = 0;
    for (auto& p : model->moe_layers()[0]->router->parameters()) router_parameters += p.numel();
    EXPECT_EQ(router_parameters, row.parameters(8, 24)) << row.name;
  }
}

// Each alias is its router with the variant's options: the same job, under the variant's label.
TEST(RouterRegistry, AliasesAreTheirRouterWithTheVariantsOptions) {
  int aliases = 0;
  for (auto& row : router_rows())
    for (auto& v : row.variants) {
      auto spelt_out = parse_job_config(small_model(row.name));
      v.set(spelt_out.model);
      EXPECT_EQ(spelt_out.model.router_label(), row.name + v.suffix);
      if (!v.alias) continue;
      ++aliases;
      auto alias = parse_job_config(small_model(row.name + v.suffix));
      EXPECT_EQ(alias.model.router, row.name);
      EXPECT_EQ(alias.model.router_label(), row.name + v.suffix);
      EXPECT_EQ(alias.hash(), spelt_out.hash()) << row.name + v.suffix;
    }
  EXPECT_EQ(aliases, 2);  // kern_no_relu, kern_after_topk
}

TEST(RouterRegistry, AnUnknownNameListsEveryAcceptedOne) {
  try {
    parse_job_config(small_model("softmx"));
    FAIL() << "accepted an unknown router";
  } catch (const ConfigError& e) {
    const std::string message = e.what();
    EXPECT_TRUE(message.starts_with("model.router: unknown router \"softmx\"")) << message;
    for (auto& row : router_rows()) {
      EXPECT_NE(message.find(row.name), std::string::npos) << message;
      for (auto& v : row.variants)
        EXPECT_EQ(message.find(row.name + v.suffix) != std::string::npos, v.alias) << message;
    }
    EXPECT_NE(message.find("did you mean \"softmax\""), std::string::npos) << message;
  }
}

// Rows with experts have a module, and every module has a row.
TEST(RouterRegistry, ModulesAndRowsMatch) {
  std::set<std::string> with_experts;
  for (auto& row : router_rows())
    if (row.has_experts()) with_experts.insert(row.name);
  auto registered = registered_routers();
  EXPECT_EQ(std::set<std::string>(registered.begin(), registered.end()), with_experts);
  EXPECT_THROW(router_module("dense"), std::invalid_argument);
}

// Labels come in the registry's order, each with its own colour; labels it does not list go last.
TEST(RouterRegistry, LabelsHaveAnOrderAndDistinctColours) {
  const auto labels = router_labels();
  ASSERT_EQ(labels.size(), 9u);
  EXPECT_EQ(labels.front(), "dense");
  std::set<std::string> colours;
  for (size_t i = 0; i < labels.size(); ++i) {
    EXPECT_EQ(router_order(labels[i]), int(i)) << labels[i];
    EXPECT_TRUE(colours.insert(router_colour(labels[i])).second) << labels[i] << " shares a colour";
  }
  EXPECT_EQ(router_order("kern_no_relu_after_topk"), int(labels.size()));
  EXPECT_EQ(router_colour("kern_no_relu_after_topk"), "");
  EXPECT_TRUE(is_router_path("model.router"));
  EXPECT_TRUE(is_router_path("model.kern.relu"));
  EXPECT_FALSE(is_router_path("model.experts"));
}

// The names and order of the parameters, and the names of the buffers, of each router that had
// checkpoints before the registry: checkpoints are read by these names, optimizer state by order.
TEST(RouterRegistry, StateKeysAreThoseOfEarlierCheckpoints) {
  const std::vector<std::string> statistics = {"load_counts", "positive_gates", "fewer_than_k", "routed_tokens"};
  const std::map<std::string, std::pair<std::vector<std::string>, std::vector<std::string>>> expected = {
      {"softmax", {{"proj.weight", "proj.bias"}, statistics}},
      {"sigmoid", {{"proj.weight", "proj.bias"}, statistics}},
      {"tanh", {{"proj.weight", "proj.bias"}, statistics}},
      {"kern", {{"gamma", "proj.weight", "proj.bias"}, statistics}},
      {"kmeans", {{}, {"selection_bias", "load_counts", "positive_gates", "fewer_than_k", "routed_tokens", "centroids"}}}};
  for (auto& [name, state] : expected) {
    auto m = parse_job_config(small_model(name)).model;
    Router router(m, 0);
    EXPECT_EQ(keys(router->named_parameters()), state.first) << name;
    std::set<std::string> buffers(state.second.begin(), state.second.end());
    auto got = keys(router->named_buffers());
    EXPECT_EQ(std::set<std::string>(got.begin(), got.end()), buffers) << name;
    if (name == "kmeans") continue;
    m.balance = "aux_free";
    Router balanced(m, 0);
    auto with_bias = keys(balanced->named_buffers());
    EXPECT_EQ(std::count(with_bias.begin(), with_bias.end(), "selection_bias"), 1) << name;
  }
}
