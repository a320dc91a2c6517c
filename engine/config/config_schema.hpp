// A job config's fields, each declared once (job_config.cpp, job_config_schema()): JSON path, the
// values it takes, default, one-line doc and its part in the job's identity. Parsing, serialising,
// identity, `--set`, sweep-axis checks and the README's config reference all read these declarations.
#pragma once

#include <nlohmann/json.hpp>
#include <array>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/config/job_config.hpp"

namespace moelab {

// The values a real-valued field may take: from least to most, either end open; always finite.
struct NumberRange {
  double least, most;
  bool least_open = false, most_open = false;

  bool contains(double v) const {
    return std::isfinite(v) && (least_open ? v > least : v >= least) && (most_open ? v < most : v <= most);
  }
  std::string text() const;               // "> 0", ">= 0", "in [0, 1)"
  static std::string number_text(double v);  // as an ostream writes it: 6e-05, 0.0001
};

inline constexpr double kInfinity = std::numeric_limits<double>::infinity();
inline constexpr NumberRange kPositive{0, kInfinity, /*least_open=*/true};
inline constexpr NumberRange kNonNegative{0, kInfinity};
inline constexpr NumberRange kUnitInterval{0, 1, false, /*most_open=*/true};  // [0, 1): decays and Adam's betas

// The number `v` at JSON path `where` when `range` holds it; otherwise ConfigError
// "where: expected a number in [0, 1), got v".
double json_number(const nlohmann::json& v, const std::string& where, const NumberRange& range);

// A field's part in a job's id (the rule: README "Job identity").
enum class Identity {
  Always,   // hashed at any value: the fields of identity version 1, whose ids predate defaults in the rule
  WhenSet,  // hashed only when it differs from its default: every field added since
  None,     // a label, or where and how the job runs: never hashed
};

struct ConfigField {
  std::string path;  // dotted JSON path: "model.top_k"
  std::string type;  // the values it takes, for the reference: "integer >= 1", "one of: fp32, bf16, fp16"
  std::string doc;   // one line for the reference
  Identity identity = Identity::Always;
  nlohmann::json default_value;  // its value in JobConfig{}
  // Reads a JSON value into the config, refusing one outside the field's domain with a ConfigError
  // that starts with `where` (the path as the user gave it: "train.lr", "axes.train.lr[2]").
  std::function<void(JobConfig&, const nlohmann::json&, const std::string& where)> read;
  std::function<nlohmann::json(const JobConfig&)> write;

