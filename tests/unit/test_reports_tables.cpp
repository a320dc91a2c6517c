// Golden tables: a real store filled with known numbers by the project's own writers, and the
// report's tables checked against values computed by hand (means, sample variances, t intervals,
// paired differences, averages), the paper's figures where a configuration matches, dashes and the
// missing-jobs list for partial sweeps, and the files `moelab report` writes.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "db/store.hpp"
#include "engine/config/job_config.hpp"
#include "engine/config/router_registry.hpp"
#include "reports/report.hpp"
#include "reports/statistics.hpp"
#include "reports/sweep_results.hpp"
#include "run_moelab.hpp"

namespace fs = std::filesystem;
using namespace moelab;
using moelab::testing::run_moelab;

namespace {

struct Fixture {
  fs::path dir;
  Store store;
  explicit Fixture(const std::string& name)
      : dir(fs::temp_directory_path() / ("moelab-report-" + name + "-" + std::to_string(getpid()))),
        store((fs::remove_all(dir), fs::create_directories(dir), (dir / "moelab.db").string())) {}
  ~Fixture() { fs::remove_all(dir); }

  // A job of `sweep` whose config is the tiny base with `overrides` ("path=value"); returns its id.
  std::string add_job(const std::string& sweep, const std::vector<std::string>& overrides, const std::string& status) {
    nlohmann::json config = {{"model", {{"seq_len", 64}, {"layers", 2}, {"d_model", 64}, {"heads", 4}, {"experts", 4},
                                        {"top_k", 2}, {"expert_size", 128}}},
                             {"train", {{"steps", 200}, {"batch_size", 8}, {"micro_batch", 8}}}};
    for (auto& o : overrides) apply_override(config, o);
    auto job = parse_job_config(config);
    store.upsert_job({job.hash(), sweep + "-" + job.model.router_label(), sweep, job.to_json().dump(), "{}", job.train.steps});
    if (status != "queued") store.set_job_status(job.hash(), JobStatus::running);
    if (status != "running" && status != "queued")
      store.set_job_status(job.hash(), parse_job_status(status), status == "failed" ? "exit 3: loss became NaN\nmore" : "");
    return job.hash();
  }
  void val(const std::string& job, int64_t step, double loss) {
    store.put_metric({job, step, "val", loss, step * 512, 1e-3, 0, 0, 0});
  }
};

// A CSV as rows of column -> field.
std::vector<std::map<std::string, std::string>> read_csv(const std::string& text) {
  std::istringstream in(text);
  std::string line;
  std::getline(in, line);
  std::vector<std::string> header;
  std::stringstream hs(line);
  for (std::string f; std::getline(hs, f, ',');) header.push_back(f);
  std::vector<std::map<std::string, std::string>> rows;
  while (std::getline(in, line)) {
    std::vector<std::string> fields;
    std::stringstream ls(line);
    for (std::string f; std::getline(ls, f, ',');) fields.push_back(f);
    if (line.ends_with(",")) fields.push_back("");
    EXPECT_EQ(fields.size(), header.size()) << line;
    auto& row = rows.emplace_back();
    for (size_t i = 0; i < header.size() && i < fields.size(); ++i) row[header[i]] = fields[i];
  }
  return rows;
}

std::map<std::string, std::string> row_where(const std::vector<std::map<std::string, std::string>>& rows,
                                             const std::map<std::string, std::string>& match) {
  for (auto& row : rows) {
    bool all = true;
    for (auto& [k, v] : match) all = all && row.count(k) && row.at(k) == v;
    if (all) return row;
  }
  ADD_FAILURE() << "no row matches " << nlohmann::json(match).dump();
  return {};
}

double num(const std::map<std::string, std::string>& row, const std::string& column) {
  EXPECT_TRUE(row.count(column) && !row.at(column).empty()) << "no value in column " << column;
  return row.count(column) && !row.at(column).empty() ? std::stod(row.at(column)) : NAN;
}

Table study_table(const Store& store, const std::string& sweep, Study study, bool paper = false) {
  auto results = load_sweep_results(store, sweep);
  static const PaperReference reference;
  auto output = build_study(study, results, paper ? &reference : nullptr);
  return output.tables.at(0);
}

// softmax and kern over three seeds, evaluated at steps 100 and 200; dense failed after step 100.
void fill_router_sweep(Fixture& f) {
  const std::map<std::string, std::vector<std::pair<double, double>>> losses = {
      {"softmax", {{5.0, 4.0}, {5.2, 4.2}, {5.4, 4.5}}}, {"kern", {{4.9, 3.9}, {5.0, 4.0}, {5.4, 4.4}}}};
  for (auto& [router, per_seed] : losses)
    for (int seed = 0; seed < 3; ++seed) {
      auto id = f.add_job("golden", {"model.router=" + router, "seed=" + std::to_string(seed)}, "done");
      f.val(id, 100, per_seed[seed].first);
      f.val(id, 200, per_seed[seed].second);
    }
  f.val(f.add_job("golden", {"model.router=dense", "seed=0"}, "failed"), 100, 5.5);
}

}  // namespace

