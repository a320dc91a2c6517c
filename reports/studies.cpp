#include "reports/studies.hpp"

#include <algorithm>
#include <functional>
#include <set>
#include <stdexcept>

#include "engine/config/router_registry.hpp"
#include "eval/tasks.hpp"
#include "reports/statistics.hpp"

namespace moelab {
namespace {

// Jobs that share a router and a setting: one row of a table; its seeds are averaged.
struct Group {
  std::string router;
  std::vector<std::pair<std::string, std::string>> setting;  // (path, value) in setting_paths order
  std::vector<const JobResult*> jobs;
};

using JobFilter = std::function<bool(const JobResult&)>;

// Groups in the jobs' order (router, then setting); `ignored` paths are a table's own columns.
std::vector<Group> group_jobs(const SweepResults& r, const std::set<std::string>& ignored, const JobFilter& keep) {
  std::vector<Group> groups;
  for (auto& job : r.jobs) {
    if (!keep(job)) continue;
    Group key{.router = job.router};
    for (auto& path : r.setting_paths)
      if (!ignored.count(path)) key.setting.emplace_back(path, job.setting.at(path));
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const Group& g) { return g.router == key.router && g.setting == key.setting; });
    if (it == groups.end()) it = groups.insert(groups.end(), key);
    it->jobs.push_back(&job);
  }
  return groups;
}

bool any_job(const JobResult&) { return true; }
bool is_moe(const JobResult& job) { return job.config.model.is_moe(); }

std::string short_name(const std::string& path) { return path.substr(path.rfind('.') + 1); }

// Leading columns of every grouped table: router, the varying setting fields, and how many seeds.
std::vector<Column> key_columns(const SweepResults& r, const std::set<std::string>& ignored, bool with_source) {
  std::vector<Column> columns{{"router", -1}};
  for (auto& path : r.setting_paths)
    if (!ignored.count(path)) columns.push_back({short_name(path), -1});
  if (with_source) columns.push_back({"source", -1});
  columns.push_back({"seeds", 0});
  return columns;
}

std::vector<Cell> key_cells(const Group& g, const std::string& source, bool with_source, std::optional<double> seeds) {
  std::vector<Cell> cells{Cell::of(g.router + (source == "ours" ? "" : " (paper)"))};
  for (auto& [path, value] : g.setting) cells.push_back(Cell::of(value));
  if (with_source) cells.push_back(Cell::of(source));
  cells.push_back(Cell::of(seeds));
  return cells;
}

std::optional<double> mean_of(const std::vector<double>& values) {
  if (values.empty()) return std::nullopt;
  return summarize(values).mean;
}

// Mean over the group's jobs of whatever `value` finds (jobs without it are left out).
std::optional<double> group_mean(const Group& g, const std::function<std::optional<double>(const JobResult&)>& value) {
  std::vector<double> values;
  for (auto* job : g.jobs)
    if (auto v = value(*job)) values.push_back(*v);
  return mean_of(values);
}

std::optional<double> loss_at(const JobResult& job, int64_t step) {
  auto it = job.val_loss.find(step);
  return it == job.val_loss.end() ? std::nullopt : std::optional<double>(it->second);
}

std::vector<int64_t> eval_steps(const SweepResults& r) {
  std::set<int64_t> steps;
  for (auto& job : r.jobs)
    for (auto& [step, loss] : job.val_loss) steps.insert(step);
  return {steps.begin(), steps.end()};
}

// The paper's key for a group, when its model is one of the paper's and a paper is given.
std::optional<PaperKey> group_paper_key(const Group& g, const PaperReference* paper) {
  if (!paper) return std::nullopt;
  return paper_key(g.jobs.front()->config);
}

std::string paper_source(const PaperKey& key) { return "paper (" + key.describe() + ")"; }

void note_paper(Table& t, const PaperReference* paper, bool matched, const std::string& which) {
  if (!paper) return;
  t.notes.push_back(matched ? "Rows marked (paper) are the paper's figures (" + which + ") for the same configuration."
                            : "No configuration in this sweep matches one of the paper's (" + which +
                                  "): there is nothing to put beside it.");
}

