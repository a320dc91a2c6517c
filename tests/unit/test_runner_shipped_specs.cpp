// The sweep specs shipped in sweeps/: each plans (`moelab sweep plan --json`, the real binary) to
// its study's jobs, checked by count and by the values the study varies, at paper scale (the KERN
// paper's hyperparameters, bf16 on GPUs, a Slurm section) and at CPU scale (tiny models, fp32, the
// local executor). Every spec in sweeps/ has a test here: the test for sweeps/NAME.json is
// TEST(ShippedSpec, NAME) with '-' written '_', and ShippedSpecs.EverySpecInSweepsHasATest fails for
// a spec without one.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "run_moelab.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using moelab::testing::run_moelab;
using Points = std::multiset<std::string>;

const fs::path kSweeps = fs::path(MOELAB_SOURCE_DIR) / "sweeps";
const std::vector<std::string> kRouters = {"dense", "softmax", "sigmoid", "tanh", "kern"};
const std::vector<std::string> kMoeRouters = {"softmax", "sigmoid", "tanh", "kern"};
const std::vector<std::string> kTasks = {"arc_easy", "arc_challenge", "hellaswag", "piqa", "sciq", "winogrande"};

std::string spec_path(const std::string& name) { return (kSweeps / (name + ".json")).string(); }

// sweeps/NAME.json as written (null when it is missing or not JSON).
json spec_file(const std::string& name) {
  std::ifstream in(spec_path(name));
  if (!in) return nullptr;
  json j = json::parse(in, nullptr, /*allow_exceptions=*/false);
  return j.is_discarded() ? json(nullptr) : j;
}

// The jobs `moelab sweep plan --json` prints for sweeps/NAME.json; an empty list (and a failure)
// when the plan fails.
json plan(const std::string& name) {
  auto r = run_moelab("sweep plan --json " + spec_path(name));
  EXPECT_EQ(r.code, 0) << r.output;
  json jobs = json::parse(r.output, nullptr, /*allow_exceptions=*/false);
  EXPECT_TRUE(jobs.is_array()) << r.output;
  return jobs.is_array() ? jobs : json::array();
}