  bool is_string() const { return default_value.is_string(); }
};

// Builders of a field from a member: `member` returns a reference to it for a JobConfig& and a const
// JobConfig&, e.g. [](auto& c) -> auto& { return c.model.top_k; }. The default is the member's value
// in JobConfig{}, so a default is written once, in the struct.
template <typename Member, typename Parse>
ConfigField make_field(std::string path, std::string type, std::string doc, Identity identity, Member member, Parse parse) {
  static const JobConfig defaults{};
  return ConfigField{.path = std::move(path),
                     .type = std::move(type),
                     .doc = std::move(doc),
                     .identity = identity,
                     .default_value = nlohmann::json(member(defaults)),
                     .read = [member, parse](JobConfig& c, const nlohmann::json& v, const std::string& where) {
                       member(c) = parse(v, where);
                     },
                     .write = [member](const JobConfig& c) { return nlohmann::json(member(c)); }};
}

// An integer from `least` to the most its member's type holds; out of range is refused, never wrapped.
template <typename Member>
ConfigField integer_field(std::string path, Member member, long long least, std::string doc, Identity identity = Identity::Always) {
  using T = std::remove_cvref_t<decltype(member(std::declval<JobConfig&>()))>;
  static_assert(std::is_integral_v<T> && !std::is_same_v<T, bool>);
  return make_field(std::move(path), "integer >= " + std::to_string(least), std::move(doc), identity, member,
                    [least](const nlohmann::json& v, const std::string& where) {
                      return T(json_integer(v, where, least, std::numeric_limits<T>::max()));
                    });
}

template <typename Member>
ConfigField number_field(std::string path, Member member, NumberRange range, std::string doc, Identity identity = Identity::Always) {
  return make_field(std::move(path), "number " + range.text(), std::move(doc), identity, member,
                    [range](const nlohmann::json& v, const std::string& where) { return json_number(v, where, range); });
}

// Two numbers, each in `range` (Adam's betas); an element's errors name it: "train.betas[1]: ...".
template <typename Member>
ConfigField number_pair_field(std::string path, Member member, NumberRange range, std::string doc,
                              Identity identity = Identity::Always) {
  return make_field(std::move(path), "two numbers, each " + range.text(), std::move(doc), identity, member,
                    [range](const nlohmann::json& v, const std::string& where) {
                      if (!v.is_array() || v.size() != 2)
                        throw ConfigError(where + ": expected an array of two numbers, got " + v.dump());
                      return std::array<double, 2>{json_number(v[0], where + "[0]", range), json_number(v[1], where + "[1]", range)};
                    });
}

template <typename Member>
ConfigField boolean_field(std::string path, Member member, std::string doc, Identity identity = Identity::Always) {
  return make_field(std::move(path), "true or false", std::move(doc), identity, member,
                    [](const nlohmann::json& v, const std::string& where) {
                      if (!v.is_boolean()) throw ConfigError(where + ": expected a boolean, got " + v.dump());
                      return v.get<bool>();
                    });
}

// A string that `check` accepts (it throws a ConfigError starting with `where` otherwise); `type`
// says what it accepts.
using StringCheck = std::function<void(const std::string& value, const std::string& where)>;
template <typename Member>
ConfigField string_field(std::string path, Member member, std::string doc, Identity identity = Identity::Always,
                         std::string type = "string", StringCheck check = {}) {
  return make_field(std::move(path), std::move(type), std::move(doc), identity, member,
                    [check](const nlohmann::json& v, const std::string& where) {
                      if (!v.is_string()) throw ConfigError(where + ": expected a string, got " + v.dump());
                      if (check) check(v.get<std::string>(), where);
                      return v.get<std::string>();
                    });
}

// "where: unknown value "x" (expected one of: a, b)" unless `value` is one of `allowed`.
void require_one_of(const std::string& value, const std::vector<std::string>& allowed, const std::string& where);

template <typename Member>
ConfigField choice_field(std::string path, Member member, std::vector<std::string> allowed, std::string doc,
                         Identity identity = Identity::Always) {
  std::string list;
  for (auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
  return string_field(std::move(path), member, std::move(doc), identity, "one of: " + list,
                      [allowed](const std::string& v, const std::string& where) { require_one_of(v, allowed, where); });
}

// The fields as one JSON object tree: reading a config (strict: wrong types, values outside their
// domain and unknown keys are errors naming the JSON path), writing its canonical form, and its identity.
class ConfigSchema {
 public:
  // `identity_version` changes only when a default's meaning changes (README "Job identity").
  ConfigSchema(std::vector<ConfigField> fields, int identity_version);

  const std::vector<ConfigField>& fields() const { return fields_; }
  int identity_version() const { return identity_version_; }
  const ConfigField* find(const std::string& path) const;  // null when no field has this path
  std::vector<std::string> paths() const;                  // every field's path, sorted

  // Reads the fields `j` has into `c` (the others keep their value), in declaration order; an object
  // is read whole, unknown keys included, before the fields after it.
  void read(const nlohmann::json& j, JobConfig& c) const;
  // Every field, keys sorted (nlohmann::json objects keep them so): dump() is canonical.
  nlohmann::json to_json(const JobConfig& c) const;
  // What a job's id hashes, from its canonical form: Always fields, WhenSet fields that differ from
  // their default, and the identity version when it is not 1.
  nlohmann::json identity(const nlohmann::json& canonical) const;
  std::string hash(const JobConfig& c) const;  // 16 hex digits of SHA-256 over identity(to_json(c)).dump()
  // The README's config reference: a Markdown table, one row per field.
  std::string reference() const;

 private:
  // An object of the config ("" for the top level, "model", "model.kern") and its keys in declaration
  // order: each a field or an object.
  struct Node {
    std::string path;
    struct Child {
      std::string key;
      int field = -1;  // index into fields_, or -1 for an object
      int node = -1;   // index into nodes_ when an object
    };
    std::vector<Child> children;
    std::vector<std::string> keys;  // sorted, for "did you mean"
  };
  int node_for(const std::string& path);
  void read_object(const Node& node, const nlohmann::json& j, JobConfig& c) const;
  nlohmann::json write_object(const Node& node, const JobConfig& c) const;
  nlohmann::json identity_object(const Node& node, const nlohmann::json& canonical) const;

  std::vector<ConfigField> fields_;
  int identity_version_;
  std::vector<Node> nodes_;  // nodes_[0] is the top level
  std::map<std::string, int> by_path_;
};

// The job config's fields: the one declaration of each (job_config.cpp).
const ConfigSchema& job_config_schema();

}  // namespace moelab