std::string group_label(const Group& g) {
  std::string label = g.router;
  for (auto& [path, value] : g.setting) label += " " + short_name(path) + "=" + value;
  return label;
}

// A group's figure series from (x, y) points; low/high bands when given. It carries its router's
// colour from the registry, so that a router has one colour in every figure.
nlohmann::json series(const Group& g, const std::string& style, const std::vector<double>& x,
                      const std::vector<std::optional<double>>& y, const std::vector<std::optional<double>>& low = {},
                      const std::vector<std::optional<double>>& high = {}) {
  auto values = [](const std::vector<std::optional<double>>& v) {
    nlohmann::json out = nlohmann::json::array();
    for (auto& e : v) out.push_back(e ? nlohmann::json(*e) : nlohmann::json(nullptr));
    return out;
  };
  nlohmann::json s{{"label", group_label(g)}, {"style", style}, {"x", x}, {"y", values(y)}};
  if (auto colour = router_colour(g.router); !colour.empty()) s["colour"] = colour;
  if (!low.empty()) {
    s["low"] = values(low);
    s["high"] = values(high);
  }
  return s;
}

// ---- routers: validation loss per router at each evaluation step (Table 3) ----

StudyOutput routers_study(const SweepResults& r, const PaperReference* paper) {
  Table t{.name = "routers", .title = "Validation loss by step per router (paper Table 3)"};
  const auto steps = eval_steps(r);
  t.columns = key_columns(r, {}, paper != nullptr);
  for (auto step : steps) t.columns.push_back({std::to_string(step), 4});
  t.notes.push_back("Mean validation loss over a row's seeds at each evaluation step; - where no job has reached it.");
  nlohmann::json figure{{"name", "val_loss_curves"},
                        {"title", "Validation loss by step (" + r.name + "; band: +/- 1 std over seeds)"},
                        {"xlabel", "step"},
                        {"ylabel", "validation loss"},
                        {"xscale", "linear"},
                        {"series", nlohmann::json::array()}};
  bool matched = false;
  for (auto& g : group_jobs(r, {}, any_job)) {
    auto row = key_cells(g, "ours", paper != nullptr, double(g.jobs.size()));
    std::vector<double> x;
    std::vector<std::optional<double>> mean, low, high;
    for (auto step : steps) {
      std::vector<double> losses;
      for (auto* job : g.jobs)
        if (auto loss = loss_at(*job, step)) losses.push_back(*loss);
      row.push_back(Cell::of(mean_of(losses)));
      if (losses.empty()) continue;
      auto s = summarize(losses);
      x.push_back(double(step));
      mean.push_back(s.mean);
      low.push_back(s.stddev ? std::optional<double>(s.mean - *s.stddev) : s.mean);
      high.push_back(s.stddev ? std::optional<double>(s.mean + *s.stddev) : s.mean);
    }
    t.add_row(std::move(row));
    figure["series"].push_back(series(g, "ours", x, mean, low, high));
    auto key = group_paper_key(g, paper);
    if (!key) continue;
    auto published = paper->loss_by_step(*key);
    if (published.empty()) continue;
    matched = true;
    auto paper_row = key_cells(g, paper_source(*key), true, std::nullopt);
    for (auto step : steps) {
      auto it = published.find(step);
      paper_row.push_back(it == published.end() ? Cell::missing() : Cell::of(it->second));
    }
    t.add_row(std::move(paper_row));
    std::vector<double> px;
    std::vector<std::optional<double>> py;
    for (auto& [step, loss] : published) px.push_back(double(step)), py.push_back(loss);
    figure["series"].push_back(series(g, "paper", px, py));
  }
  note_paper(t, paper, matched, "Table 3, Table 4's means and the 5K/50K losses quoted in its text");
  return {{t}, {figure}};
}

// ---- seeds: mean, variance, CI and the paired difference against softmax (Table 4) ----

const Group* softmax_peer(const std::vector<Group>& groups, const Group& g) {
  for (auto& other : groups)
    if (other.router == "softmax" && other.setting == g.setting) return &other;
  return nullptr;
}

std::vector<SeedValue> seed_losses(const Group& g, int64_t step) {
  std::vector<SeedValue> values;
  for (auto* job : g.jobs)
    if (auto loss = loss_at(*job, step)) values.push_back({job->config.seed, *loss});
  return values;
}

