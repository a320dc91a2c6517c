// A job's resolved configuration: the contract that sweep specs, the CLI, the store and tests share
// (DESIGN.md "A job's config"). Parsing is strict: unknown keys and wrong types are errors naming the
// JSON path; missing keys take the defaults below. `granularity` is already applied in the resolved
// experts/top_k/expert_size accessors. Each member is declared as a field (path, values, doc,
// identity) once, in job_config_schema() (config_schema.hpp), which parsing and to_json read.
#pragma once

#include <nlohmann/json.hpp>
#include <array>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace moelab {

// Raised for any invalid configuration; what() starts with the JSON path of the offending field.
struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Balance { None, AuxLoss, AuxFree };

struct KernOptions {
  bool relu = true;
  bool after_topk = false;
  std::string init = "one";  // "one" | "monte_carlo"
};

struct ModelConfig {
  int vocab_size = 50257;
  int seq_len = 512;
  int layers = 12;
  int d_model = 768;
  int heads = 12;
  std::string router = "kern";  // a row of the router registry (engine/config/router_registry.hpp)
  int experts = 64;             // before granularity
  int top_k = 8;                // before granularity
  int expert_size = 384;        // before granularity
  int granularity = 1;
  int dense_size = 0;           // dense FFN width; 0 means 4 * d_model
  bool renormalize = false;     // rescale the k kept gates to sum to 1
  std::string balance = "none"; // none|aux_loss|aux_free
  double aux_loss_coef = 0.0;
  double z_loss_coef = 0.0;
  double bias_update_rate = 1e-3;  // aux_free and kmeans: bias step per update, by sign of load error
  double centroid_decay = 0.99;    // kmeans: EMA decay of expert centroids
  KernOptions kern;

  Balance balance_kind() const;
  bool is_moe() const;  // the router has experts (not "dense"); router_registry.cpp
  int total_experts() const { return experts * granularity; }
  int active_experts() const { return top_k * granularity; }
  int expert_hidden() const { return expert_size / granularity; }
  int dense_hidden() const { return dense_size > 0 ? dense_size : 4 * d_model; }
  // A name for tables: the router's variants get their own label (kern_no_relu, kern_after_topk,
  // kern_mc); router_registry.cpp.
  std::string router_label() const;
};

struct TrainConfig {
  int steps = 50000;
  int batch_size = 256;
  int micro_batch = 32;
  double lr = 6e-4;
  int warmup = 2000;
  double min_lr = 6e-5;
  std::array<double, 2> betas = {0.9, 0.95};  // AdamW's beta1, beta2
  double weight_decay = 0.1;
  double grad_clip = 1.0;
  std::string precision = "bf16";  // fp32|bf16|fp16 (autocast on CUDA; CPU always computes in fp32)
  int log_every = 10;
  int eval_every = 5000;
  int eval_batches = 100;
  int checkpoint_every = 1000;
  int keep_checkpoints = 3;
  int keep_every = 0;              // checkpoints at multiples of this step are never pruned (0: none)
  std::string device = "auto";     // auto|cpu|cuda
  int threads = 0;                 // CPU intra-op threads; 0 keeps LibTorch's default
  bool cuda_graph = false;         // capture the step as one CUDA graph (engine/train/step_graph.hpp)

  int accumulation_steps() const { return batch_size / micro_batch; }
  // Each of `ranks` data-parallel processes trains on a contiguous share of a step's micro-batches,
  // so together they see exactly the micro-batches one process would. Throws ConfigError when the
  // micro-batches do not split evenly.
  int micro_batches_per_rank(int ranks) const;
};

struct DataConfig {
  std::string train = "data/books3/train.bin";
  std::string val = "data/books3/val.bin";
  std::string tokenizer = "gpt2";
};

struct JobConfig {
  std::string name = "job";
  long long seed = 0;
  ModelConfig model;
  TrainConfig train;
  DataConfig data;

  // Canonical resolved JSON (every key, fixed order) and its hash: a job's identity (README "Job
  // identity": the identity fields, those added after identity version 1 only when not at their default).
  nlohmann::json to_json() const;
  std::string hash() const;
};

// Parses and validates; throws ConfigError naming the JSON path. Every field is checked against its
// own domain as it is read (an integer that does not fit is refused, never wrapped). Router aliases
// ("kern_no_relu", "kern_after_topk") resolve to their router with the matching options (router registry).
// cross_checks=false skips the checks across fields (a sweep's base may be completed by its axes).
JobConfig parse_job_config(const nlohmann::json& j, bool cross_checks = true);
// The config file with `--set PATH=VALUE` overrides applied; errors start with the file, or with the
// override that set the offending field.
JobConfig load_job_config(const std::string& path, const std::vector<std::string>& overrides = {});
// Throws ConfigError naming the file; a number JSON cannot hold (1e999) is named by its JSON path
// ("train.lr") and line and column.
nlohmann::json read_json_file(const std::string& path);

// The integer `v` at JSON path `where` when it lies in [least, most]; otherwise ConfigError
// "where: expected an integer in [least, most], got v". Out of range is refused, never wrapped.
long long json_integer(const nlohmann::json& v, const std::string& where, long long least, long long most);
// The same for a count held in an int: from `least` to the most an int holds.
inline int json_int(const nlohmann::json& v, const std::string& where, int least) {
  return int(json_integer(v, where, least, std::numeric_limits<int>::max()));
}

// Dotted paths ("model.router") address config fields, as sweep axes do. set_dotted creates objects
// on the way; find_dotted returns null when the path is absent. `assignment` is "path=value": for a
// string field the value is the text as written (or a JSON string), for any other a JSON value, or
// the text when it is not JSON (so that the field's reader names what it expected).
void set_dotted(nlohmann::json& config, const std::string& path, const nlohmann::json& value);
const nlohmann::json* find_dotted(const nlohmann::json& config, const std::string& path);
void apply_override(nlohmann::json& config, const std::string& assignment);

// A " (did you mean ...)" hint naming the candidate nearest to a misspelt key, or "" when none is close.
std::string did_you_mean(const std::string& key, const std::vector<std::string>& candidates);

// Checks across fields (top_k <= experts, divisibility, min_lr <= lr, ...); each field's own domain
// is checked as it is read. parse_job_config calls it.
void validate(const JobConfig& c);

}  // namespace moelab
