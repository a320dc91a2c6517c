// Runner and store benchmarks (Google Benchmark): expanding a 100,000-job spec, writing metric rows,
// and `sweep status` over 10,000 jobs. Goals (issue 3): < 1 s, > 500k rows/s, < 1 s.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "db/store.hpp"
#include "runner/sweep_commands.hpp"
#include "runner/sweep_spec.hpp"

using namespace moelab;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::string temp_store(const std::string& name) {
  auto path = fs::temp_directory_path() / ("moelab_bench_" + std::to_string(getpid()) + "_" + name + ".db");
  fs::remove(path);
  return path.string();
}

// 5000 seeds x 4 routers x 5 expert counts = 100,000 jobs.
void PlanLargeSweep(benchmark::State& state) {
  json seeds = json::array();
  for (int s = 0; s < 5000; ++s) seeds.push_back(s);
  auto spec = parse_sweep_spec(json{{"name", "big"},
                                    {"axes",
                                     {{"seed", seeds},
                                      {"model.router", {"softmax", "kern", "sigmoid", "tanh"}},
                                      {"model.experts", {16, 32, 64, 128, 256}}}}});
  for (auto _ : state) benchmark::DoNotOptimize(expand(spec).size());
  state.SetItemsProcessed(state.iterations() * 100000);
}

// Metric upserts in transactions of 10,000 rows, as many jobs' loggers would write them.
void InsertMetricRows(benchmark::State& state) {
  const std::string path = temp_store("metrics");
  Store store(path);
  store.upsert_job(JobRow{"job", "job", "", "{}", "{}", 0});
  int64_t step = 0;
  for (auto _ : state) {
    store.transaction([&] {
      for (int i = 0; i < 10000; ++i, ++step)
        store.put_metric(MetricRow{"job", step, "train", 3.0, step * 1000, 1e-3, 0.5, 1e5, 1.0});
    });
  }
  state.SetItemsProcessed(state.iterations() * 10000);
  fs::remove(path);
}

// `sweep status` over 10,000 jobs with 10 metric rows each, output discarded.
void StatusOfLargeSweep(benchmark::State& state) {
  const std::string path = temp_store("status");
  Store store(path);
  store.transaction([&] {
    for (int j = 0; j < 10000; ++j) {
      std::string id = "job" + std::to_string(j);
      store.upsert_job(JobRow{id, id, "big", R"({"train": {"batch_size": 8}, "model": {"seq_len": 32}})",
                              R"({"seed": )" + std::to_string(j) + "}", 100});
      for (int step = 1; step <= 10; ++step) store.put_metric(MetricRow{id, step, "train", 3.0, step, 1e-3, 0.5, 1e5, 1.0});
      store.put_metric(MetricRow{id, 10, "val", 3.1, 10, 1e-3, 0, 0, 1.0});
    }
  });
  FILE* saved = stdout;
  stdout = std::fopen("/dev/null", "w");
  for (auto _ : state) print_status(store, "big");
  std::fclose(stdout);
  stdout = saved;
  state.SetItemsProcessed(state.iterations() * 10000);
  fs::remove(path);
}

}  // namespace

BENCHMARK(PlanLargeSweep)->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(InsertMetricRows)->Unit(benchmark::kMillisecond)->Iterations(100);
BENCHMARK(StatusOfLargeSweep)->Unit(benchmark::kMillisecond)->Iterations(3);

BENCHMARK_MAIN();