StudyOutput seeds_study(const SweepResults& r, const PaperReference* paper) {
  Table t{.name = "seeds", .title = "Seed variation per router and step (paper Table 4)"};
  t.columns = key_columns(r, {}, false);
  t.columns.erase(t.columns.end() - 1);  // n is per step here
  for (auto& [name, decimals] : std::vector<std::pair<std::string, int>>{
           {"step", 0}, {"n", 0}, {"mean", 4}, {"variance", 6}, {"std", 4}, {"ci95_low", 4}, {"ci95_high", 4},
           {"diff_vs_softmax", 4}, {"diff_ci95_low", 4}, {"diff_ci95_high", 4}})
    t.columns.push_back({name, decimals});
  if (paper) t.columns.insert(t.columns.end(), {{"paper_mean", 4}, {"paper_variance", 4}});
  t.notes.push_back(
      "Validation loss over seeds: sample variance (n - 1), 95% confidence interval of the mean from Student's t; "
      "diff_vs_softmax pairs runs by seed (router minus softmax; negative is better) with its own 95% interval.");
  const auto groups = group_jobs(r, {}, any_job);
  bool matched = false;
  for (auto& g : groups) {
    const Group* softmax = softmax_peer(groups, g);
    auto key = group_paper_key(g, paper);
    auto published = key ? paper->seed_stats(*key) : std::map<int64_t, PaperSeedStat>{};
    matched = matched || !published.empty();
    for (auto step : eval_steps(r)) {
      auto values = seed_losses(g, step);
      if (values.empty()) continue;
      std::vector<double> losses;
      for (auto& v : values) losses.push_back(v.value);
      auto s = summarize(losses);
      std::optional<Summary> diff;
      if (softmax && softmax != &g) diff = paired_difference(values, seed_losses(*softmax, step));
      std::vector<Cell> row{Cell::of(g.router)};
      for (auto& [path, value] : g.setting) row.push_back(Cell::of(value));
      for (auto v : {std::optional<double>(double(step)), std::optional<double>(double(s.n)), std::optional<double>(s.mean),
                     s.variance, s.stddev, s.ci_low, s.ci_high})
        row.push_back(Cell::of(v));
      row.push_back(Cell::of(diff ? std::optional<double>(diff->mean) : std::nullopt));
      row.push_back(Cell::of(diff ? diff->ci_low : std::nullopt));
      row.push_back(Cell::of(diff ? diff->ci_high : std::nullopt));
      if (paper) {
        auto it = published.find(step);
        row.push_back(it == published.end() ? Cell::missing() : Cell::of(it->second.mean));
        row.push_back(it == published.end() ? Cell::missing() : Cell::of(it->second.variance));
      }
      t.add_row(std::move(row));
    }
  }
  note_paper(t, paper, matched, "Table 4: three seeds, 125M, Books3, length 512, 64-8-384");
  return {{t}, {}};
}

// ---- sparsity and granularity: final loss against an MoE shape (Figure 5, Figure 4) ----

// One column per distinct value of `column_of`, ordered by `order`; rows are router x other settings.
struct ShapeStudy {
  std::string name, title, note, xlabel, paper_which;
  std::set<std::string> shape_paths;                             // fields the columns replace
  std::function<std::string(const ModelConfig&)> column_of;      // column header
  std::function<double(const ModelConfig&)> order;               // column order and plot x
  bool log2_axis = false;
};

