#include "engine/config/job_config.hpp"

#include "engine/config/hashing.hpp"
#include "engine/config/router_registry.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <set>
#include <sstream>

namespace moelab {
namespace {

using nlohmann::json;

constexpr long long kIntMax = std::numeric_limits<int>::max();

// The values a real-valued field may take: from least to most, either end open; always finite.
struct NumberRange {
  double least, most;
  bool least_open = false, most_open = false;

  bool contains(double v) const {
    return std::isfinite(v) && (least_open ? v > least : v >= least) && (most_open ? v < most : v <= most);
  }
  std::string text() const {
    if (std::isinf(most)) return (least_open ? "> " : ">= ") + number_text(least);
    return std::string("in ") + (least_open ? "(" : "[") + number_text(least) + ", " + number_text(most) + (most_open ? ")" : "]");
  }
  static std::string number_text(double v) {
    std::ostringstream out;
    out << v;
    return out.str();
  }
};

constexpr double kInfinity = std::numeric_limits<double>::infinity();
const NumberRange kPositive{0, kInfinity, /*least_open=*/true};
const NumberRange kNonNegative{0, kInfinity};
const NumberRange kUnitInterval{0, 1, false, /*most_open=*/true};  // [0, 1): decays and Adam's betas

double json_number(const json& v, const std::string& where, const NumberRange& range) {
  if (!v.is_number() || !range.contains(v.get<double>()))
    throw ConfigError(where + ": expected a number " + range.text() + ", got " + v.dump());
  return v.get<double>();
}

// Reads the fields of one JSON object, remembering which keys were consumed so that any key left
// over is reported as unknown (with the nearest known name as a hint). Numeric fields are read with
// their domain, so that each field's allowed values are stated where it is read.
class ObjectReader {
 public:
  ObjectReader(const json& j, std::string path) : j_(j), path_(std::move(path)) {
    if (!j_.is_object()) throw ConfigError(where("") + ": expected an object, got " + j_.type_name());
  }

  void read(const std::string& key, bool& out) {
    if (auto* v = child(key)) {
      if (!v->is_boolean()) throw ConfigError(where(key) + ": expected a boolean, got " + v->dump());
      out = v->get<bool>();
    }
  }

  void read(const std::string& key, std::string& out) {
    if (auto* v = child(key)) {
      if (!v->is_string()) throw ConfigError(where(key) + ": expected a string, got " + v->dump());
      out = v->get<std::string>();
    }
  }

  // An integer field holding at least `least`, and at most what its C++ type holds.
  template <typename T>
    requires std::is_integral_v<T>
  void read(const std::string& key, T& out, long long least) {
    if (auto* v = child(key)) out = T(json_integer(*v, where(key), least, std::numeric_limits<T>::max()));
  }