std::string label(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

// A job's value at a dotted path: the axis value when the job varied it (router aliases as the spec
// wrote them), else its resolved config's.
json value_at(const json& job, const std::string& path) {
  if (job.at("axes").contains(path)) return job.at("axes").at(path);
  std::string pointer = "/" + path;
  std::replace(pointer.begin(), pointer.end(), '.', '/');
  const json& config = job.at("config");
  return config.contains(json::json_pointer(pointer)) ? config.at(json::json_pointer(pointer)) : json(nullptr);
}

// Each job's values at `paths`, as "value,value,..." (strings unquoted, numbers as JSON writes them).
Points points(const json& jobs, const std::vector<std::string>& paths) {
  Points out;
  for (auto& job : jobs) {
    std::string point;
    for (size_t i = 0; i < paths.size(); ++i) point += (i ? "," : "") + label(value_at(job, paths[i]));
    out.insert(point);
  }
  return out;
}

// Every combination of one label from each list, as points() writes them: a study's expected points.
Points product(const std::vector<std::vector<std::string>>& lists) {
  std::vector<std::string> combos = {""};
  for (size_t l = 0; l < lists.size(); ++l) {
    std::vector<std::string> next;
    for (auto& prefix : combos)
      for (auto& value : lists[l]) next.push_back(prefix + (l ? "," : "") + value);
    combos = next;
  }
  return Points(combos.begin(), combos.end());
}

// The same point for each of `n` jobs: a value the whole study shares.
Points every(size_t n, const std::string& point) {
  Points out;
  for (size_t i = 0; i < n; ++i) out.insert(point);
  return out;
}

Points operator+(Points a, const Points& b) {
  a.insert(b.begin(), b.end());
  return a;
}

// Each job's router and resolved expert shape after granularity, "router,experts-top_k-expert_size".
Points shapes(const json& jobs) {
  Points out;
  for (auto& job : jobs) {
    const json& m = job.at("config").at("model");
    const int g = m.at("granularity");
    out.insert(label(value_at(job, "model.router")) + "," + std::to_string(m.at("experts").get<int>() * g) + "-" +
               std::to_string(m.at("top_k").get<int>() * g) + "-" + std::to_string(m.at("expert_size").get<int>() / g));
  }
  return out;
}

// The paper's setup (appendix D): 50k steps of 256 sequences, AdamW (0.9, 0.95), cosine with warmup
// 2000, weight decay 0.1, clipping 1.0, loss every 5000 steps, bf16 on a GPU; a Slurm section for 8 GPUs.
void expect_paper_scale(const std::string& name, const json& jobs) {
  SCOPED_TRACE(name);
  for (auto& job : jobs) {
    const json& t = job.at("config").at("train");
    EXPECT_EQ(t.at("steps"), 50000);
    EXPECT_EQ(t.at("batch_size"), 256);
    EXPECT_EQ(t.at("warmup"), 2000);
    EXPECT_EQ(t.at("betas"), json({0.9, 0.95}));
    EXPECT_EQ(t.at("weight_decay"), 0.1);
    EXPECT_EQ(t.at("grad_clip"), 1.0);
    EXPECT_EQ(t.at("eval_every"), 5000);
    EXPECT_EQ(t.at("precision"), "bf16");
    EXPECT_EQ(t.at("device"), "cuda");
    EXPECT_EQ(job.at("config").at("model").at("vocab_size"), 50257);
    EXPECT_EQ(job.at("config").at("model").at("balance"), "none");
    EXPECT_EQ(job.at("config").at("data").at("tokenizer"), "gpt2");
  }
  const json spec = spec_file(name);
  ASSERT_TRUE(spec.is_object());
  ASSERT_TRUE(spec.contains("slurm"));
  EXPECT_EQ(spec["slurm"].value("gpus", 0), 8);
  EXPECT_EQ(spec["slurm"].value("signal_seconds", 0), 300);
}

// The 125M-active model of the paper: 12 layers, d 768, 12 heads, lr 6e-4 decaying to 6e-5.
void expect_125m(const std::string& name, const json& jobs) {
  SCOPED_TRACE(name);
  EXPECT_EQ(points(jobs, {"model.layers", "model.d_model", "model.heads", "train.lr", "train.min_lr"}),
            every(jobs.size(), "12,768,12,0.0006,6e-05"));
}

// Tiny models for this machine's CPU: fp32, the Austen corpus, two jobs at a time.
void expect_cpu_scale(const std::string& name, const json& jobs) {
  SCOPED_TRACE(name);
  for (auto& job : jobs) {
    const json& c = job.at("config");
    EXPECT_EQ(c.at("train").at("device"), "cpu");
    EXPECT_EQ(c.at("train").at("precision"), "fp32");
    EXPECT_LE(c.at("train").at("steps").get<int>(), 300);
    EXPECT_LE(c.at("model").at("layers").get<int>(), 4);
    EXPECT_LE(c.at("model").at("d_model").get<int>(), 128);
    EXPECT_EQ(c.at("data").at("train"), "data/austen/train.bin");
    EXPECT_EQ(c.at("data").at("val"), "data/austen/val.bin");
    EXPECT_EQ(c.at("data").at("tokenizer"), "gpt2");
  }
  const json spec = spec_file(name);
  ASSERT_TRUE(spec.is_object());
  ASSERT_TRUE(spec.contains("local"));
  EXPECT_EQ(spec["local"].value("jobs", 0), 2);
  EXPECT_FALSE(spec.contains("slurm"));
}

}  // namespace

// Training length (router_checkpoints.csv, study train_len): every router at 512, 1024 and 2048, 256
// sequences a step as in appendix D.
TEST(ShippedSpec, routers) {
  auto jobs = plan("routers");
  ASSERT_EQ(jobs.size(), 15u);
  EXPECT_EQ(points(jobs, {"model.router", "model.seq_len"}), product({kRouters, {"512", "1024", "2048"}}));
  EXPECT_EQ(points(jobs, {"model.experts", "model.top_k", "model.expert_size"}), every(jobs.size(), "64,8,384"));
  expect_paper_scale("routers", jobs);
  expect_125m("routers", jobs);
}

TEST(ShippedSpec, routers_cpu) {
  auto jobs = plan("routers-cpu");
  ASSERT_EQ(jobs.size(), 15u);
  EXPECT_EQ(points(jobs, {"model.router", "model.seq_len"}), product({kRouters, {"32", "64", "128"}}));
  expect_cpu_scale("routers-cpu", jobs);
}