TEST(ReportStatistics, MeanVarianceAndStudentInterval) {
  auto s = summarize({4.0, 4.2, 4.5});
  EXPECT_NEAR(s.mean, 4.233333333, 1e-9);
  EXPECT_NEAR(*s.variance, 0.063333333, 1e-9);  // ((-.2333)^2 + (-.0333)^2 + .2667^2) / 2
  EXPECT_NEAR(*s.ci_low, 3.608172385, 1e-8);  // 4.2333 - t(0.975, 2) * sqrt(0.063333 / 3)
  EXPECT_FALSE(summarize({1.0}).variance.has_value());
  // The quantiles themselves (scipy.stats.t.ppf(0.975, df)), beyond the three decimals of printed tables.
  EXPECT_NEAR(t_critical_95(1), 12.706204736, 1e-6);
  EXPECT_NEAR(t_critical_95(2), 4.302652730, 1e-6);
  EXPECT_NEAR(t_critical_95(30), 2.042272456, 1e-6);
  EXPECT_NEAR(t_critical_95(31), 2.039513446, 1e-6);
  EXPECT_NEAR(t_critical_95(120), 1.979930405, 1e-6);
  EXPECT_THROW(t_critical_95(0), std::invalid_argument);
  auto d = paired_difference({{0, 3.9}, {1, 4.0}, {2, 4.4}, {7, 1.0}}, {{0, 4.0}, {1, 4.2}, {2, 4.5}});
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->n, 3);  // seed 7 has no partner
  EXPECT_NEAR(d->mean, -0.133333333, 1e-9);
}

TEST(ReportTables, RoutersTableAveragesSeedsAndDashesMissingSteps) {
  Fixture f("routers");
  fill_router_sweep(f);
  auto table = study_table(f.store, "golden", Study::Routers);
  auto rows = read_csv(to_csv(table));
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].at("router"), "dense");  // the paper's order
  EXPECT_EQ(rows[1].at("router"), "softmax");
  EXPECT_EQ(rows[2].at("router"), "kern");
  EXPECT_NEAR(num(rows[1], "200"), (4.0 + 4.2 + 4.5) / 3, 1e-12);
  EXPECT_NEAR(num(rows[2], "100"), (4.9 + 5.0 + 5.4) / 3, 1e-12);
  EXPECT_EQ(num(rows[2], "seeds"), 3);
  EXPECT_EQ(rows[0].at("200"), "");  // dense never got there: empty in CSV, a dash in markdown
  auto markdown = to_markdown(table);
  EXPECT_NE(markdown.find("| dense | 1 | 5.5000 | - |"), std::string::npos) << markdown;
  EXPECT_NE(markdown.find("| kern | 3 | 5.1000 | 4.1000 |"), std::string::npos) << markdown;
}