StudyOutput shape_study(const SweepResults& r, const PaperReference* paper, const ShapeStudy& s) {
  std::map<double, std::string> columns;  // order -> header
  for (auto& job : r.jobs)
    if (is_moe(job)) columns[s.order(job.config.model)] = s.column_of(job.config.model);
  Table t{.name = s.name, .title = s.title, .notes = {s.note}};
  t.columns = key_columns(r, s.shape_paths, paper != nullptr);
  for (auto& [order, header] : columns) t.columns.push_back({header, 4});
  nlohmann::json figure{{"name", s.name}, {"title", s.title}, {"xlabel", s.xlabel}, {"ylabel", "final validation loss"},
                        {"xscale", s.log2_axis ? "log2" : "linear"}, {"series", nlohmann::json::array()}};
  if (!s.log2_axis) {  // categorical axis: positions 0..n-1 labelled by the headers
    std::vector<double> ticks;
    std::vector<std::string> labels;
    for (auto& [order, header] : columns) ticks.push_back(double(ticks.size())), labels.push_back(header);
    figure["xticks"] = ticks;
    figure["xticklabels"] = labels;
  }
  auto x_of = [&](double order) {
    return s.log2_axis ? order : double(std::distance(columns.begin(), columns.find(order)));
  };
  bool matched = false;
  for (auto& g : group_jobs(r, s.shape_paths, is_moe)) {
    auto row = key_cells(g, "ours", paper != nullptr, std::nullopt);
    std::set<long long> seeds;
    std::vector<double> x;
    std::vector<std::optional<double>> y;
    std::vector<Cell> paper_cells;
    for (auto& [order, header] : columns) {
      Group cell_jobs{g.router, g.setting, {}};
      for (auto* job : g.jobs)
        if (s.order(job->config.model) == order) cell_jobs.jobs.push_back(job), seeds.insert(job->config.seed);
      auto loss = group_mean(cell_jobs, [](const JobResult& job) { return job.final_loss(); });
      row.push_back(Cell::of(loss));
      x.push_back(x_of(order));
      y.push_back(loss);
      std::optional<double> published;
      if (!cell_jobs.jobs.empty() && cell_jobs.jobs.front()->config.train.steps == 50000)
        if (auto key = group_paper_key(cell_jobs, paper)) {
          auto losses = paper->loss_by_step(*key);
          if (losses.count(50000)) published = losses.at(50000);
        }
      paper_cells.push_back(Cell::of(published));
    }
    row[key_columns(r, s.shape_paths, paper != nullptr).size() - 1] = Cell::of(double(seeds.size()));
    t.add_row(std::move(row));
    figure["series"].push_back(series(g, "ours", x, y));
    if (std::none_of(paper_cells.begin(), paper_cells.end(), [](const Cell& c) { return c.number.has_value(); })) continue;
    matched = true;
    auto paper_row = key_cells(g, "paper (50K steps)", true, std::nullopt);
    std::vector<std::optional<double>> py;
    for (auto& cell : paper_cells) paper_row.push_back(cell), py.push_back(cell.number);
    t.add_row(std::move(paper_row));
    figure["series"].push_back(series(g, "paper", x, py));
  }
  note_paper(t, paper, matched, s.paper_which);
  return {{t}, {figure}};
}

std::string shape_of(const ModelConfig& m) {
  return std::to_string(m.total_experts()) + "-" + std::to_string(m.active_experts()) + "-" +
         std::to_string(m.expert_hidden());
}

StudyOutput sparsity_study(const SweepResults& r, const PaperReference* paper) {
  return shape_study(r, paper,
                     {.name = "sparsity",
                      .title = "Final validation loss per router and total experts (paper Figure 5)",
                      .note = "Mean over seeds of the loss at the last training step; columns are the total number of "
                              "experts (top-k and expert size are the rows' own).",
                      .xlabel = "total experts",
                      .paper_which = "section 4.4 / Figure 5, 125M, length 512, top-8, expert size 384, 50K steps",
                      .shape_paths = {"model.experts"},
                      .column_of = [](const ModelConfig& m) { return std::to_string(m.total_experts()) + " experts"; },
                      .order = [](const ModelConfig& m) { return double(m.total_experts()); },
                      .log2_axis = true});
}

StudyOutput granularity_study(const SweepResults& r, const PaperReference* paper) {
  return shape_study(r, paper,
                     {.name = "granularity",
                      .title = "Final validation loss per router and expert granularity (paper Figure 4)",
                      .note = "Columns are experts-top_k-expert_size at the same active parameters; mean over seeds "
                              "of the loss at the last training step.",
                      .xlabel = "experts-top_k-expert_size",
                      .paper_which = "section 4.3 and appendix F, 125M, length 512, 50K steps",
                      .shape_paths = {"model.experts", "model.top_k", "model.expert_size", "model.granularity"},
                      .column_of = shape_of,
                      .order = [](const ModelConfig& m) { return double(m.total_experts()); }});
}

