#include "engine/config/job_config.hpp"

#include "engine/config/hashing.hpp"

#include <algorithm>
#include <fstream>
#include <map>
#include <set>

namespace moelab {
namespace {

using nlohmann::json;

// Reads the fields of one JSON object, remembering which keys were consumed so that any key left
// over is reported as unknown (with the nearest known name as a hint).
class ObjectReader {
 public:
  ObjectReader(const json& j, std::string path) : j_(j), path_(std::move(path)) {
    if (!j_.is_object()) throw ConfigError(where("") + ": expected an object, got " + j_.type_name());
  }

  template <typename T>
  void read(const std::string& key, T& out) {
    known_.insert(key);
    auto it = j_.find(key);
    if (it == j_.end()) return;
    check_type<T>(*it, where(key));
    out = it->template get<T>();
  }

  const json* child(const std::string& key) {
    known_.insert(key);
    auto it = j_.find(key);
    return it == j_.end() ? nullptr : &*it;
  }

  std::string where(const std::string& key) const {
    if (key.empty()) return path_.empty() ? "(top level)" : path_;
    return path_.empty() ? key : path_ + "." + key;
  }

  void reject_unknown_keys() const {
    for (auto& [key, value] : j_.items()) {
      if (known_.count(key)) continue;
      throw ConfigError(where(key) + ": unknown key" + nearest_hint(key));
    }
  }

 private:
  template <typename T>
  static void check_type(const json& v, const std::string& where) {
    bool ok;
    std::string expected;
    if constexpr (std::is_same_v<T, bool>) {
      ok = v.is_boolean(), expected = "a boolean";
    } else if constexpr (std::is_integral_v<T>) {
      ok = v.is_number_integer(), expected = "an integer";
    } else if constexpr (std::is_floating_point_v<T>) {
      ok = v.is_number(), expected = "a number";
    } else {
      ok = v.is_string(), expected = "a string";
    }
    if (!ok) throw ConfigError(where + ": expected " + expected + ", got " + v.dump());
  }

  std::string nearest_hint(const std::string& key) const {
    return did_you_mean(key, std::vector<std::string>(known_.begin(), known_.end()));
  }