// Section 4.4 / Figure 5: 32 to 256 experts, 8 active of size 384.
TEST(ShippedSpec, sparsity) {
  auto jobs = plan("sparsity");
  ASSERT_EQ(jobs.size(), 16u);
  EXPECT_EQ(points(jobs, {"model.router", "model.experts"}), product({kMoeRouters, {"32", "64", "128", "256"}}));
  EXPECT_EQ(shapes(jobs), product({kMoeRouters, {"32-8-384", "64-8-384", "128-8-384", "256-8-384"}}));
  EXPECT_EQ(points(jobs, {"model.seq_len"}), every(jobs.size(), "512"));
  expect_paper_scale("sparsity", jobs);
  expect_125m("sparsity", jobs);
}

// The same shape at CPU scale: total experts 4x to 32x top-k, as 32..256 of 8 in the paper.
TEST(ShippedSpec, sparsity_cpu) {
  auto jobs = plan("sparsity-cpu");
  ASSERT_EQ(jobs.size(), 16u);
  EXPECT_EQ(points(jobs, {"model.router", "model.experts"}), product({kMoeRouters, {"8", "16", "32", "64"}}));
  EXPECT_EQ(shapes(jobs), product({kMoeRouters, {"8-2-128", "16-2-128", "32-2-128", "64-2-128"}}));
  expect_cpu_scale("sparsity-cpu", jobs);
}

// Fine-grained experts at fixed active parameters: 64-8-384, 128-16-192, 256-32-96.
TEST(ShippedSpec, granularity) {
  auto jobs = plan("granularity");
  ASSERT_EQ(jobs.size(), 12u);
  EXPECT_EQ(points(jobs, {"model.router", "model.granularity"}), product({kMoeRouters, {"1", "2", "4"}}));
  EXPECT_EQ(shapes(jobs), product({kMoeRouters, {"64-8-384", "128-16-192", "256-32-96"}}));
  expect_paper_scale("granularity", jobs);
  expect_125m("granularity", jobs);
}

TEST(ShippedSpec, granularity_cpu) {
  auto jobs = plan("granularity-cpu");
  ASSERT_EQ(jobs.size(), 12u);
  EXPECT_EQ(points(jobs, {"model.router", "model.granularity"}), product({kMoeRouters, {"1", "2", "4"}}));
  EXPECT_EQ(shapes(jobs), product({kMoeRouters, {"16-2-128", "32-4-64", "64-8-32"}}));
  expect_cpu_scale("granularity-cpu", jobs);
}

// Table 4: three seeds per router at training length 512.
TEST(ShippedSpec, seeds) {
  auto jobs = plan("seeds");
  ASSERT_EQ(jobs.size(), 15u);
  EXPECT_EQ(points(jobs, {"model.router", "seed"}), product({kRouters, {"0", "1", "2"}}));
  EXPECT_EQ(points(jobs, {"model.seq_len"}), every(jobs.size(), "512"));
  expect_paper_scale("seeds", jobs);
  expect_125m("seeds", jobs);
}

TEST(ShippedSpec, seeds_cpu) {
  auto jobs = plan("seeds-cpu");
  ASSERT_EQ(jobs.size(), 15u);
  EXPECT_EQ(points(jobs, {"model.router", "seed"}), product({kRouters, {"0", "1", "2"}}));
  expect_cpu_scale("seeds-cpu", jobs);
}

// Table 3 (appendix J) at training length 1024: 8 and 64 active of 64, KERN without ReLU; appendix H
// (KERN after top-k) and I/L (Monte Carlo initialisation of the scale) at 8 of 64.
TEST(ShippedSpec, ablations) {
  auto jobs = plan("ablations");
  ASSERT_EQ(jobs.size(), 12u);
  const std::vector<std::string> routers = {"softmax", "sigmoid", "tanh", "kern", "kern_no_relu"};
  EXPECT_EQ(points(jobs, {"model.router", "model.top_k", "model.kern.init"}),
            (product({routers, {"8", "64"}, {"one"}}) + Points{"kern_after_topk,8,one", "kern,8,monte_carlo"}));
  EXPECT_EQ(points(jobs, {"model.seq_len", "model.experts"}), every(jobs.size(), "1024,64"));
  expect_paper_scale("ablations", jobs);
  expect_125m("ablations", jobs);
}