// ---- downstream: accuracy per task and the average (Table 1) ----

StudyOutput downstream_study(const SweepResults& r, const PaperReference* paper) {
  std::vector<std::string> tasks;
  for (auto& task : eval_tasks())
    for (auto& job : r.jobs)
      if (job.evals.count(task.name + "/" + task.metric)) {
        tasks.push_back(task.name);
        break;
      }
  Table t{.name = "downstream", .title = "Zero-shot accuracy (%) per task (paper Table 1)"};
  t.columns = key_columns(r, {}, paper != nullptr);
  for (auto& task : tasks) t.columns.push_back({task + " (" + eval_task(task).metric + ")", 2});
  t.columns.push_back({"avg", 2});
  t.notes.push_back("Accuracy in percent at each job's newest evaluated checkpoint, mean over seeds; each column "
                    "names its metric (acc_norm: normalised by length). avg is over the columns shown and needs all "
                    "of them. Our data are the tasks' validation splits; the paper's ARC and SciQ are test splits.");
  bool matched = false;
  for (auto& g : group_jobs(r, {}, any_job)) {
    auto row = key_cells(g, "ours", paper != nullptr, double(g.jobs.size()));
    std::vector<double> scores;
    for (auto& task : tasks) {
      auto score = group_mean(g, [&](const JobResult& job) -> std::optional<double> {
        auto it = job.evals.find(task + "/" + eval_task(task).metric);
        return it == job.evals.end() ? std::nullopt : std::optional<double>(100 * it->second.value);
      });
      row.push_back(Cell::of(score));
      if (score) scores.push_back(*score);
    }
    row.push_back(scores.size() == tasks.size() && !tasks.empty() ? Cell::of(mean_of(scores)) : Cell::missing());
    t.add_row(std::move(row));
    auto key = group_paper_key(g, paper);
    auto published = key ? paper->downstream(*key) : std::map<std::string, double>{};
    if (published.empty()) continue;
    matched = true;
    auto paper_row = key_cells(g, paper_source(*key), true, std::nullopt);
    for (auto& task : tasks) paper_row.push_back(published.count(task) ? Cell::of(published.at(task)) : Cell::missing());
    paper_row.push_back(Cell::of(published.at("avg")));  // the paper's average over all six tasks
    t.add_row(std::move(paper_row));
  }
  note_paper(t, paper, matched, "Table 1, FineWeb-Edu, length 1024, 50K steps; its avg is over all six tasks");
  return {{t}, {}};
}

// ---- routing: load balance and router health at the last evaluation ----

StudyOutput routing_study(const SweepResults& r, const PaperReference*) {
  Table t{.name = "routing", .title = "Routing health per router (at each job's last evaluation)"};
  t.columns = key_columns(r, {}, false);
  for (auto& [name, decimals] : std::vector<std::pair<std::string, int>>{{"load_max_over_mean", 3},
                                                                        {"load_std", 4},
                                                                        {"dead_experts", 2},
                                                                        {"positive_gates", 2},
                                                                        {"fewer_than_k", 3},
                                                                        {"router_cosine", 3}})
    t.columns.push_back({name, decimals});
  t.notes.push_back(
      "Means over MoE layers and seeds: load_max_over_mean and load_std of the share of token slots per expert "
      "(1 and 0 are perfectly balanced), dead_experts per layer got no token, positive_gates per token (KERN's "
      "ReLU can leave fewer than k), fewer_than_k the share of tokens with fewer than k positive gates, "
      "router_cosine the mean pairwise cosine similarity of the router's weight rows.");
  using Field = double RoutingMeans::*;
  for (auto& g : group_jobs(r, {}, is_moe)) {
    auto row = key_cells(g, "ours", false, double(g.jobs.size()));
    for (Field field : {&RoutingMeans::load_max_over_mean, &RoutingMeans::load_std, &RoutingMeans::dead_experts,
                        &RoutingMeans::positive_gates, &RoutingMeans::fewer_than_k, &RoutingMeans::router_cosine})
      row.push_back(Cell::of(group_mean(g, [&](const JobResult& job) {
        return job.routing ? std::optional<double>((*job.routing).*field) : std::nullopt;
      })));
    t.add_row(std::move(row));
  }
  return {{t}, {}};
}

