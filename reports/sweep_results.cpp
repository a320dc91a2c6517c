#include "reports/sweep_results.hpp"

#include <algorithm>
#include <set>
#include <stdexcept>

#include "db/store.hpp"
#include "engine/config/router_registry.hpp"

namespace moelab {
namespace {

double number(const std::string& text) { return std::stod(text); }

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
  for (auto& row : store.query("SELECT id, name, status, error, eval_status, config_json FROM jobs WHERE " +
                               in_sweep(sweep) + " ORDER BY id")) {
    JobResult job{.id = row[0], .name = row[1], .status = row[2], .error = row[3], .eval_status = row[4]};
    try {
      job.config = parse_job_config(nlohmann::json::parse(row[5]));
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
  const std::string of_sweep = " WHERE " + in_sweep(sweep, "t.job_id");
  for (auto& row : store.query("SELECT t.job_id, t.step, t.loss FROM metrics t" + of_sweep + " AND t.split = 'val'"))
    by_id.at(row[0])->val_loss[std::stoll(row[1])] = number(row[2]);
  for (auto& row : store.query("SELECT t.job_id, t.step, t.task, t.metric, t.value, t.stderr, t.samples FROM evals t" +
                               of_sweep + " ORDER BY t.step")) {
    EvalScore score{.step = std::stoll(row[1]), .value = number(row[4]), .samples = std::stoll(row[6])};
    if (!row[5].empty()) score.stderr_value = number(row[5]);
    by_id.at(row[0])->evals[row[2] + "/" + row[3]] = score;  // ordered by step: the newest one stays
  }
  // The newest evaluation step of each job, averaged over its layers.
  for (auto& row : store.query(
           "SELECT t.job_id, t.step, avg(load_std), avg(load_max_over_mean), avg(dead_experts), avg(positive_gates), "
           "avg(fewer_than_k), avg(router_cosine) FROM routing_stats t" + of_sweep +
           " AND t.step = (SELECT max(step) FROM routing_stats WHERE job_id = t.job_id) GROUP BY t.job_id, t.step")) {
    by_id.at(row[0])->routing = RoutingSummary{std::stoll(row[1]), number(row[2]), number(row[3]), number(row[4]),
                                               number(row[5]), number(row[6]), number(row[7])};
  }
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
    for (auto& row : store.query("SELECT DISTINCT sweep FROM sweep_jobs ORDER BY sweep"))
      known += (known.empty() ? "" : ", ") + row[0];
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
