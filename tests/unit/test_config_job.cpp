// The job config contract: defaults, aliases, canonical form and identity, and errors naming paths.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "engine/config/config_schema.hpp"

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

// A config file holding `text` as written (a number JSON cannot hold has no json value to dump).
std::string write_file(const std::string& name, const std::string& text) {
  auto path = std::filesystem::temp_directory_path() / ("moelab_config_" + std::to_string(getpid()) + "_" + name);
  std::ofstream(path) << text;
  return path.string();
}

std::string load_error(const std::string& path, const std::vector<std::string>& overrides = {}) {
  try {
    load_job_config(path, overrides);
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
  EXPECT_EQ(error_of(json{{"seed", 1.5}}), "seed: expected an integer in [0, 9223372036854775807], got 1.5");
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
  // A string field takes the text as written, even when it reads as JSON; others take JSON.
  apply_override(j, "name=2024");
  apply_override(j, "data.train=1e999");
  apply_override(j, "data.val=\"quoted.bin\"");
  apply_override(j, "train.lr=3e-4");
  EXPECT_EQ(j["name"], "2024");
  EXPECT_EQ(j["data"]["train"], "1e999");
  EXPECT_EQ(j["data"]["val"], "quoted.bin");
  EXPECT_EQ(j["train"]["lr"], 3e-4);
  EXPECT_EQ(parse_job_config(j).name, "2024");
}

// 4294967297 is 2^32 + 1: read through an int it used to become 1 (one step trained, 1 recorded as the
// total), and d_model 4294967328 became 32.
TEST(JobConfig, IntegersThatDoNotFitAreRefusedNotWrapped) {
  EXPECT_EQ(error_of(json{{"train", {{"steps", 4294967297}}}}), "train.steps: expected an integer in [1, 2147483647], got 4294967297");
  EXPECT_EQ(error_of(json{{"model", {{"d_model", 4294967328}}}}),
            "model.d_model: expected an integer in [1, 2147483647], got 4294967328");
  EXPECT_EQ(error_of(json{{"model", {{"top_k", -4294967294}}}}), "model.top_k: expected an integer in [0, 2147483647], got -4294967294");
  EXPECT_EQ(error_of(json{{"seed", 9223372036854775808ull}}),
            "seed: expected an integer in [0, 9223372036854775807], got 9223372036854775808");
  EXPECT_EQ(error_of(json{{"seed", -1}}), "seed: expected an integer in [0, 9223372036854775807], got -1");
  EXPECT_EQ(parse_job_config(json{{"seed", 9223372036854775807ll}}).seed, 9223372036854775807ll);
  EXPECT_EQ(error_of(json{{"train", {{"threads", -1}}}}), "train.threads: expected an integer in [0, 2147483647], got -1");
  EXPECT_EQ(error_of(json{{"model", {{"d_model", 1073741824}, {"heads", 1}}}}),
            "model.d_model: the dense FFN width 4 x d_model = 4294967296 does not fit an int; set model.dense_size");
  EXPECT_EQ(error_of(json{{"model", {{"experts", 1073741824}, {"granularity", 4}, {"expert_size", 384}}}}),
            "model.experts: experts 1073741824 x granularity 4 = 4294967296 does not fit an int");
  // --set values go through the same reader.
  json j = json::object();
  apply_override(j, "train.steps=4294967297");
  EXPECT_EQ(error_of(j), "train.steps: expected an integer in [1, 2147483647], got 4294967297");
}

TEST(JobConfig, RealFieldsAreCheckedAgainstTheirDomain) {
  const std::vector<std::pair<json, std::string>> cases = {
      {{{"train", {{"betas", {1.5, 0.95}}}}}, "train.betas[0]: expected a number in [0, 1), got 1.5"},
      {{{"train", {{"betas", {0.9, 1}}}}}, "train.betas[1]: expected a number in [0, 1), got 1"},
      {{{"train", {{"betas", {0.9, "x"}}}}}, "train.betas[1]: expected a number in [0, 1), got \"x\""},
      {{{"train", {{"weight_decay", -0.1}}}}, "train.weight_decay: expected a number >= 0, got -0.1"},
      {{{"train", {{"grad_clip", -1}}}}, "train.grad_clip: expected a number >= 0, got -1"},
      {{{"train", {{"lr", 0}}}}, "train.lr: expected a number > 0, got 0"},
      {{{"train", {{"lr", -6e-4}}}}, "train.lr: expected a number > 0, got -0.0006"},
      {{{"train", {{"min_lr", -1e-5}}}}, "train.min_lr: expected a number >= 0, got -1e-05"},
      {{{"train", {{"lr", 1e-4}, {"min_lr", 1e-3}}}}, "train.min_lr: expected a number in [0, lr] = [0, 0.0001], got 0.001"},
      {{{"model", {{"bias_update_rate", -1}}}}, "model.bias_update_rate: expected a number >= 0, got -1"},
      {{{"model", {{"aux_loss_coef", -0.01}}}}, "model.aux_loss_coef: expected a number >= 0, got -0.01"},
      {{{"model", {{"z_loss_coef", -0.01}}}}, "model.z_loss_coef: expected a number >= 0, got -0.01"},
      {{{"model", {{"centroid_decay", 1.0}}}}, "model.centroid_decay: expected a number in [0, 1), got 1.0"},
      {{{"model", {{"centroid_decay", "0.9"}}}}, "model.centroid_decay: expected a number in [0, 1), got \"0.9\""},
  };
  for (auto& [config, message] : cases) EXPECT_EQ(error_of(config), message) << config.dump();
  // The ends of each range that are allowed.
  auto edges = parse_job_config(json::parse(
      R"({"train": {"betas": [0, 0.999], "weight_decay": 0, "grad_clip": 0, "lr": 1e-4, "min_lr": 1e-4},
          "model": {"bias_update_rate": 0, "centroid_decay": 0}})"));
  EXPECT_EQ(edges.train.min_lr, edges.train.lr);
}

// nlohmann's own message for 1e999 ("number overflow parsing '1e999'") named neither file nor key.
TEST(JobConfig, NumbersJsonCannotHoldNameTheFileTheKeyAndTheLine) {
  auto path = write_file("overflow.json", "{\n  \"train\": {\n    \"steps\": 10,\n    \"lr\": 1e999\n  }\n}\n");
  EXPECT_EQ(load_error(path), path + ": train.lr: the number 1e999 is out of range: it must fit a double (line 4, column 11)");
  auto in_list = write_file("overflow_list.json", R"({"axes": {"model.aux_loss_coef": [0.1, -1e999]}})");
  try {
    read_json_file(in_list);
    ADD_FAILURE() << "1e999 was read";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), in_list + ": axes.model.aux_loss_coef[1]: the number -1e999 is out of range: it must "
                                                "fit a double (line 1, column 40)");
  }
  json j = json::object();
  try {
    apply_override(j, "train.lr=1e999");
    ADD_FAILURE() << "1e999 was set";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), "--set train.lr=1e999: train.lr: the number 1e999 is out of range: it must fit a double");
  }
  std::filesystem::remove(path);
  std::filesystem::remove(in_list);
}