std::set<std::string> distinct(const SweepResults& r, const std::function<std::string(const ModelConfig&)>& value) {
  std::set<std::string> values;
  for (auto& job : r.jobs)
    if (is_moe(job)) values.insert(value(job.config.model));
  return values;
}

}  // namespace

const std::vector<Study>& all_studies() {
  static const std::vector<Study> studies = {Study::Routers,    Study::Seeds,      Study::Sparsity,
                                             Study::Granularity, Study::Downstream, Study::Routing};
  return studies;
}

std::string study_name(Study study) {
  static const char* names[] = {"routers", "seeds", "sparsity", "granularity", "downstream", "routing"};
  return names[int(study)];
}

Study parse_study(const std::string& name) {
  for (auto study : all_studies())
    if (study_name(study) == name) return study;
  throw std::invalid_argument("--study: unknown study \"" + name +
                              "\" (expected routers, seeds, sparsity, granularity, downstream, routing or all)");
}

StudyOutput build_study(Study study, const SweepResults& results, const PaperReference* paper) {
  switch (study) {
    case Study::Routers: return routers_study(results, paper);
    case Study::Seeds: return seeds_study(results, paper);
    case Study::Sparsity: return sparsity_study(results, paper);
    case Study::Granularity: return granularity_study(results, paper);
    case Study::Downstream: return downstream_study(results, paper);
    case Study::Routing: return routing_study(results, paper);
  }
  throw std::logic_error("unknown study");
}

bool study_applies(Study study, const SweepResults& r, std::string& why) {
  auto has = [&](const std::function<bool(const JobResult&)>& test) { return std::any_of(r.jobs.begin(), r.jobs.end(), test); };
  switch (study) {
    case Study::Routers: return true;
    case Study::Seeds: {
      std::set<long long> seeds;
      for (auto& job : r.jobs) seeds.insert(job.config.seed);
      why = "the sweep has one seed";
      return seeds.size() > 1;
    }
    case Study::Sparsity:
      why = "the sweep has one total-expert count";
      return distinct(r, [](const ModelConfig& m) { return std::to_string(m.total_experts()); }).size() > 1;
    case Study::Granularity:
      why = "the sweep has one expert granularity";
      return distinct(r, [](const ModelConfig& m) { return std::to_string(m.granularity); }).size() > 1;
    case Study::Downstream:
      why = "no job has evaluation results";
      return has([](const JobResult& job) { return !job.evals.empty(); });
    case Study::Routing:
      why = "no job has routing statistics";
      return has([](const JobResult& job) { return job.routing.has_value(); });
  }
  return false;
}

Table missing_jobs_table(const SweepResults& r) {
  Table t{.name = "missing", .title = "Missing or failed jobs"};
  t.columns = {{"job", -1}, {"name", -1}, {"router", -1}, {"status", -1}, {"last_val_step", 0}, {"of_steps", 0}, {"why", -1}};
  t.notes.push_back("Jobs whose numbers are absent or partial in the tables above (their cells show -).");
  t.when_empty = "None: every job finished and has its final validation loss.";
  for (auto& job : r.jobs) {
    std::string why;
    if (job.status == JobStatus::failed) why = job.error.substr(0, job.error.find('\n'));
    else if (!job.final_loss()) why = job.status == JobStatus::done ? "done but no final validation loss recorded" : "not finished";
    if (job.eval_status.stage == EvalStatus::Stage::failed)
      why += (why.empty() ? "" : "; ") + std::string("evaluation ") + job.eval_status.text();
    if (why.empty()) continue;
    std::optional<double> last_step;
    if (!job.val_loss.empty()) last_step = double(job.val_loss.rbegin()->first);
    t.add_row({Cell::of(job.id), Cell::of(job.name), Cell::of(job.router), Cell::of(to_string(job.status)), Cell::of(last_step),
               Cell::of(double(job.config.train.steps)), Cell::of(why)});
  }
  return t;
}

}  // namespace moelab