  const json& j_;
  std::string path_;
  std::set<std::string> known_;
};

const std::map<std::string, RouterKind> kRouters = {
    {"dense", RouterKind::Dense}, {"softmax", RouterKind::Softmax}, {"sigmoid", RouterKind::Sigmoid},
    {"tanh", RouterKind::Tanh},   {"kern", RouterKind::Kern},       {"kmeans", RouterKind::KMeans}};

const std::map<std::string, Balance> kBalances = {
    {"none", Balance::None}, {"aux_loss", Balance::AuxLoss}, {"aux_free", Balance::AuxFree}};

std::string names_of(const auto& table) {
  std::string out;
  for (auto& [name, value] : table) out += (out.empty() ? "" : ", ") + name;
  return out;
}

void parse_kern(const json& j, KernOptions& k) {
  ObjectReader r(j, "model.kern");
  r.read("relu", k.relu);
  r.read("after_topk", k.after_topk);
  r.read("init", k.init);
  r.reject_unknown_keys();
}

void parse_model(const json& j, ModelConfig& m) {
  ObjectReader r(j, "model");
  r.read("vocab_size", m.vocab_size);
  r.read("seq_len", m.seq_len);
  r.read("layers", m.layers);
  r.read("d_model", m.d_model);
  r.read("heads", m.heads);
  r.read("router", m.router);
  r.read("experts", m.experts);
  r.read("top_k", m.top_k);
  r.read("expert_size", m.expert_size);
  r.read("granularity", m.granularity);
  r.read("dense_size", m.dense_size);
  r.read("renormalize", m.renormalize);
  r.read("balance", m.balance);
  r.read("aux_loss_coef", m.aux_loss_coef);
  r.read("z_loss_coef", m.z_loss_coef);
  r.read("bias_update_rate", m.bias_update_rate);
  r.read("centroid_decay", m.centroid_decay);
  if (auto* k = r.child("kern")) parse_kern(*k, m.kern);
  r.reject_unknown_keys();
  // Aliases from the paper's appendices resolve to KERN with the matching option, so that
  // "kern_no_relu" and {"router":"kern","kern":{"relu":false}} are one job.
  if (m.router == "kern_no_relu") m.router = "kern", m.kern.relu = false;
  if (m.router == "kern_after_topk") m.router = "kern", m.kern.after_topk = true;
}

void parse_train(const json& j, TrainConfig& t) {
  ObjectReader r(j, "train");
  r.read("steps", t.steps);
  r.read("batch_size", t.batch_size);
  r.read("micro_batch", t.micro_batch);
  r.read("lr", t.lr);
  r.read("warmup", t.warmup);
  r.read("min_lr", t.min_lr);
  if (auto* b = r.child("betas")) {
    if (!b->is_array() || b->size() != 2 || !(*b)[0].is_number() || !(*b)[1].is_number())
      throw ConfigError("train.betas: expected an array of two numbers, got " + b->dump());
    t.beta1 = (*b)[0].get<double>(), t.beta2 = (*b)[1].get<double>();
  }
  r.read("weight_decay", t.weight_decay);
  r.read("grad_clip", t.grad_clip);
  r.read("precision", t.precision);
  r.read("log_every", t.log_every);
  r.read("eval_every", t.eval_every);
  r.read("eval_batches", t.eval_batches);
  r.read("checkpoint_every", t.checkpoint_every);
  r.read("keep_checkpoints", t.keep_checkpoints);
  r.read("keep_every", t.keep_every);
  r.read("device", t.device);
  r.read("threads", t.threads);
  r.read("cuda_graph", t.cuda_graph);
  r.reject_unknown_keys();
}

void parse_data(const json& j, DataConfig& d) {
  ObjectReader r(j, "data");
  r.read("train", d.train);
  r.read("val", d.val);
  r.read("tokenizer", d.tokenizer);
  r.reject_unknown_keys();
}

// Messages are built only when a check fails: validation runs once per job of a sweep, and a sweep
// can have 100,000 jobs.
template <typename Message>
void require(bool ok, const char* path, Message&& message) {
  if (ok) return;
  if constexpr (std::is_invocable_v<Message>)
    throw ConfigError(std::string(path) + ": " + message());
  else
    throw ConfigError(std::string(path) + ": " + message);
}

void require_positive(int v, const char* path) {
  require(v > 0, path, [&] { return "must be positive, got " + std::to_string(v); });
}

void require_one_of(const std::string& v, std::initializer_list<const char*> allowed, const std::string& path) {
  std::string list;
  for (auto a : allowed) {
    if (v == a) return;
    list += (list.empty() ? "" : ", ") + std::string(a);
  }
  throw ConfigError(path + ": unknown value \"" + v + "\" (expected one of: " + list + ")");
}

}  // namespace

RouterKind ModelConfig::router_kind() const { return kRouters.at(router); }
Balance ModelConfig::balance_kind() const { return kBalances.at(balance); }

std::string ModelConfig::router_label() const {
  if (router != "kern") return router;
  std::string label = "kern";
  if (!kern.relu) label += "_no_relu";
  if (kern.after_topk) label += "_after_topk";
  if (kern.init == "monte_carlo") label += "_mc";
  return label;
}

namespace {

// Fields that take one of a few names: checked whenever a config is parsed, even partially.
void check_names(const JobConfig& c) {
  const auto& m = c.model;
  if (!kRouters.count(m.router))
    throw ConfigError("model.router: unknown router \"" + m.router + "\" (expected one of: " + names_of(kRouters) +
                      ", kern_no_relu, kern_after_topk)");
  if (!kBalances.count(m.balance))
    throw ConfigError("model.balance: unknown value \"" + m.balance + "\" (expected one of: " + names_of(kBalances) + ")");
  require_one_of(m.kern.init, {"one", "monte_carlo"}, "model.kern.init");
  require_one_of(c.train.precision, {"fp32", "bf16", "fp16"}, "train.precision");
  require_one_of(c.train.device, {"auto", "cpu", "cuda"}, "train.device");
  require_one_of(c.data.tokenizer, {"gpt2", "bytes"}, "data.tokenizer");
}

}  // namespace

void validate(const JobConfig& c) {
  const auto& m = c.model;
  const auto& t = c.train;
  check_names(c);
  for (auto [v, p] : {std::pair{m.vocab_size, "model.vocab_size"}, {m.seq_len, "model.seq_len"}, {m.layers, "model.layers"},
                      {m.d_model, "model.d_model"}, {m.heads, "model.heads"}, {m.granularity, "model.granularity"}})
    require_positive(v, p);
  require(m.d_model % m.heads == 0, "model.d_model",
          [&] { return "d_model " + std::to_string(m.d_model) + " is not divisible by heads " + std::to_string(m.heads); });
  require(m.dense_size >= 0, "model.dense_size", "must be >= 0");
  if (m.is_moe()) {
    for (auto [v, p] : {std::pair{m.experts, "model.experts"}, {m.top_k, "model.top_k"}, {m.expert_size, "model.expert_size"}})
      require_positive(v, p);
    require(m.expert_size % m.granularity == 0, "model.expert_size", [&] {
      return "expert_size " + std::to_string(m.expert_size) + " is not divisible by granularity " + std::to_string(m.granularity);
    });
    require(m.top_k <= m.experts, "model.top_k", [&] {
      return "top_k " + std::to_string(m.active_experts()) + " exceeds experts " + std::to_string(m.total_experts()) +
             (m.granularity > 1 ? " (after granularity " + std::to_string(m.granularity) + ")" : "");
    });
  }
  require(m.aux_loss_coef >= 0, "model.aux_loss_coef", "must be >= 0");
  require(m.z_loss_coef >= 0, "model.z_loss_coef", "must be >= 0");
  require(m.balance != "aux_loss" || m.aux_loss_coef > 0, "model.aux_loss_coef", "balance \"aux_loss\" needs a coefficient > 0");
  require(m.router != "kmeans" || m.balance != "aux_loss", "model.balance",
          "the kmeans router has no parameters for an auxiliary loss to train; it balances with its own bias");
  require(m.centroid_decay >= 0 && m.centroid_decay < 1, "model.centroid_decay", "must be in [0, 1)");

  for (auto [v, p] : {std::pair{t.steps, "train.steps"}, {t.batch_size, "train.batch_size"}, {t.micro_batch, "train.micro_batch"},
                      {t.log_every, "train.log_every"}, {t.eval_every, "train.eval_every"}, {t.eval_batches, "train.eval_batches"},
                      {t.checkpoint_every, "train.checkpoint_every"}, {t.keep_checkpoints, "train.keep_checkpoints"}})
    require_positive(v, p);
  require(t.batch_size % t.micro_batch == 0, "train.batch_size", [&] {
    return "batch_size " + std::to_string(t.batch_size) + " is not divisible by micro_batch " + std::to_string(t.micro_batch);
  });
  require(t.lr > 0, "train.lr", "must be positive");
  require(t.min_lr >= 0 && t.min_lr <= t.lr, "train.min_lr", "must be in [0, lr]");
  require(t.warmup >= 0, "train.warmup", "must be >= 0");
  require(t.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 disables clipping)");
  require(t.threads >= 0, "train.threads", "must be >= 0");
  require(!t.cuda_graph || t.device != "cpu", "train.cuda_graph", "needs a GPU, and train.device is cpu");
  require(t.keep_every >= 0, "train.keep_every", "must be >= 0");
}

JobConfig parse_job_config(const json& j, bool cross_checks) {
  JobConfig c;
  ObjectReader r(j, "");
  r.read("name", c.name);
  r.read("seed", c.seed);
  if (auto* m = r.child("model")) parse_model(*m, c.model);
  if (auto* t = r.child("train")) parse_train(*t, c.train);
  if (auto* d = r.child("data")) parse_data(*d, c.data);
  r.reject_unknown_keys();
  if (cross_checks)
    validate(c);
  else
    check_names(c);
  return c;
}

json read_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": cannot open file");
  try {
    return json::parse(in);
  } catch (const json::parse_error& e) {
    throw ConfigError(path + ": not valid JSON: " + e.what());
  }
}

