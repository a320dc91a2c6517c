#include "reports/sweep_results.hpp"

#include <algorithm>
#include <set>
#include <stdexcept>

#include "db/store.hpp"
#include "engine/config/router_registry.hpp"

namespace moelab {
namespace {


// Fields that never separate two rows of a table: the seed is averaged over, the router (with its
// options) is the row itself, and the rest say where or how a job ran, not what it computed.
bool is_setting_path(const std::string& path) {
  static const std::set<std::string> excluded = {"name", "seed", "train.device", "train.threads",
                                                 "train.keep_checkpoints", "train.keep_every"};
  return !excluded.count(path) && !is_router_path(path);
}

void flatten(const nlohmann::json& value, const std::string& path, std::map<std::string, std::string>& out) {
  if (value.is_object()) {
    for (auto& [key, child] : value.items()) flatten(child, path.empty() ? key : path + "." + key, out);
  } else if (is_setting_path(path)) {
    out[path] = value.is_string() ? value.get<std::string>() : value.dump();
  }
}

}  // namespace

bool setting_value_less(const std::string& a, const std::string& b) {
  char* end_a = nullptr;
  char* end_b = nullptr;
  const double x = std::strtod(a.c_str(), &end_a), y = std::strtod(b.c_str(), &end_b);
  if (*end_a == '\0' && *end_b == '\0' && !a.empty() && !b.empty() && x != y) return x < y;
  return a < b;
}

namespace {

std::vector<JobResult> read_jobs(const Store& store, const std::string& sweep) {
  std::vector<JobResult> jobs;
  for (auto& [row, state] : store.sweep_jobs(sweep)) {
    JobResult job{.id = row.id, .name = row.name, .status = state.status, .error = state.error, .eval_status = state.eval};
    try {
      job.config = parse_job_config(nlohmann::json::parse(row.config_json));
    } catch (const std::exception& e) {
      throw std::runtime_error("job " + job.id + " (" + job.name + ") in " + store.path() +
                               ": its stored config cannot be read: " + e.what());
    }
    job.router = job.config.model.router_label();
    jobs.push_back(std::move(job));
  }
  return jobs;
}

void read_measurements(const Store& store, const std::string& sweep, std::map<std::string, JobResult*>& by_id) {
  for (auto& m : store.sweep_metrics(sweep, "val")) by_id.at(m.job_id)->val_loss[m.step] = m.loss;
  for (auto& e : store.sweep_evals(sweep))  // oldest step first: the newest one stays
    by_id.at(e.job_id)->evals[e.task + "/" + e.metric] = EvalScore{e.step, e.value, e.stderr_value, e.samples};
  for (auto& r : store.sweep_routing_means(sweep))
    by_id.at(r.job_id)->routing = r;
}

// Fills each job's setting with the config fields that differ somewhere in the sweep.
std::vector<std::string> assign_settings(std::vector<JobResult>& jobs) {
  std::vector<std::map<std::string, std::string>> fields;
  std::map<std::string, std::set<std::string>> values;
  for (auto& job : jobs) {
    flatten(job.config.to_json(), "", fields.emplace_back());
    for (auto& [path, value] : fields.back()) values[path].insert(value);
  }
  std::vector<std::string> varying;
  for (auto& [path, seen] : values)
    if (seen.size() > 1) varying.push_back(path);
  for (size_t i = 0; i < jobs.size(); ++i)
    for (auto& path : varying) jobs[i].setting[path] = fields[i][path];
  return varying;
}

}  // namespace

std::optional<double> JobResult::final_loss() const {
  auto it = val_loss.find(config.train.steps);
  return it == val_loss.end() ? std::nullopt : std::optional<double>(it->second);
}

SweepResults load_sweep_results(const Store& store, const std::string& sweep) {
  SweepResults results{.name = sweep};
  results.jobs = read_jobs(store, sweep);
  if (results.jobs.empty()) {
    std::string known;
    for (auto& name : store.sweep_names()) known += (known.empty() ? "" : ", ") + name;
    throw std::runtime_error("no sweep named \"" + sweep + "\" in " + store.path() +
                             (known.empty() ? " (it has no sweeps)" : " (it has: " + known + ")"));
  }
  std::map<std::string, JobResult*> by_id;
  for (auto& job : results.jobs) by_id[job.id] = &job;
  read_measurements(store, sweep, by_id);
  results.setting_paths = assign_settings(results.jobs);
  std::stable_sort(results.jobs.begin(), results.jobs.end(), [&](const JobResult& a, const JobResult& b) {
    if (router_order(a.router) != router_order(b.router)) return router_order(a.router) < router_order(b.router);
    if (a.router != b.router) return a.router < b.router;
    for (auto& path : results.setting_paths)
      if (a.setting.at(path) != b.setting.at(path)) return setting_value_less(a.setting.at(path), b.setting.at(path));
    return a.config.seed < b.config.seed;
  });
  return results;
}

}  // namespace moelab
