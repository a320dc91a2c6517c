#include "engine/config/config_schema.hpp"

#include <algorithm>
#include <sstream>
#include <stdexcept>

#include "engine/config/hashing.hpp"

namespace moelab {

using nlohmann::json;

std::string NumberRange::text() const {
  if (std::isinf(most)) return (least_open ? "> " : ">= ") + number_text(least);
  return std::string("in ") + (least_open ? "(" : "[") + number_text(least) + ", " + number_text(most) + (most_open ? ")" : "]");
}

std::string NumberRange::number_text(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

double json_number(const json& v, const std::string& where, const NumberRange& range) {
  if (!v.is_number() || !range.contains(v.get<double>()))
    throw ConfigError(where + ": expected a number " + range.text() + ", got " + v.dump());
  return v.get<double>();
}

void require_one_of(const std::string& value, const std::vector<std::string>& allowed, const std::string& where) {
  if (std::find(allowed.begin(), allowed.end(), value) != allowed.end()) return;
  std::string list;
  for (auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
  throw ConfigError(where + ": unknown value \"" + value + "\" (expected one of: " + list + ")");
}

ConfigSchema::ConfigSchema(std::vector<ConfigField> fields, int identity_version)
    : fields_(std::move(fields)), identity_version_(identity_version) {
  nodes_.push_back(Node{});
  for (size_t i = 0; i < fields_.size(); ++i) {
    const std::string& path = fields_[i].path;
    if (!by_path_.emplace(path, int(i)).second) throw std::logic_error("config field " + path + " is declared twice");
    const size_t dot = path.rfind('.');
    const int parent = node_for(dot == std::string::npos ? "" : path.substr(0, dot));
    nodes_[parent].children.push_back({.key = path.substr(dot == std::string::npos ? 0 : dot + 1), .field = int(i)});
  }
  for (auto& node : nodes_) {
    for (auto& child : node.children) node.keys.push_back(child.key);
    std::sort(node.keys.begin(), node.keys.end());
  }
}

int ConfigSchema::node_for(const std::string& path) {
  if (path.empty()) return 0;
  for (size_t i = 0; i < nodes_.size(); ++i)
    if (nodes_[i].path == path) return int(i);
  const size_t dot = path.rfind('.');
  const int parent = node_for(dot == std::string::npos ? "" : path.substr(0, dot));
  nodes_.push_back(Node{.path = path});
  const int node = int(nodes_.size() - 1);
  nodes_[parent].children.push_back({.key = path.substr(dot == std::string::npos ? 0 : dot + 1), .node = node});
  return node;
}

const ConfigField* ConfigSchema::find(const std::string& path) const {
  auto it = by_path_.find(path);
  return it == by_path_.end() ? nullptr : &fields_[it->second];
}

std::vector<std::string> ConfigSchema::paths() const {
  std::vector<std::string> out;
  for (auto& [path, index] : by_path_) out.push_back(path);
  return out;
}

void ConfigSchema::read(const json& j, JobConfig& c) const { read_object(nodes_[0], j, c); }

void ConfigSchema::read_object(const Node& node, const json& j, JobConfig& c) const {
  if (!j.is_object()) throw ConfigError((node.path.empty() ? "(top level)" : node.path) + ": expected an object, got " + j.type_name());
  for (auto& child : node.children) {
    auto it = j.find(child.key);
    if (it == j.end()) continue;
    if (child.field >= 0)
      fields_[child.field].read(c, *it, fields_[child.field].path);
    else
      read_object(nodes_[child.node], *it, c);
  }
  for (auto& [key, value] : j.items())
    if (!std::binary_search(node.keys.begin(), node.keys.end(), key))
      throw ConfigError((node.path.empty() ? key : node.path + "." + key) + ": unknown key" + did_you_mean(key, node.keys));
}

json ConfigSchema::to_json(const JobConfig& c) const { return write_object(nodes_[0], c); }

json ConfigSchema::write_object(const Node& node, const JobConfig& c) const {
  json out = json::object();
  for (auto& child : node.children)
    out[child.key] = child.field >= 0 ? fields_[child.field].write(c) : write_object(nodes_[child.node], c);
  return out;
}

json ConfigSchema::identity(const json& canonical) const {
  json out = identity_object(nodes_[0], canonical);
  if (identity_version_ != 1) out["identity_version"] = identity_version_;
  return out;
}

json ConfigSchema::identity_object(const Node& node, const json& canonical) const {
  json out = json::object();
  for (auto& child : node.children) {
    const json& value = canonical.at(child.key);
    if (child.node >= 0) {
      // An object whose fields are all left out is left out too: a new group at its defaults moves no id.
      if (json inner = identity_object(nodes_[child.node], value); !inner.empty()) out[child.key] = std::move(inner);
      continue;
    }
    const ConfigField& field = fields_[child.field];
    if (field.identity == Identity::Always || (field.identity == Identity::WhenSet && value != field.default_value))
      out[child.key] = value;
  }
  return out;
}

std::string ConfigSchema::hash(const JobConfig& c) const { return sha256_hex(identity(to_json(c)).dump()).substr(0, 16); }

namespace {

const char* identity_text(Identity identity) {
  switch (identity) {
    case Identity::Always: return "yes";
    case Identity::WhenSet: return "unless default";
    case Identity::None: break;
  }
  return "no";
}

}  // namespace

std::string ConfigSchema::reference() const {
  std::string out = "| key | values | default | in the id | meaning |\n|---|---|---|---|---|\n";
  for (auto& f : fields_)
    out += "| `" + f.path + "` | " + f.type + " | `" + f.default_value.dump() + "` | " + identity_text(f.identity) + " | " +
           f.doc + " |\n";
  return out;
}

}  // namespace moelab