JobConfig load_job_config(const std::string& path) { return parse_job_config(read_json_file(path)); }

namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = above;
    }
  }
  return row[b.size()];
}

json::json_pointer pointer_of(const std::string& dotted) {
  std::string pointer = "/" + dotted;
  std::replace(pointer.begin(), pointer.end(), '.', '/');
  return json::json_pointer(pointer);
}

void collect_leaf_paths(const json& j, const std::string& prefix, std::vector<std::string>& out) {
  for (auto& [key, value] : j.items()) {
    std::string path = prefix.empty() ? key : prefix + "." + key;
    if (value.is_object())
      collect_leaf_paths(value, path, out);
    else
      out.push_back(path);
  }
}

}  // namespace

std::string did_you_mean(const std::string& key, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_distance = std::max<size_t>(3, key.size() / 4) + 1;  // suggest only plausible typos
  for (auto& candidate : candidates) {
    size_t d = edit_distance(key, candidate);
    if (d < best_distance) best_distance = d, best = candidate;
  }
  return best.empty() ? "" : " (did you mean \"" + best + "\"?)";
}

const std::vector<std::string>& config_paths() {
  static const std::vector<std::string> paths = [] {
    std::vector<std::string> out;
    collect_leaf_paths(JobConfig{}.to_json(), "", out);
    return out;
  }();
  return paths;
}

