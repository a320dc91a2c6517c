#include "engine/config/job_config.hpp"

#include "engine/config/config_schema.hpp"
#include "engine/config/router_registry.hpp"

#include <algorithm>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <type_traits>

namespace moelab {
namespace {

using nlohmann::json;

constexpr long long kIntMax = std::numeric_limits<int>::max();


const std::map<std::string, Balance> kBalances = {
    {"none", Balance::None}, {"aux_loss", Balance::AuxLoss}, {"aux_free", Balance::AuxFree}};

template <typename Table>
std::vector<std::string> names_of(const Table& table) {
  std::vector<std::string> names;
  for (auto& [name, value] : table) names.push_back(name);
  return names;
}

// model.router's accepted values: each registry row's name, then the variants that are aliases.
std::vector<std::string> accepted_router_names() {
  std::vector<std::string> names;
  for (auto& row : router_rows()) names.push_back(row.name);
  for (auto& row : router_rows())
    for (auto& variant : row.variants)
      if (variant.alias) names.push_back(row.name + variant.suffix);
  return names;
}

std::string router_names() {
  std::string list;
  for (auto& name : accepted_router_names()) list += (list.empty() ? "" : ", ") + name;
  return list;
}

void check_router_name(const std::string& name, const std::string& where) {
  const auto names = accepted_router_names();
  if (std::find(names.begin(), names.end(), name) == names.end())
    throw ConfigError(where + ": unknown router \"" + name + "\" (expected one of: " + router_names() + ")" +
                      did_you_mean(name, names));
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

}  // namespace

// Raised only when a default's meaning changes, which moves every job's id (and needs a store
// migration that renames them); adding a field does not raise it (README "Job identity").
constexpr int kIdentityVersion = 1;

// Every field of a job's config, in the order it is read and documented. Fields added from now on
// take Identity::WhenSet and a default that keeps earlier behaviour, so that no job's id moves.
const ConfigSchema& job_config_schema() {
  static const ConfigSchema schema({
      string_field("name", [](auto& c) -> auto& { return c.name; }, "a label for tables and logs", Identity::None),
      // torch seeds are unsigned: a negative one would alias a large one
      integer_field("seed", [](auto& c) -> auto& { return c.seed; }, 0, "initialisation and data order"),
      // Sizes a model cannot do without are >= 1; the expert sizes are checked for MoE routers in
      // validate (a dense model has none).
      integer_field("model.vocab_size", [](auto& c) -> auto& { return c.model.vocab_size; }, 1, "vocabulary size: rows of the embedding"),
      integer_field("model.seq_len", [](auto& c) -> auto& { return c.model.seq_len; }, 1, "tokens per training sequence"),
      integer_field("model.layers", [](auto& c) -> auto& { return c.model.layers; }, 1, "transformer blocks"),
      integer_field("model.d_model", [](auto& c) -> auto& { return c.model.d_model; }, 1, "hidden width; a multiple of heads"),
      integer_field("model.heads", [](auto& c) -> auto& { return c.model.heads; }, 1, "attention heads"),
      string_field("model.router", [](auto& c) -> auto& { return c.model.router; },
                   "the gate of every MoE layer, or dense for a dense FFN; the aliases set a model.kern option",
                   Identity::Always, "one of: " + router_names(), check_router_name),
      integer_field("model.experts", [](auto& c) -> auto& { return c.model.experts; }, 0,
                    "experts per MoE layer, before granularity; >= 1 for MoE routers"),
      integer_field("model.top_k", [](auto& c) -> auto& { return c.model.top_k; }, 0,
                    "experts per token, before granularity; >= 1 for MoE routers, at most experts"),
      integer_field("model.expert_size", [](auto& c) -> auto& { return c.model.expert_size; }, 0,
                    "hidden width of an expert, before granularity; >= 1 for MoE routers, a multiple of granularity"),
      integer_field("model.granularity", [](auto& c) -> auto& { return c.model.granularity; }, 1,
                    "g: g x experts, g x top_k, expert_size / g (finer experts, the same active parameters)"),
      integer_field("model.dense_size", [](auto& c) -> auto& { return c.model.dense_size; }, 0,
                    "dense FFN width when the router is dense; 0: 4 x d_model"),
      boolean_field("model.renormalize", [](auto& c) -> auto& { return c.model.renormalize; },
                    "rescale the k kept gates to sum to 1 (false: gates are the router's own values)"),
      choice_field("model.balance", [](auto& c) -> auto& { return c.model.balance; }, names_of(kBalances),
                   "load balancing: none (the paper's), aux_loss (Switch loss, aux_loss_coef), aux_free (selection bias "
                   "moved by the sign of the load error, bias_update_rate)"),
      number_field("model.aux_loss_coef", [](auto& c) -> auto& { return c.model.aux_loss_coef; }, kNonNegative,
                   "weight of the Switch auxiliary loss; > 0 with balance aux_loss"),
      number_field("model.z_loss_coef", [](auto& c) -> auto& { return c.model.z_loss_coef; }, kNonNegative,
                   "weight of the router z-loss, with any balance"),
      number_field("model.bias_update_rate", [](auto& c) -> auto& { return c.model.bias_update_rate; }, kNonNegative,
                   "aux_free and kmeans: bias step per update, by the sign of the load error"),
      number_field("model.centroid_decay", [](auto& c) -> auto& { return c.model.centroid_decay; }, kUnitInterval,
                   "kmeans: EMA decay of the expert centroids (its gates are 1/k over the chosen experts)"),
      boolean_field("model.kern.relu", [](auto& c) -> auto& { return c.model.kern.relu; },
                    "kern: ReLU on the normalised scores (false: appendix J)"),
      boolean_field("model.kern.after_topk", [](auto& c) -> auto& { return c.model.kern.after_topk; },
                    "kern: top-k on the scores first, then KERN over the k kept (appendix H)"),
      choice_field("model.kern.init", [](auto& c) -> auto& { return c.model.kern.init; }, {"one", "monte_carlo"},
                   "kern: gamma starts at 1, or at the sampled constant of appendices I and L"),
      integer_field("train.steps", [](auto& c) -> auto& { return c.train.steps; }, 1, "optimizer steps"),
      integer_field("train.batch_size", [](auto& c) -> auto& { return c.train.batch_size; }, 1,
                    "sequences per step; a multiple of micro_batch"),
      integer_field("train.micro_batch", [](auto& c) -> auto& { return c.train.micro_batch; }, 1,
                    "sequences per forward and backward pass; the step accumulates batch_size / micro_batch of them"),
      number_field("train.lr", [](auto& c) -> auto& { return c.train.lr; }, kPositive,
                   "peak learning rate, reached after warmup, then cosine decay to min_lr at the last step"),
      integer_field("train.warmup", [](auto& c) -> auto& { return c.train.warmup; }, 0, "steps of linear warmup"),
      number_field("train.min_lr", [](auto& c) -> auto& { return c.train.min_lr; }, kNonNegative,
                   "learning rate at the last step; at most lr"),
      number_pair_field("train.betas", [](auto& c) -> auto& { return c.train.betas; }, kUnitInterval, "AdamW's beta1 and beta2"),
      number_field("train.weight_decay", [](auto& c) -> auto& { return c.train.weight_decay; }, kNonNegative, "AdamW's weight decay"),
      number_field("train.grad_clip", [](auto& c) -> auto& { return c.train.grad_clip; }, kNonNegative,
                   "largest gradient norm; 0: no clipping"),
      choice_field("train.precision", [](auto& c) -> auto& { return c.train.precision; }, {"fp32", "bf16", "fp16"},
                   "autocast on CUDA; the CPU always computes in fp32"),
      integer_field("train.log_every", [](auto& c) -> auto& { return c.train.log_every; }, 1,
                    "steps between train-loss rows (and checks for a non-finite loss)"),
      integer_field("train.eval_every", [](auto& c) -> auto& { return c.train.eval_every; }, 1,
                    "steps between validation losses and routing statistics"),
      integer_field("train.eval_batches", [](auto& c) -> auto& { return c.train.eval_batches; }, 1,
                    "micro-batches of validation data per evaluation"),
      integer_field("train.checkpoint_every", [](auto& c) -> auto& { return c.train.checkpoint_every; }, 1, "steps between checkpoints"),
      integer_field("train.keep_checkpoints", [](auto& c) -> auto& { return c.train.keep_checkpoints; }, 1,
                    "newest checkpoints kept", Identity::None),
      integer_field("train.keep_every", [](auto& c) -> auto& { return c.train.keep_every; }, 0,
                    "checkpoints at multiples of this step are never pruned; 0: none", Identity::None),
      choice_field("train.device", [](auto& c) -> auto& { return c.train.device; }, {"auto", "cpu", "cuda"},
                   "where it trains; auto: CUDA when there is a GPU", Identity::None),
      integer_field("train.threads", [](auto& c) -> auto& { return c.train.threads; }, 0,
                    "CPU intra-op threads; 0: LibTorch's default", Identity::None),
      boolean_field("train.cuda_graph", [](auto& c) -> auto& { return c.train.cuda_graph; },
                    "capture the step as one CUDA graph and replay it (GPU, one process, bf16 for MoE models)", Identity::None),
      string_field("data.train", [](auto& c) -> auto& { return c.data.train; }, "training token file (moelab data prepare)"),
      string_field("data.val", [](auto& c) -> auto& { return c.data.val; }, "validation token file"),
      choice_field("data.tokenizer", [](auto& c) -> auto& { return c.data.tokenizer; }, {"gpt2", "bytes"},
                   "the tokenizer of the token files"),
  }, kIdentityVersion);
  return schema;
}

Balance ModelConfig::balance_kind() const { return kBalances.at(balance); }


void validate(const JobConfig& c) {
  const auto& m = c.model;
  const auto& t = c.train;
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
  job_config_schema().read(j, c);
  resolve_router_name(c.model);  // an alias becomes its router and options
  if (cross_checks) validate(c);
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
  // A string field takes the text as written (name=2024 names the job "2024"), or a quoted JSON string.
  const ConfigField* field = job_config_schema().find(path);
  json value = text;  // a bare string: model.router=softmax
  if (!(field && field->is_string()) || text.starts_with('"')) {
    try {
      value = json::parse(text);
    } catch (const json::out_of_range&) {
      throw ConfigError("--set " + assignment + ": " + number_out_of_range(path, text));
    } catch (const json::parse_error&) {
    }
  }
  set_dotted(config, path, value);
}

json JobConfig::to_json() const { return job_config_schema().to_json(*this); }

std::string JobConfig::hash() const { return job_config_schema().hash(*this); }

int TrainConfig::micro_batches_per_rank(int ranks) const {
  if (accumulation_steps() % ranks != 0)
    throw ConfigError("train.batch_size: " + std::to_string(batch_size) + " sequences per step do not split into " +
                      std::to_string(ranks) + " ranks x whole micro-batches of " + std::to_string(micro_batch) + " (" +
                      std::to_string(accumulation_steps()) + " micro-batches, which do not split evenly over " +
                      std::to_string(ranks) + " ranks; batch_size must be a multiple of ranks x micro_batch)");
  return accumulation_steps() / ranks;
}

}  // namespace moelab
