// Job ids outlive schema growth (README "Job identity"): every shipped spec plans the ids recorded in
// tests/fixtures/golden_job_ids.json (written by `moelab sweep plan --json` of the build before the
// field table, lead-18), a field added with its default moves none of them, and a store written by
// that build keeps its finished jobs finished under `sweep run`.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "engine/config/config_schema.hpp"
#include "run_moelab.hpp"
#include "runner/sweep_spec.hpp"

namespace fs = std::filesystem;
using namespace moelab;
using nlohmann::json;

namespace {

const fs::path kSource = MOELAB_SOURCE_DIR;

json golden_ids() {
  std::ifstream in(kSource / "tests/fixtures/golden_job_ids.json");
  return json::parse(in);
}

std::vector<PlannedJob> planned(const std::string& spec) { return expand(load_sweep_spec((kSource / spec).string())); }

// Storage of the fields a test adds: they have no member in JobConfig.
double test_option = 0.5;
int expert_parallel = 1;

// The job config's fields and two more, as a later version might add them: one in an existing
// object and one in a new object, each with a default that keeps today's behaviour.
std::vector<ConfigField> fields_with_two_more(Identity identity) {
  auto fields = job_config_schema().fields();
  fields.push_back(number_field("model.test_option", [](auto&) -> double& { return test_option; }, kNonNegative,
                                "a later option", identity));
  fields.push_back(integer_field("parallel.experts", [](auto&) -> int& { return expert_parallel; }, 1,
                                 "a later section", identity));
  return fields;
}

}  // namespace

// A spec edited on purpose plans other ids: update the file from `moelab sweep plan --json`.
TEST(JobIds, ShippedSpecsPlanTheirGoldenIds) {
  const json golden = golden_ids();
  std::set<std::string> specs;
  for (auto& entry : fs::directory_iterator(kSource / "sweeps"))
    if (entry.path().extension() == ".json") specs.insert("sweeps/" + entry.path().filename().string());
  std::set<std::string> recorded;
  for (auto& [spec, ids] : golden.items()) recorded.insert(spec);
  EXPECT_EQ(recorded, specs) << "every shipped spec has its ids in tests/fixtures/golden_job_ids.json";
  size_t jobs = 0;
  for (auto& [spec, ids] : golden.items()) {
    std::map<std::string, std::string> planned_ids;
    for (auto& job : planned(spec)) planned_ids[job.config.name] = job.id;
    EXPECT_EQ(json(planned_ids), ids) << spec;
    jobs += planned_ids.size();
  }
  EXPECT_EQ(jobs, 180u);
}

TEST(JobIds, AFieldAddedWithItsDefaultMovesNoId) {
  const ConfigSchema grown(fields_with_two_more(Identity::WhenSet), job_config_schema().identity_version());
  ASSERT_NE(grown.find("parallel.experts"), nullptr);
  const json golden = golden_ids();
  for (auto& [spec, ids] : golden.items())
    for (auto& job : planned(spec)) {
      ASSERT_TRUE(grown.to_json(job.config).at("model").contains("test_option"));
      EXPECT_EQ(grown.hash(job.config), ids.at(job.config.name).get<std::string>()) << spec << " " << job.config.name;
    }

  // The same job with the new options set is another job, and a config that sets them is read.
  auto job = planned("sweeps/routers-cpu.json").front();
  const std::string id = grown.hash(job.config);
  json config = grown.to_json(job.config);
  config["model"]["test_option"] = 0.25;
  grown.read(config, job.config);
  EXPECT_EQ(test_option, 0.25);
  EXPECT_NE(grown.hash(job.config), id);
  test_option = 0.5, expert_parallel = 2;
  EXPECT_NE(grown.hash(job.config), id);
  EXPECT_EQ(grown.identity(grown.to_json(job.config))["parallel"], json({{"experts", 2}}));
  expert_parallel = 1;
  EXPECT_EQ(grown.hash(job.config), id);
}

// What the rule guards against: hashing a new field at its default, or a new identity version,
// moves every id.
TEST(JobIds, HashingANewFieldAtItsDefaultOrANewIdentityVersionMovesIds) {
  const ConfigSchema always(fields_with_two_more(Identity::Always), job_config_schema().identity_version());
  ASSERT_EQ(job_config_schema().identity_version(), 1);
  const ConfigSchema version_2(job_config_schema().fields(), 2);
  const json ids = golden_ids().at("sweeps/demo.json");
  for (auto& job : planned("sweeps/demo.json")) {
    EXPECT_EQ(job_config_schema().hash(job.config), ids.at(job.config.name));
    EXPECT_NE(always.hash(job.config), ids.at(job.config.name));
    EXPECT_NE(version_2.hash(job.config), ids.at(job.config.name));
  }
}

namespace {

// tests/fixtures/store_lead18: a two-job sweep of two steps (spec.json) and the store that
// `moelab sweep run` of lead-18, the build before the field table, wrote for it (moelab.db). Its
// token files are not kept: a job this build would train again fails for want of them.
class StoreFromTheBuildBefore : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("moelab_job_ids_" + std::to_string(getpid()));
    fs::create_directories(root_);
    for (auto file : {"spec.json", "moelab.db"}) fs::copy_file(kSource / "tests/fixtures/store_lead18" / file, root_ / file);
  }
  void TearDown() override { fs::remove_all(root_); }

  // `moelab ARGS` on the copy of the store.
  moelab::testing::CliResult cli(const std::string& args) {
    return moelab::testing::run_moelab(args + " --db " + (root_ / "moelab.db").string());
  }
  std::string spec() const { return (root_ / "spec.json").string(); }

  fs::path root_;
};

}  // namespace

TEST_F(StoreFromTheBuildBefore, KeepsItsFinishedJobsFinishedUnderSweepRun) {
  auto jobs = expand(load_sweep_spec(spec()));
  ASSERT_EQ(jobs.size(), 2u);
  auto plan = cli("sweep plan " + spec());
  ASSERT_EQ(plan.code, 0) << plan.output;
  for (auto& job : jobs) EXPECT_NE(plan.output.find(job.id + "  done"), std::string::npos) << plan.output;
  auto before = cli("sweep status lead18");
  ASSERT_EQ(before.code, 0) << before.output;
  EXPECT_NE(before.output.find("sweep lead18: 2 done"), std::string::npos) << before.output;

  auto run = cli("sweep run " + spec() + " --workdir " + (root_ / "runs").string());
  EXPECT_EQ(run.code, 0) << run.output;
  auto after = cli("sweep status lead18");
  EXPECT_EQ(after.output, before.output) << "sweep run trained again:\n" << run.output;
  // The rows the old build wrote are the planned jobs' rows.
  auto rows = cli("db query \"SELECT job_id, count(*) FROM checkpoints GROUP BY job_id ORDER BY job_id\"");
  ASSERT_EQ(rows.code, 0) << rows.output;
  for (auto& job : jobs) EXPECT_NE(rows.output.find(job.id + "  1"), std::string::npos) << rows.output;
}