  void read(const std::string& key, double& out, const NumberRange& range) {
    if (auto* v = child(key)) out = json_number(*v, where(key), range);
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
  std::string nearest_hint(const std::string& key) const {
    return did_you_mean(key, std::vector<std::string>(known_.begin(), known_.end()));
  }

  const json& j_;
  std::string path_;
  std::set<std::string> known_;
};

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

// Sizes a model cannot do without are >= 1; the expert sizes are checked for MoE routers in validate
// (a dense model has none).
void parse_model(const json& j, ModelConfig& m) {
  ObjectReader r(j, "model");
  r.read("vocab_size", m.vocab_size, 1);
  r.read("seq_len", m.seq_len, 1);
  r.read("layers", m.layers, 1);
  r.read("d_model", m.d_model, 1);
  r.read("heads", m.heads, 1);
  r.read("router", m.router);
  r.read("experts", m.experts, 0);
  r.read("top_k", m.top_k, 0);
  r.read("expert_size", m.expert_size, 0);
  r.read("granularity", m.granularity, 1);
  r.read("dense_size", m.dense_size, 0);
  r.read("renormalize", m.renormalize);
  r.read("balance", m.balance);
  r.read("aux_loss_coef", m.aux_loss_coef, kNonNegative);
  r.read("z_loss_coef", m.z_loss_coef, kNonNegative);
  r.read("bias_update_rate", m.bias_update_rate, kNonNegative);
  r.read("centroid_decay", m.centroid_decay, kUnitInterval);
  if (auto* k = r.child("kern")) parse_kern(*k, m.kern);
  r.reject_unknown_keys();
}

void parse_train(const json& j, TrainConfig& t) {
  ObjectReader r(j, "train");
  r.read("steps", t.steps, 1);
  r.read("batch_size", t.batch_size, 1);
  r.read("micro_batch", t.micro_batch, 1);
  r.read("lr", t.lr, kPositive);
  r.read("warmup", t.warmup, 0);
  r.read("min_lr", t.min_lr, kNonNegative);  // and <= lr: validate
  if (auto* b = r.child("betas")) {
    if (!b->is_array() || b->size() != 2)
      throw ConfigError("train.betas: expected an array of two numbers, got " + b->dump());
    t.beta1 = json_number((*b)[0], "train.betas[0]", kUnitInterval);
    t.beta2 = json_number((*b)[1], "train.betas[1]", kUnitInterval);
  }
  r.read("weight_decay", t.weight_decay, kNonNegative);
  r.read("grad_clip", t.grad_clip, kNonNegative);  // 0 disables clipping
  r.read("precision", t.precision);
  r.read("log_every", t.log_every, 1);
  r.read("eval_every", t.eval_every, 1);
  r.read("eval_batches", t.eval_batches, 1);
  r.read("checkpoint_every", t.checkpoint_every, 1);
  r.read("keep_checkpoints", t.keep_checkpoints, 1);
  r.read("keep_every", t.keep_every, 0);  // 0: none
  r.read("device", t.device);
  r.read("threads", t.threads, 0);        // 0: LibTorch's default
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

void require_one_of(const std::string& v, std::initializer_list<const char*> allowed, const std::string& path) {
  std::string list;
  for (auto a : allowed) {
    if (v == a) return;
    list += (list.empty() ? "" : ", ") + std::string(a);
  }
  throw ConfigError(path + ": unknown value \"" + v + "\" (expected one of: " + list + ")");
}

}  // namespace

Balance ModelConfig::balance_kind() const { return kBalances.at(balance); }

namespace {

// Fields that take one of a few names: checked whenever a config is parsed, even partially.
void check_names(const JobConfig& c) {
  const auto& m = c.model;
  if (!kBalances.count(m.balance))
    throw ConfigError("model.balance: unknown value \"" + m.balance + "\" (expected one of: " + names_of(kBalances) + ")");
  require_one_of(m.kern.init, {"one", "monte_carlo"}, "model.kern.init");
  require_one_of(c.train.precision, {"fp32", "bf16", "fp16"}, "train.precision");
  require_one_of(c.train.device, {"auto", "cpu", "cuda"}, "train.device");
  require_one_of(c.data.tokenizer, {"gpt2", "bytes"}, "data.tokenizer");
}

}  // namespace

// Each field's own domain is checked as it is read (parse_model, parse_train); these are the checks
// across fields.
void validate(const JobConfig& c) {
  const auto& m = c.model;
  const auto& t = c.train;
  check_names(c);
  require(m.d_model % m.heads == 0, "model.d_model",
          [&] { return "d_model " + std::to_string(m.d_model) + " is not divisible by heads " + std::to_string(m.heads); });
  require(m.dense_size > 0 || m.d_model <= kIntMax / 4, "model.d_model", [&] {
    return "the dense FFN width 4 x d_model = " + std::to_string(4LL * m.d_model) + " does not fit an int; set model.dense_size";
  });
  if (m.is_moe()) {
    for (auto [v, p] : {std::pair{m.experts, "model.experts"}, {m.top_k, "model.top_k"}, {m.expert_size, "model.expert_size"}})
      require(v > 0, p, [&] { return "a " + m.router + " router needs an integer >= 1, got " + std::to_string(v); });
    require(m.experts <= kIntMax / m.granularity, "model.experts", [&] {
      return "experts " + std::to_string(m.experts) + " x granularity " + std::to_string(m.granularity) + " = " +
             std::to_string(1LL * m.experts * m.granularity) + " does not fit an int";
    });
    require(m.expert_size % m.granularity == 0, "model.expert_size", [&] {
      return "expert_size " + std::to_string(m.expert_size) + " is not divisible by granularity " + std::to_string(m.granularity);
    });
    require(m.top_k <= m.experts, "model.top_k", [&] {
      return "top_k " + std::to_string(m.active_experts()) + " exceeds experts " + std::to_string(m.total_experts()) +
             (m.granularity > 1 ? " (after granularity " + std::to_string(m.granularity) + ")" : "");
    });
  }
  require(m.balance != "aux_loss" || m.aux_loss_coef > 0, "model.aux_loss_coef", "balance \"aux_loss\" needs a coefficient > 0");
  require(router_row(m.router).trained_by_gradient || m.balance != "aux_loss", "model.balance", [&] {
    return "the " + m.router + " router has no parameters for an auxiliary loss to train; it balances with its own bias";
  });

  require(t.batch_size % t.micro_batch == 0, "train.batch_size", [&] {
    return "batch_size " + std::to_string(t.batch_size) + " is not divisible by micro_batch " + std::to_string(t.micro_batch);
  });
  require(t.min_lr <= t.lr, "train.min_lr", [&] {
    return "expected a number in [0, lr] = [0, " + NumberRange::number_text(t.lr) + "], got " + NumberRange::number_text(t.min_lr);
  });
  require(!t.cuda_graph || t.device != "cpu", "train.cuda_graph", "needs a GPU, and train.device is cpu");
}

JobConfig parse_job_config(const json& j, bool cross_checks) {
  JobConfig c;
  ObjectReader r(j, "");
  r.read("name", c.name);
  r.read("seed", c.seed, 0);  // torch seeds are unsigned: a negative one would alias a large one
  if (auto* m = r.child("model")) parse_model(*m, c.model);
  if (auto* t = r.child("train")) parse_train(*t, c.train);
  if (auto* d = r.child("data")) parse_data(*d, c.data);
  r.reject_unknown_keys();
  resolve_router_name(c.model);  // an alias becomes its router and options; an unknown name is refused
  if (cross_checks)
    validate(c);
  else
    check_names(c);
  return c;
}

long long json_integer(const json& v, const std::string& where, long long least, long long most) {
  // JSON keeps non-negative integers unsigned: compare them as such before narrowing.
  const bool fits = v.is_number_unsigned()
                        ? most >= 0 && v.get<unsigned long long>() <= (unsigned long long)most &&
                              (least <= 0 || v.get<unsigned long long>() >= (unsigned long long)least)
                        : v.is_number_integer() && v.get<long long>() >= least && v.get<long long>() <= most;
  if (!fits)
    throw ConfigError(where + ": expected an integer in [" + std::to_string(least) + ", " + std::to_string(most) + "], got " +
                      v.dump());
  return v.get<long long>();
}

namespace {

// Follows a parse that failed, to say at which key it failed ("train.lr", "axes.seed[2]"), where
// (line and column) and on what token: nlohmann's own errors for a number it cannot hold say none of it.
class FailureLocator : public nlohmann::json_sax<json> {
 public:
  std::string path, token;
  size_t offset = 0;  // of the end of the failing token