void set_dotted(json& config, const std::string& path, const json& value) { config[pointer_of(path)] = value; }

const json* find_dotted(const json& config, const std::string& path) {
  auto pointer = pointer_of(path);
  return config.contains(pointer) ? &config.at(pointer) : nullptr;
}

void apply_override(json& config, const std::string& assignment) {
  auto equals = assignment.find('=');
  if (equals == std::string::npos || equals == 0)
    throw ConfigError("--set " + assignment + ": expected PATH=VALUE, e.g. model.router=softmax");
  std::string path = assignment.substr(0, equals), text = assignment.substr(equals + 1);
  json value = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) value = text;
  set_dotted(config, path, value);
}

json JobConfig::to_json() const {
  const auto& m = model;
  const auto& t = train;
  // nlohmann::json objects keep keys sorted, so dump() is canonical.
  return json{
      {"name", name},
      {"seed", seed},
      {"model",
       {{"vocab_size", m.vocab_size}, {"seq_len", m.seq_len}, {"layers", m.layers}, {"d_model", m.d_model},
        {"heads", m.heads}, {"router", m.router}, {"experts", m.experts}, {"top_k", m.top_k},
        {"expert_size", m.expert_size}, {"granularity", m.granularity}, {"dense_size", m.dense_size},
        {"renormalize", m.renormalize}, {"balance", m.balance}, {"aux_loss_coef", m.aux_loss_coef},
        {"z_loss_coef", m.z_loss_coef}, {"bias_update_rate", m.bias_update_rate}, {"centroid_decay", m.centroid_decay},
        {"kern", {{"relu", m.kern.relu}, {"after_topk", m.kern.after_topk}, {"init", m.kern.init}}}}},
      {"train",
       {{"steps", t.steps}, {"batch_size", t.batch_size}, {"micro_batch", t.micro_batch}, {"lr", t.lr},
        {"warmup", t.warmup}, {"min_lr", t.min_lr}, {"betas", {t.beta1, t.beta2}}, {"weight_decay", t.weight_decay},
        {"grad_clip", t.grad_clip}, {"precision", t.precision}, {"log_every", t.log_every}, {"eval_every", t.eval_every},
        {"eval_batches", t.eval_batches}, {"checkpoint_every", t.checkpoint_every},
        {"keep_checkpoints", t.keep_checkpoints}, {"keep_every", t.keep_every}, {"device", t.device}, {"threads", t.threads},
        {"cuda_graph", t.cuda_graph}}},
      {"data", {{"train", data.train}, {"val", data.val}, {"tokenizer", data.tokenizer}}}};
}

std::string JobConfig::hash() const {
  // A job's name is a label, and where and how fast it runs does not change what it computes, so
  // none of those are identity: two ways of writing the same experiment are one job.
  json identity = to_json();
  identity.erase("name");
  for (auto key : {"device", "threads", "cuda_graph", "keep_checkpoints", "keep_every"}) identity["train"].erase(key);
  return sha256_hex(identity.dump()).substr(0, 16);
}

int TrainConfig::micro_batches_per_rank(int ranks) const {
  if (accumulation_steps() % ranks != 0)
    throw ConfigError("train.batch_size: " + std::to_string(batch_size) + " sequences per step do not split into " +
                      std::to_string(ranks) + " ranks x whole micro-batches of " + std::to_string(micro_batch) + " (" +
                      std::to_string(accumulation_steps()) + " micro-batches, which do not split evenly over " +
                      std::to_string(ranks) + " ranks; batch_size must be a multiple of ranks x micro_batch)");
  return accumulation_steps() / ranks;
}

}  // namespace moelab