TEST(ReportTables, SeedTableHasVarianceIntervalAndPairedDifferenceAgainstSoftmax) {
  Fixture f("seeds");
  fill_router_sweep(f);
  auto rows = read_csv(to_csv(study_table(f.store, "golden", Study::Seeds)));
  auto softmax = row_where(rows, {{"router", "softmax"}, {"step", "200"}});
  EXPECT_EQ(num(softmax, "n"), 3);
  EXPECT_NEAR(num(softmax, "mean"), 4.233333333333, 1e-9);
  EXPECT_NEAR(num(softmax, "variance"), 0.063333333333, 1e-9);
  EXPECT_NEAR(num(softmax, "std"), 0.251661147842, 1e-9);
  EXPECT_NEAR(num(softmax, "ci95_low"), 3.608172385, 1e-8);  // 4.23333 - t(0.975, 2) * 0.251661 / sqrt(3)
  EXPECT_NEAR(num(softmax, "ci95_high"), 4.858494281, 1e-8);
  EXPECT_EQ(softmax.at("diff_vs_softmax"), "");
  auto kern = row_where(rows, {{"router", "kern"}, {"step", "200"}});
  EXPECT_NEAR(num(kern, "diff_vs_softmax"), -0.133333333, 1e-9);  // per seed: -0.1, -0.2, -0.1
  EXPECT_NEAR(num(kern, "diff_ci95_low"), -0.133333333 - 0.143421758, 1e-8);  // t(0.975, 2) * 0.057735 / sqrt(3)
  EXPECT_NEAR(num(kern, "diff_ci95_high"), -0.133333333 + 0.143421758, 1e-8);
  auto dense = row_where(rows, {{"router", "dense"}, {"step", "100"}});
  EXPECT_EQ(num(dense, "n"), 1);
  EXPECT_EQ(dense.at("variance"), "");  // one seed: no variance
}

TEST(ReportTables, SparsityAndGranularityUseTheResolvedShapeAndFinalLoss) {
  Fixture f("shape");
  for (auto router : {"softmax", "kern"})
    for (int experts : {4, 8}) {
      auto id = f.add_job("sparse", {std::string("model.router=") + router, "model.experts=" + std::to_string(experts)},
                          router == std::string("kern") && experts == 8 ? "running" : "done");
      f.val(id, 100, 9.0);  // not the final step: never a "final loss"
      if (!(router == std::string("kern") && experts == 8)) f.val(id, 200, experts == 4 ? 4.0 : 3.5);
    }
  auto rows = read_csv(to_csv(study_table(f.store, "sparse", Study::Sparsity)));
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(num(row_where(rows, {{"router", "softmax"}}), "8 experts"), 3.5);
  EXPECT_EQ(row_where(rows, {{"router", "kern"}}).at("8 experts"), "");  // still running
  for (int g : {1, 2}) f.val(f.add_job("grain", {"model.router=kern", "model.granularity=" + std::to_string(g)}, "done"), 200, 4.0 - g);
  rows = read_csv(to_csv(study_table(f.store, "grain", Study::Granularity)));
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(num(rows[0], "4-2-128"), 3.0);
  EXPECT_EQ(num(rows[0], "8-4-64"), 2.0);  // granularity 2: experts and top-k doubled, expert size halved
  // Their plots: final loss against total experts (a log2 axis) and against the shape (categories).
  for (auto [sweep, plot] : {std::pair{"sparse", "sparsity"}, std::pair{"grain", "granularity"}}) {
    auto r = run_moelab(std::string("report ") + sweep + " --format png --db " + (f.dir / "moelab.db").string() +
                        " --out " + (f.dir / sweep).string());
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_GT(fs::file_size(f.dir / sweep / "plots" / (std::string(plot) + ".png")), 10000u) << r.output;
    EXPECT_FALSE(fs::exists(f.dir / sweep / "report.md"));  // only the formats asked for
  }
}

TEST(ReportTables, DownstreamAveragesTasksWithTheirStatedMetric) {
  Fixture f("downstream");
  auto put = [&](const std::string& job, const std::string& task, const std::string& metric, double value) {
    f.store.put_eval({job, 200, task, metric, value, 0.01, 100, "test"});
  };
  for (int seed : {0, 1}) {
    auto kern = f.add_job("down", {"model.router=kern", "seed=" + std::to_string(seed)}, "done");
    put(kern, "arc_easy", "acc", seed ? 0.6 : 0.5);
    put(kern, "hellaswag", "acc_norm", seed ? 0.35 : 0.3);
    put(kern, "hellaswag", "acc", 0.99);  // not the column's metric
  }
  put(f.add_job("down", {"model.router=softmax"}, "done"), "arc_easy", "acc", 0.4);
  auto table = study_table(f.store, "down", Study::Downstream);
  auto rows = read_csv(to_csv(table));
  auto kern = row_where(rows, {{"router", "kern"}});
  EXPECT_NEAR(num(kern, "arc_easy (acc)"), 55.0, 1e-9);
  EXPECT_NEAR(num(kern, "hellaswag (acc_norm)"), 32.5, 1e-9);
  EXPECT_NEAR(num(kern, "avg"), 43.75, 1e-9);
  EXPECT_EQ(row_where(rows, {{"router", "softmax"}}).at("avg"), "");  // hellaswag missing: no average
}

