#include "runner/sweep_spec.hpp"

#include <algorithm>
#include <exception>
#include <set>
#include <thread>

#include "engine/config/config_schema.hpp"
#include "eval/tasks.hpp"
#include "runner/slurm_executor.hpp"

namespace moelab {
namespace {

using nlohmann::json;
using Dimension = std::vector<std::pair<std::string, std::vector<json>>>;  // paths varied together

const std::vector<std::string> kSpecKeys = {"name", "base", "axes", "zip", "include", "exclude", "max_attempts",
                                            "local", "slurm", "eval"};

[[noreturn]] void fail(const std::string& where, const std::string& message) { throw ConfigError(where + ": " + message); }

const ConfigField& config_field(const std::string& path, const std::string& where) {
  const ConfigField* field = job_config_schema().find(path);
  if (!field) fail(where, "unknown config path" + did_you_mean(path, job_config_schema().paths()));
  return *field;
}

// A value must be one its field takes, reported where the spec gave it ("axes.train.betas[1][0]: ...");
// checks across fields come later, with each job's whole config.
void check_value(const ConfigField& field, const json& value, const std::string& where) {
  JobConfig scratch;
  field.read(scratch, value, where);
}

std::vector<json> value_list(const json& values, const std::string& where) {
  if (!values.is_array()) fail(where, "expected a list of values, got " + values.dump());
  if (values.empty()) fail(where, "empty list: an axis needs at least one value");
  return values.get<std::vector<json>>();
}

Dimension parse_paths_to_lists(const json& j, const std::string& where) {
  if (!j.is_object()) fail(where, "expected an object of config paths to lists, got " + j.dump());
  Dimension dimension;
  for (auto& [path, values] : j.items()) {
    const ConfigField& field = config_field(path, where + "." + path);
    auto list = value_list(values, where + "." + path);
    for (size_t i = 0; i < list.size(); ++i) check_value(field, list[i], where + "." + path + "[" + std::to_string(i) + "]");
    dimension.emplace_back(path, std::move(list));
  }
  return dimension;
}

std::vector<json> parse_partial_configs(const json& j, const std::string& where) {
  if (!j.is_array()) fail(where, "expected a list of objects of config paths to values, got " + j.dump());
  std::vector<json> out;
  for (size_t i = 0; i < j.size(); ++i) {
    const std::string item = where + "[" + std::to_string(i) + "]";
    if (!j[i].is_object() || j[i].empty()) fail(item, "expected a non-empty object of config paths to values");
    for (auto& [path, value] : j[i].items()) {
      check_value(config_field(path, item + "." + path), value, item + "." + path);
    }
    out.push_back(j[i]);
  }
  return out;
}

std::string short_label(const std::string& path) {
  if (path == "seed") return "seed";
  auto dot = path.rfind('.');
  return dot == std::string::npos ? path : path.substr(dot + 1);
}

std::string value_label(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

// The job for one point of the sweep: base + the point's values, checked as a whole config.
PlannedJob make_job(const SweepSpec& spec, const json& point) {
  json config = spec.base;
  std::string label;
  for (auto& [path, value] : point.items()) {
    set_dotted(config, path, value);
    label += (label.empty() ? "" : ",") + short_label(path) + "=" + value_label(value);
  }
  config["name"] = spec.name + (label.empty() ? "" : "/" + label);
  PlannedJob job;
  try {
    job.config = parse_job_config(config);
  } catch (const ConfigError& e) {
    throw ConfigError((spec.file.empty() ? "" : spec.file + ": ") + "job " + point.dump() + ": " + e.what());
  }
  job.id = job.config.hash();
  job.axes = point;
  return job;
}

// make_job for every point, on all cores (a 100,000-job study resolves and hashes each config).
// The first failing point, in order, is the error reported, whatever thread found it.
template <typename Points>
std::vector<PlannedJob> make_jobs(const SweepSpec& spec, const Points& points) {
  std::vector<PlannedJob> jobs(points.size());
  std::vector<std::exception_ptr> errors(points.size());
  const size_t workers = std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 1 + points.size() / 1000);
  std::vector<std::thread> threads;
  for (size_t w = 0; w < workers; ++w)
    threads.emplace_back([&, w] {
      for (size_t i = w; i < points.size(); i += workers) try {
          jobs[i] = make_job(spec, points[i]);
          if (spec.eval.every > 0) jobs[i].config.train.keep_every = spec.eval.every;  // not part of the job's id
        } catch (...) {
          errors[i] = std::current_exception();
        }
    });
  for (auto& t : threads) t.join();
  for (auto& error : errors)
    if (error) std::rethrow_exception(error);
  return jobs;
}

bool matches(const PlannedJob& job, const json& pattern) {
  const json resolved = job.config.to_json();
  for (auto& [path, value] : pattern.items()) {
    const json* actual = job.axes.contains(path) ? &job.axes[path] : find_dotted(resolved, path);
    if (!actual || *actual != value) return false;
  }
  return true;
}

// The points of the product of the dimensions, the last dimension varying fastest: point `index`
// is the mixed-radix number whose digits pick one value of each dimension.
struct Product {
  const std::vector<Dimension>& dimensions;
  size_t size() const {
    size_t n = 1;
    for (auto& d : dimensions) n *= d.front().second.size();
    return n;
  }
  json operator[](size_t index) const {
    json point = json::object();
    for (auto d = dimensions.rbegin(); d != dimensions.rend(); ++d) {
      const size_t length = d->front().second.size(), pick = index % length;
      index /= length;
      for (auto& [path, values] : *d) point[path] = values[pick];
    }
    return point;
  }
};

EvalStage parse_eval_stage(const json& j) {
  if (!j.is_object()) fail("eval", "expected an object with tasks, limit and checkpoints");
  EvalStage stage;
  stage.enabled = true;
  stage.tasks = eval_task_names();
  for (auto& [key, value] : j.items()) {
    if (key == "tasks") {
      if (!value.is_array() || value.empty()) fail("eval.tasks", "expected a non-empty list of task names");
      stage.tasks.clear();
      for (size_t i = 0; i < value.size(); ++i) {
        const std::string where = "eval.tasks[" + std::to_string(i) + "]";
        if (!value[i].is_string()) fail(where, "expected a task name, got " + value[i].dump());
        std::string task = value[i];
        if (const auto known = eval_task_names(); std::find(known.begin(), known.end(), task) == known.end())
          fail(where, "unknown task \"" + task + "\"" + did_you_mean(task, known));
        stage.tasks.push_back(task);
      }
    } else if (key == "limit") {
      stage.limit = json_int(value, "eval.limit", 0);
    } else if (key == "checkpoints") {
      // "final", or {"every": N}: the checkpoints at multiples of N are kept from pruning
      // (train.keep_every) so that they still exist when the stage runs after training.
      const bool every = value.is_object() && value.size() == 1 && value.contains("every");
      if (value != "final" && !every)
        fail("eval.checkpoints", "expected \"final\" or {\"every\": N} with N > 0, got " + value.dump());
      stage.every = every ? json_int(value["every"], "eval.checkpoints.every", 1) : 0;
    } else {
      fail("eval." + key, "unknown key" + did_you_mean(key, {"tasks", "limit", "checkpoints"}));
    }
  }
  return stage;
}

}  // namespace

std::vector<std::string> eval_arguments(const EvalStage& stage, const std::string& job_id, const std::string& db) {
  std::string tasks;
  for (auto& t : stage.tasks) tasks += (tasks.empty() ? "" : ",") + t;
  return {"eval", "--job", job_id, "--db", db, "--tasks", tasks, "--limit", std::to_string(stage.limit),
          "--every", std::to_string(stage.every)};
}

SweepSpec parse_sweep_spec(const json& j) {
  if (!j.is_object()) fail("(top level)", std::string("expected an object, got ") + j.type_name());
  for (auto& [key, value] : j.items())
    if (std::find(kSpecKeys.begin(), kSpecKeys.end(), key) == kSpecKeys.end())
      fail(key, "unknown key" + did_you_mean(key, kSpecKeys));
  SweepSpec spec;
  spec.source = j;
  if (!j.contains("name") || !j["name"].is_string() || j["name"].get<std::string>().empty())
    fail("name", "expected a non-empty string naming the sweep");
  spec.name = j["name"];
  if (spec.name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") != std::string::npos)
    fail("name", "\"" + spec.name + "\" may use only letters, digits, '_', '.' and '-'");
  if (j.contains("base")) {
    if (!j["base"].is_object()) fail("base", std::string("expected a job config object, got ") + j["base"].type_name());
    spec.base = j["base"];
    try {
      parse_job_config(spec.base, /*cross_checks=*/false);
    } catch (const ConfigError& e) {
      throw ConfigError("base." + std::string(e.what()));
    }
  }
  if (j.contains("axes")) {
    auto axes = parse_paths_to_lists(j["axes"], "axes");
    for (auto& axis : axes) spec.axes.push_back(axis);
  }
  if (j.contains("zip")) {
    if (!j["zip"].is_array()) fail("zip", "expected a list of groups (objects of config paths to equally long lists)");
    for (size_t g = 0; g < j["zip"].size(); ++g) {
      const std::string where = "zip[" + std::to_string(g) + "]";
      auto group = parse_paths_to_lists(j["zip"][g], where);
      if (group.empty()) fail(where, "empty group");
      for (auto& [path, values] : group)
        if (values.size() != group.front().second.size())
          fail(where + "." + path, "has " + std::to_string(values.size()) + " values but " + group.front().first + " has " +
                                       std::to_string(group.front().second.size()) + "; zipped lists must be equally long");
      spec.zips.push_back(std::move(group));
    }
  }
  std::set<std::string> varied;
  for (auto& [path, values] : spec.axes) varied.insert(path);
  for (size_t g = 0; g < spec.zips.size(); ++g)
    for (auto& [path, values] : spec.zips[g])
      if (!varied.insert(path).second)
        fail("zip[" + std::to_string(g) + "]." + path, "this path is already varied by another axis or zip group");
  if (j.contains("include")) spec.include = parse_partial_configs(j["include"], "include");
  if (j.contains("exclude")) spec.exclude = parse_partial_configs(j["exclude"], "exclude");
  if (j.contains("max_attempts")) spec.max_attempts = json_int(j["max_attempts"], "max_attempts", 1);
  if (j.contains("local")) {
    const json& local = j["local"];
    if (!local.is_object()) fail("local", "expected an object");
    for (auto& [key, value] : local.items()) {
      if (key != "jobs" && key != "ranks") fail("local." + key, "unknown key" + did_you_mean(key, {"jobs", "ranks"}));
      // jobs 0: one per `ranks` GPUs, else 1
      (key == "ranks" ? spec.local.ranks : spec.local.jobs) = json_int(value, "local." + key, key == "ranks" ? 1 : 0);
    }
  }
  if (j.contains("eval")) spec.eval = parse_eval_stage(j["eval"]);
  if (j.contains("slurm")) {
    parse_slurm_options(j["slurm"]);  // checked now: a bad section fails before anything is submitted
    spec.slurm = j["slurm"];
  }
  return spec;
}

SweepSpec load_sweep_spec(const std::string& path) {
  const json source = read_json_file(path);
  SweepSpec spec;
  try {
    spec = parse_sweep_spec(source);
  } catch (const ConfigError& e) {
    throw ConfigError(path + ": " + e.what());
  }
  spec.file = path;
  return spec;
}

std::vector<PlannedJob> expand(const SweepSpec& spec) {
  std::vector<Dimension> dimensions;
  for (auto& axis : spec.axes) dimensions.push_back({axis});
  for (auto& group : spec.zips) dimensions.push_back(group);

  std::vector<PlannedJob> jobs;
  std::set<std::string> seen;
  auto add = [&](PlannedJob job) {
    if (seen.insert(job.id).second) jobs.push_back(std::move(job));
  };
  for (auto& job : make_jobs(spec, Product{dimensions})) {
    bool excluded = std::any_of(spec.exclude.begin(), spec.exclude.end(), [&](const json& e) { return matches(job, e); });
    if (!excluded) add(std::move(job));
  }
  for (auto& job : make_jobs(spec, spec.include)) add(std::move(job));
  return jobs;
}

}  // namespace moelab
