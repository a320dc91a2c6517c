// The job config contract: defaults, aliases, canonical form and identity, and errors naming paths.
#include <gtest/gtest.h>

#include "engine/config/job_config.hpp"

using namespace moelab;
using nlohmann::json;

namespace {

std::string error_of(const json& j) {
  try {
    parse_job_config(j);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(JobConfig, DefaultsAreThePapers125MConfiguration) {
  auto c = parse_job_config(json::object());
  EXPECT_EQ(c.model.layers, 12);
  EXPECT_EQ(c.model.total_experts(), 64);
  EXPECT_EQ(c.model.active_experts(), 8);
  EXPECT_EQ(c.model.expert_hidden(), 384);
  EXPECT_EQ(c.train.accumulation_steps(), 256 / 32);
}

TEST(JobConfig, GranularityMultipliesExpertsAndTopKAndDividesSize) {
  auto c = parse_job_config(json{{"model", {{"granularity", 4}}}});
  EXPECT_EQ(c.model.total_experts(), 256);
  EXPECT_EQ(c.model.active_experts(), 32);
  EXPECT_EQ(c.model.expert_hidden(), 96);
}

TEST(JobConfig, KernAliasesAreTheSameJobAsTheirOptions) {
  auto alias = parse_job_config(json{{"model", {{"router", "kern_no_relu"}}}});
  auto spelled = parse_job_config(json{{"model", {{"router", "kern"}, {"kern", {{"relu", false}}}}}});
  EXPECT_EQ(alias.hash(), spelled.hash());
  EXPECT_EQ(alias.model.router_label(), "kern_no_relu");
  EXPECT_EQ(parse_job_config(json{{"model", {{"router", "kern_after_topk"}}}}).model.router_label(), "kern_after_topk");
}

TEST(JobConfig, HashIgnoresKeyOrderAndRunPlacementButNotContent) {
  auto a = parse_job_config(json::parse(R"({"seed": 1, "model": {"top_k": 2, "experts": 8}})"));
  auto b = parse_job_config(json::parse(R"({"model": {"experts": 8, "top_k": 2}, "seed": 1})"));
  auto on_cpu = parse_job_config(json::parse(R"({"seed": 1, "model": {"top_k": 2, "experts": 8}, "train": {"device": "cpu", "threads": 2}})"));
  auto graphed = parse_job_config(json::parse(R"({"seed": 1, "model": {"top_k": 2, "experts": 8}, "train": {"cuda_graph": true}})"));
  auto other_seed = parse_job_config(json::parse(R"({"seed": 2, "model": {"top_k": 2, "experts": 8}})"));
  EXPECT_EQ(a.hash(), b.hash());
  EXPECT_EQ(a.hash(), on_cpu.hash());
  EXPECT_EQ(a.hash(), graphed.hash());
  EXPECT_TRUE(graphed.train.cuda_graph);
  EXPECT_NE(a.hash(), other_seed.hash());
  EXPECT_EQ(a.hash().size(), 16u);
  EXPECT_EQ(parse_job_config(a.to_json()).to_json(), a.to_json());  // the canonical form round-trips
}

TEST(JobConfig, ErrorsNameTheJsonPath) {
  EXPECT_EQ(error_of(json{{"modle", json::object()}}), "modle: unknown key (did you mean \"model\"?)");
  EXPECT_EQ(error_of(json{{"model", {{"kern", {{"reluu", true}}}}}}), "model.kern.reluu: unknown key (did you mean \"relu\"?)");
  EXPECT_EQ(error_of(json{{"train", {{"betas", {0.9}}}}}), "train.betas: expected an array of two numbers, got [0.9]");
  EXPECT_EQ(error_of(json{{"model", {{"kern", {{"init", "zero"}}}}}}),
            "model.kern.init: unknown value \"zero\" (expected one of: one, monte_carlo)");
  EXPECT_EQ(error_of(json{{"train", {{"batch_size", 10}, {"micro_batch", 4}}}}),
            "train.batch_size: batch_size 10 is not divisible by micro_batch 4");
  EXPECT_EQ(error_of(json{{"model", {{"granularity", 8}, {"experts", 4}, {"top_k", 8}, {"expert_size", 64}}}}),
            "model.top_k: top_k 64 exceeds experts 32 (after granularity 8)");
  EXPECT_EQ(error_of(json{{"model", {{"balance", "aux_loss"}}}}), "model.aux_loss_coef: balance \"aux_loss\" needs a coefficient > 0");
  EXPECT_EQ(error_of(json{{"seed", 1.5}}), "seed: expected an integer, got 1.5");
  EXPECT_EQ(error_of(json{{"train", {{"cuda_graph", true}, {"device", "cpu"}}}}),
            "train.cuda_graph: needs a GPU, and train.device is cpu");
  EXPECT_EQ(error_of(json{{"train", {{"cuda_graph", 1}}}}), "train.cuda_graph: expected a boolean, got 1");
  EXPECT_EQ(error_of(json::array()), "(top level): expected an object, got array");
}

TEST(JobConfig, OverridesSetDottedPathsWithJsonOrStringValues) {
  json j{{"model", {{"router", "kern"}}}};
  apply_override(j, "model.router=softmax");
  apply_override(j, "model.top_k=2");
  apply_override(j, "model.kern.relu=false");
  EXPECT_EQ(j["model"]["router"], "softmax");
  EXPECT_EQ(j["model"]["top_k"], 2);
  EXPECT_EQ(j["model"]["kern"]["relu"], false);
  EXPECT_THROW(apply_override(j, "model.router"), ConfigError);
}