  bool null() override { return value(); }
  bool boolean(bool) override { return value(); }
  bool number_integer(number_integer_t) override { return value(); }
  bool number_unsigned(number_unsigned_t) override { return value(); }
  bool number_float(number_float_t, const string_t&) override { return value(); }
  bool string(string_t&) override { return value(); }
  bool binary(binary_t&) override { return value(); }
  bool start_object(std::size_t) override { return enter(false); }
  bool key(string_t& key) override {
    levels_.back().key = key;
    return true;
  }
  bool end_object() override { return leave(); }
  bool start_array(std::size_t) override { return enter(true); }
  bool end_array() override { return leave(); }
  bool parse_error(std::size_t position, const std::string& last_token, const nlohmann::detail::exception&) override {
    for (auto& level : levels_) {
      if (level.array) path.append("[").append(std::to_string(level.index)).append("]");
      else if (!level.key.empty()) path.append(path.empty() ? "" : ".").append(level.key);
    }
    token = last_token, offset = position;
    return false;
  }

 private:
  struct Level {
    bool array = false;
    size_t index = 0;  // of the array element being read
    std::string key;   // of the object member being read
  };
  bool enter(bool array) {
    levels_.push_back({.array = array});
    return true;
  }
  bool leave() {
    levels_.pop_back();
    return value();
  }
  bool value() {
    if (!levels_.empty() && levels_.back().array) ++levels_.back().index;
    return true;
  }
  std::vector<Level> levels_;
};

// What nlohmann's "number overflow parsing '1e999'" means, for the field at `path`.
std::string number_out_of_range(const std::string& path, const std::string& number) {
  return path + ": the number " + number + " is out of range: it must fit a double";
}

// "(line 3, column 12)" for the character at `offset` of `text`.
std::string line_and_column(const std::string& text, size_t offset) {
  offset = std::min(offset, text.size());
  const size_t line = 1 + std::count(text.begin(), text.begin() + offset, '\n');
  const size_t line_start = text.rfind('\n', offset == 0 ? 0 : offset - 1);
  const size_t column = offset - (line_start == std::string::npos || offset == 0 ? 0 : line_start + 1) + 1;
  return "(line " + std::to_string(line) + ", column " + std::to_string(column) + ")";
}

}  // namespace

json read_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": cannot open file");
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  try {
    return json::parse(text);
  } catch (const json::out_of_range&) {
    FailureLocator failure;
    json::sax_parse(text, &failure);
    const size_t start = failure.offset - std::min(failure.offset, failure.token.size());
    throw ConfigError(path + ": " + number_out_of_range(failure.path.empty() ? "(top level)" : failure.path, failure.token) +
                      " " + line_and_column(text, start));
  } catch (const json::parse_error& e) {
    throw ConfigError(path + ": not valid JSON: " + e.what());
  }
}

JobConfig load_job_config(const std::string& path, const std::vector<std::string>& overrides) {
  json config = read_json_file(path);
  for (auto& assignment : overrides) apply_override(config, assignment);
  try {
    return parse_job_config(config);
  } catch (const ConfigError& e) {
    // Blame the override that set the offending field, if one did, else the file.
    const std::string message = e.what();
    for (auto& assignment : overrides) {
      const std::string field = assignment.substr(0, assignment.find('='));
      if (message.starts_with(field + ":") || message.starts_with(field + "[") || message.starts_with(field + "."))
        throw ConfigError("--set " + assignment + ": " + message);
    }
    throw ConfigError(path + ": " + message);
  }
}

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
  json value;
  try {
    value = json::parse(text);
  } catch (const json::out_of_range&) {
    throw ConfigError("--set " + assignment + ": " + number_out_of_range(path, text));
  } catch (const json::parse_error&) {
    value = text;  // a bare string: model.router=softmax
  }
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