TEST(ShippedSpec, ablations_cpu) {
  auto jobs = plan("ablations-cpu");
  ASSERT_EQ(jobs.size(), 12u);
  const std::vector<std::string> routers = {"softmax", "sigmoid", "tanh", "kern", "kern_no_relu"};
  EXPECT_EQ(points(jobs, {"model.router", "model.top_k", "model.kern.init"}),
            (product({routers, {"2", "16"}, {"one"}}) + Points{"kern_after_topk,2,one", "kern,2,monte_carlo"}));
  EXPECT_EQ(points(jobs, {"model.experts"}), every(jobs.size(), "16"));
  expect_cpu_scale("ablations-cpu", jobs);
}

// Table 1: 125M / 350M / 1.3B active (520M / 1.7B / 6.9B total) at training length 1024, scored on
// the six tasks with no document limit.
TEST(ShippedSpec, downstream) {
  auto jobs = plan("downstream");
  ASSERT_EQ(jobs.size(), 15u);
  EXPECT_EQ(points(jobs, {"model.router", "model.layers", "model.d_model", "model.heads", "model.expert_size", "train.lr"}),
            product({kRouters, {"12,768,12,384,0.0006", "24,1024,16,512,0.0003", "24,2048,16,1024,0.0002"}}));
  EXPECT_EQ(points(jobs, {"model.seq_len", "model.experts", "model.top_k"}), every(jobs.size(), "1024,64,8"));
  expect_paper_scale("downstream", jobs);
  const json spec = spec_file("downstream");
  ASSERT_TRUE(spec.contains("eval"));
  EXPECT_EQ(spec["eval"].value("tasks", std::vector<std::string>{}), kTasks);
  EXPECT_EQ(spec["eval"].value("limit", -1), 0);
  EXPECT_EQ(spec["eval"].value("checkpoints", json()), "final");
}

TEST(ShippedSpec, downstream_cpu) {
  auto jobs = plan("downstream-cpu");
  ASSERT_EQ(jobs.size(), 15u);
  EXPECT_EQ(points(jobs, {"model.router", "model.layers", "model.d_model", "model.heads", "model.expert_size", "train.lr"}),
            product({kRouters, {"2,64,4,128,0.003", "4,96,6,192,0.0015", "4,128,4,256,0.001"}}));
  expect_cpu_scale("downstream-cpu", jobs);
  const json spec = spec_file("downstream-cpu");
  ASSERT_TRUE(spec.contains("eval"));
  EXPECT_EQ(spec["eval"].value("tasks", std::vector<std::string>{}), kTasks);
  EXPECT_EQ(spec["eval"].value("limit", 0), 50);
  EXPECT_EQ(spec["eval"].value("checkpoints", json()), "final");
}

// The built-in demo (scripts/demo.sh): every router, two seeds, tiny and on the CPU.
TEST(ShippedSpec, demo) {
  auto jobs = plan("demo");
  ASSERT_EQ(jobs.size(), 10u);
  EXPECT_EQ(points(jobs, {"model.router", "seed"}), product({kRouters, {"0", "1"}}));
  EXPECT_EQ(points(jobs, {"train.device"}), every(jobs.size(), "cpu"));
}

TEST(ShippedSpecs, EverySpecInSweepsHasATest) {
  std::set<std::string> tested;
  const auto* unit = ::testing::UnitTest::GetInstance();
  for (int i = 0; i < unit->total_test_suite_count(); ++i) {
    const auto* suite = unit->GetTestSuite(i);
    if (std::string(suite->name()) != "ShippedSpec") continue;
    for (int t = 0; t < suite->total_test_count(); ++t) tested.insert(suite->GetTestInfo(t)->name());
  }
  std::set<std::string> specs;
  for (auto& entry : fs::directory_iterator(kSweeps)) {
    if (!entry.is_regular_file() || entry.path().extension() != ".json") continue;
    const std::string stem = entry.path().stem().string();
    std::string test = stem;
    std::replace(test.begin(), test.end(), '-', '_');
    specs.insert(test);
    EXPECT_TRUE(tested.count(test)) << entry.path().string() << " has no test: add TEST(ShippedSpec, " << test
                                    << ") to tests/unit/test_runner_shipped_specs.cpp";
    const json spec = spec_file(stem);
    EXPECT_TRUE(spec.is_object() && spec.value("name", "") == stem)
        << entry.path().string() << ": a shipped spec's \"name\" is its file name without .json";
  }
  for (auto& test : tested) EXPECT_TRUE(specs.count(test)) << "ShippedSpec." << test << " has no spec in sweeps/";
}