TEST(JobConfig, LoadErrorsNameTheFileOrTheOverride) {
  auto path = write_file("load.json", R"({"train": {"weight_decay": -0.1}})");
  EXPECT_EQ(load_error(path), path + ": train.weight_decay: expected a number >= 0, got -0.1");
  EXPECT_EQ(load_error(path, {"train.weight_decay=0.1", "train.steps=4294967297"}),
            "--set train.steps=4294967297: train.steps: expected an integer in [1, 2147483647], got 4294967297");
  EXPECT_EQ(load_error(path, {"train.betas=[1.5,0.9]", "train.weight_decay=0"}),
            "--set train.betas=[1.5,0.9]: train.betas[0]: expected a number in [0, 1), got 1.5");
  EXPECT_EQ(load_error(path, {"train.weight_decay=0.1"}), "");
  std::filesystem::remove(path);
}

// Every field is read from, and written to, its own path: a value other than the default read from
// the field's path comes back in to_json() at that path, and nowhere else changes.
TEST(ConfigSchema, EachFieldReadsAndWritesItsOwnPath) {
  const auto& schema = job_config_schema();
  const json defaults = JobConfig{}.to_json();
  for (auto& field : schema.fields()) {
    ASSERT_NE(find_dotted(defaults, field.path), nullptr) << field.path;
    EXPECT_EQ(*find_dotted(defaults, field.path), field.default_value) << field.path;
    const json& d = field.default_value;
    json other = d.is_boolean()        ? json(!d.get<bool>())
                 : d.is_array()        ? json({0.5, 0.5})
                 : d.is_number_float() ? json(d == 0.0 ? 0.5 : d.get<double>() / 2)
                 : d.is_number()       ? json(d == 1 ? 2 : 1)
                 : field.path == "model.router"    ? json("softmax")
                 : field.path == "model.kern.init" ? json("monte_carlo")
                 : field.path == "model.balance"   ? json("aux_free")
                 : field.path == "train.precision" ? json("fp32")
                 : field.path == "train.device"    ? json("cpu")
                 : field.path == "data.tokenizer"  ? json("bytes")
                                                   : json("elsewhere");
    JobConfig c;
    field.read(c, other, field.path);
    json expected = defaults;
    set_dotted(expected, field.path, other);
    EXPECT_EQ(c.to_json(), expected) << field.path;
  }
}

TEST(ConfigSchema, IdentityLeavesOutTheNameAndWhereAndHowAJobRuns) {
  std::vector<std::string> outside;
  for (auto& field : job_config_schema().fields())
    if (field.identity == Identity::None) outside.push_back(field.path);
  EXPECT_EQ(outside, (std::vector<std::string>{"name", "train.keep_checkpoints", "train.keep_every", "train.device",
                                               "train.threads", "train.cuda_graph"}));
  json identity = job_config_schema().identity(JobConfig{}.to_json());
  EXPECT_FALSE(identity.contains("name"));
  EXPECT_FALSE(identity["train"].contains("device"));
  EXPECT_EQ(identity["model"]["kern"]["init"], "one");  // identity version 1: at its default too
}

// The README's config reference is what `moelab config reference` prints: regenerate it with
//   build/moelab config reference
// and paste it between the markers.
TEST(ConfigSchema, TheReadmesConfigReferenceIsTheFieldTable) {
  std::ifstream in(std::string(MOELAB_SOURCE_DIR) + "/README.md");
  const std::string readme{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  const size_t begin = readme.find("<!-- begin config reference");
  const size_t end = readme.find("<!-- end config reference -->");
  ASSERT_NE(begin, std::string::npos);
  ASSERT_NE(end, std::string::npos);
  const size_t table = readme.find('\n', begin) + 1;
  ASSERT_LE(table, end);
  EXPECT_EQ(readme.substr(table, end - table), job_config_schema().reference());
  const std::string& reference = job_config_schema().reference();
  EXPECT_NE(reference.find("| `train.min_lr` | number >= 0 | `6e-05` | yes | learning rate at the last step; at most lr |"),
            std::string::npos)
      << reference;
  EXPECT_NE(reference.find("| `train.device` | one of: auto, cpu, cuda | `\"auto\"` | no |"), std::string::npos) << reference;
}