TEST(ReportTables, RoutingTableAveragesLayersAtTheLastEvaluation) {
  Fixture f("routing");
  auto id = f.add_job("route", {"model.router=kern"}, "done");
  for (int layer : {0, 1}) {
    f.store.put_routing({id, 100, layer, {0.25, 0.25, 0.25, 0.25}, 9, 9, 9, 9, 9, 9});  // older: ignored
    f.store.put_routing({id, 200, layer, {0.5, 0.5, 0, 0}, 0.1 * (layer + 1), 1.5 + layer, layer, 1.5, 0.25, 0.2});
  }
  auto rows = read_csv(to_csv(study_table(f.store, "route", Study::Routing)));
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_NEAR(num(rows[0], "load_max_over_mean"), 2.0, 1e-12);
  EXPECT_NEAR(num(rows[0], "load_std"), 0.15, 1e-12);
  EXPECT_NEAR(num(rows[0], "dead_experts"), 0.5, 1e-12);
  EXPECT_NEAR(num(rows[0], "router_cosine"), 0.2, 1e-12);
}

TEST(ReportTables, PaperFiguresAppearBesideAMatchingConfiguration) {
  Fixture f("paper");
  const std::vector<std::string> paper_125m = {"model.seq_len=512", "model.layers=12", "model.d_model=768", "model.heads=12",
                                               "model.experts=64", "model.top_k=8", "model.expert_size=384",
                                               "train.steps=50000", "train.batch_size=256", "train.micro_batch=32"};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.begin(), paper_125m.begin(), paper_125m.end());
    return extra;
  };
  for (int seed : {0, 1}) {
    auto id = f.add_job("paper", with({"model.router=kern", "seed=" + std::to_string(seed)}), "done");
    f.val(id, 5000, 4.3 + seed * 0.1);
    f.val(id, 10000, 3.9);
  }
  auto rows = read_csv(to_csv(study_table(f.store, "paper", Study::Routers, true)));
  ASSERT_EQ(rows.size(), 2u);
  auto paper = row_where(rows, {{"router", "kern (paper)"}});
  EXPECT_EQ(num(paper, "5000"), 4.2165);   // quoted in section 4.1 (a single run)
  EXPECT_EQ(num(paper, "10000"), 3.8825);  // Table 4's mean over three seeds
  EXPECT_EQ(paper.at("source"), "paper (125M books3 seq 512 64-8-384)");
  rows = read_csv(to_csv(study_table(f.store, "paper", Study::Seeds, true)));
  auto at_5k = row_where(rows, {{"router", "kern"}, {"step", "5000"}});
  EXPECT_EQ(num(at_5k, "paper_mean"), 4.2281);
  EXPECT_EQ(num(at_5k, "paper_variance"), 0.0082);
  // A configuration the paper does not have gets no paper row, and the table says so.
  Fixture tiny("paper-tiny");
  tiny.val(tiny.add_job("tiny", {"model.router=kern"}, "done"), 200, 4.0);
  auto table = study_table(tiny.store, "tiny", Study::Routers, true);
  EXPECT_EQ(table.rows.size(), 1u);
  EXPECT_NE(to_markdown(table).find("No configuration in this sweep matches"), std::string::npos);
}

TEST(ReportTables, AJobSharedByTwoStudiesIsInBothReports) {
  Fixture f("shared");
  fill_router_sweep(f);  // sweep "golden"
  // The seeds study plans softmax seed 0 again: the same config, so the same job, run once.
  const auto shared = f.add_job("seeds-study", {"model.router=softmax", "seed=0"}, "done");
  f.val(f.add_job("seeds-study", {"model.router=softmax", "seed=5"}, "done"), 200, 4.6);
  auto golden = read_csv(to_csv(study_table(f.store, "golden", Study::Routers)));
  EXPECT_NEAR(num(row_where(golden, {{"router", "softmax"}}), "200"), (4.0 + 4.2 + 4.5) / 3, 1e-12);
  auto seeds = read_csv(to_csv(study_table(f.store, "seeds-study", Study::Routers)));
  ASSERT_EQ(seeds.size(), 1u);
  EXPECT_EQ(num(seeds[0], "seeds"), 2);
  EXPECT_NEAR(num(seeds[0], "200"), (4.0 + 4.6) / 2, 1e-12) << shared;
}

TEST(ReportCommand, WritesEveryFormatAndListsMissingJobs) {
  Fixture f("cli");
  fill_router_sweep(f);
  f.add_job("golden", {"model.router=sigmoid"}, "queued");
  const auto out = f.dir / "report";
  auto result = run_moelab("report golden --db " + (f.dir / "moelab.db").string() + " --out " + out.string());
  ASSERT_EQ(result.code, 0) << result.output;
  for (auto file : {"report.md", "routers.csv", "seeds.csv", "missing.csv", "plots/val_loss_curves.png",
                    "plots/val_loss_curves.svg"})
    EXPECT_TRUE(fs::exists(out / file)) << file << "\n" << result.output;
  EXPECT_FALSE(fs::exists(out / "sparsity.csv"));  // one expert count: the study does not apply
  std::ifstream in(out / "report.md");
  std::string markdown((std::istreambuf_iterator<char>(in)), {});
  EXPECT_NE(markdown.find("sparsity skipped: the sweep has one total-expert count"), std::string::npos) << markdown;
  auto missing = read_csv(std::string((std::istreambuf_iterator<char>(std::ifstream(out / "missing.csv").rdbuf())), {}));
  ASSERT_EQ(missing.size(), 2u);
  EXPECT_EQ(row_where(missing, {{"router", "dense"}}).at("why"), "exit 3: loss became NaN");
  EXPECT_EQ(row_where(missing, {{"router", "sigmoid"}}).at("status"), "queued");
}

// A sweep with every router the registry names (the store reads jobs in id order): the report's rows
// follow the registry's order, and
// each plotted series carries its router's registry colour, which plot.py draws with.
TEST(ReportCommand, RoutersFollowTheRegistrysOrderAndColours) {
  Fixture f("registry");
  std::vector<std::string> expected;
  for (auto& row : router_rows()) {
    std::vector<std::string> names = {row.name};
    for (auto& v : row.variants)
      if (v.alias) names.push_back(row.name + v.suffix);
    for (auto& name : names) {
      f.val(f.add_job("every", {"model.router=" + name}, "done"), 200, 4.0);
      expected.push_back(name);
    }
  }
  const auto out = f.dir / "report";
  auto result = run_moelab("report every --study routers --db " + (f.dir / "moelab.db").string() + " --out " + out.string());
  ASSERT_EQ(result.code, 0) << result.output;
  std::vector<std::string> rows;
  for (auto& row : read_csv(std::string((std::istreambuf_iterator<char>(std::ifstream(out / "routers.csv").rdbuf())), {})))
    rows.push_back(row.at("router"));
  EXPECT_EQ(rows, expected);
  auto plots = nlohmann::json::parse(std::ifstream(out / "plots" / "plots.json"));
  auto& series = plots.at("figures").at(0).at("series");
  ASSERT_EQ(series.size(), expected.size());
  std::ifstream svg_file(out / "plots" / "val_loss_curves.svg");
  const std::string svg((std::istreambuf_iterator<char>(svg_file)), {});
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(series[i].at("label"), expected[i]);
    EXPECT_EQ(series[i].at("colour"), router_colour(expected[i])) << expected[i];
    EXPECT_NE(svg.find(router_colour(expected[i])), std::string::npos) << expected[i] << " is not drawn in its colour";
  }
}

TEST(ReportCommand, BadInputsNameTheProblem) {
  Fixture f("bad");
  fill_router_sweep(f);
  const std::string db = " --db " + (f.dir / "moelab.db").string();
  auto r = run_moelab("report nosuch" + db);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("no sweep named \"nosuch\""), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("(it has: golden)"), std::string::npos) << r.output;
  r = run_moelab("report golden --study sparsty" + db);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("unknown study \"sparsty\""), std::string::npos) << r.output;
  r = run_moelab("report golden --format md,pdf" + db);
  EXPECT_NE(r.output.find("unknown format \"pdf\""), std::string::npos) << r.output;
  r = run_moelab("report golden --db " + (f.dir / "absent.db").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("no such store"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(f.dir / "absent.db"));  // not created by asking
}
