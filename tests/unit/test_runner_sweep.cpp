// Sweep specs: expansion counts, stable ids, duplicates, malformed specs (with the message and no
// store writes), and the local executor end to end with a failing job and a job killed halfway, and
// with data-parallel jobs of two processes.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "db/store.hpp"
#include "run_moelab.hpp"
#include "runner/slurm_executor.hpp"
#include "runner/sweep_spec.hpp"

namespace fs = std::filesystem;
using namespace moelab;
using nlohmann::json;

namespace {

json spec(json axes = json::object()) {
  return json{{"name", "s"}, {"base", {{"model", {{"experts", 8}, {"top_k", 2}, {"expert_size", 64}}}}}, {"axes", axes}};
}

size_t count(const json& j) { return expand(parse_sweep_spec(j)).size(); }

// A two-router spec changed by `edit`: the malformed specs below.
json with(const std::function<void(json&)>& edit) {
  json j = spec({{"model.router", {"softmax", "kern"}}});
  edit(j);
  return j;
}

std::string error_of(const json& j) {
  try {
    expand(parse_sweep_spec(j));
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(SweepExpansion, CountsForProductZipIncludeExclude) {
  EXPECT_EQ(count(spec()), 1u);
  EXPECT_EQ(count(spec({{"model.router", {"softmax", "kern", "tanh"}}, {"seed", {0, 1}}})), 6u);
  auto zipped = spec({{"seed", {0, 1, 2}}});
  zipped["zip"] = {{{"model.experts", {8, 16}}, {"model.top_k", {1, 2}}}};
  EXPECT_EQ(count(zipped), 6u);  // 3 seeds x 2 zipped pairs, not 3 x 2 x 2
  auto with_extra = spec({{"model.router", {"softmax", "kern"}}});
  with_extra["include"] = {{{"model.router", "dense"}}};
  with_extra["exclude"] = {{{"model.router", "kern"}}};
  auto jobs = expand(parse_sweep_spec(with_extra));
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_EQ(jobs[0].config.model.router, "softmax");
  EXPECT_EQ(jobs[1].config.model.router, "dense");
}

TEST(SweepExpansion, GranularityKeepsActiveParametersFixed) {
  auto jobs = expand(parse_sweep_spec(spec({{"model.granularity", {1, 2, 4}}})));
  ASSERT_EQ(jobs.size(), 3u);
  for (auto& job : jobs) {
    const auto& m = job.config.model;
    EXPECT_EQ(m.active_experts() * m.expert_hidden(), 2 * 64);
    EXPECT_EQ(m.total_experts(), 8 * m.granularity);
  }
}

TEST(SweepExpansion, IdsDependOnContentNotOnSpelling) {
  auto a = expand(parse_sweep_spec(json::parse(
      R"({"name": "s", "base": {"seed": 3, "model": {"experts": 8, "top_k": 2}}, "axes": {"model.router": ["kern"]}})")));
  auto b = expand(parse_sweep_spec(json::parse(
      R"({"axes": {"model.router": ["kern"]}, "base": {"model": {"top_k": 2, "experts": 8}, "seed": 3}, "name": "other"})")));
  EXPECT_EQ(a[0].id, b[0].id);
  // The alias and its spelled-out options are one job.
  auto dup = spec({{"model.router", {"kern_no_relu"}}});
  dup["include"] = {{{"model.router", "kern"}, {"model.kern.relu", false}}};
  EXPECT_EQ(count(dup), 1u);
}

struct Malformed {
  json spec;
  std::string message;
};

std::vector<Malformed> malformed_specs() {
  return {
      {json::array(), "(top level): expected an object, got array"},
      {with([](json& j) { j.erase("name"); }), "name: expected a non-empty string naming the sweep"},
      {with([](json& j) { j["name"] = "a b"; }), "name: \"a b\" may use only letters, digits"},
      {with([](json& j) { j["axis"] = j["axes"]; }), "axis: unknown key (did you mean \"axes\"?)"},
      {with([](json& j) { j["base"] = 3; }), "base: expected a job config object, got number"},
      {with([](json& j) { j["base"]["model"]["toplk"] = 1; }), "base.model.toplk: unknown key (did you mean \"top_k\"?)"},
      {with([](json& j) { j["axes"] = json::array(); }), "axes: expected an object of config paths to lists"},
      {with([](json& j) { j["axes"]["model.top_kk"] = {1}; }), "axes.model.top_kk: unknown config path (did you mean \"model.top_k\"?)"},
      {with([](json& j) { j["axes"]["seed"] = 1; }), "axes.seed: expected a list of values, got 1"},
      {with([](json& j) { j["axes"]["seed"] = json::array(); }), "axes.seed: empty list"},
      {with([](json& j) { j["axes"]["model.top_k"] = {1, "two"}; }), "axes.model.top_k[1]: expected an integer in [0, 2147483647], got \"two\""},
      {with([](json& j) { j["axes"]["model.router"] = {"softmax", "kernel"}; }), "axes.model.router[1]: unknown router \"kernel\""},
      {with([](json& j) { j["zip"] = {{{"model.experts", {8, 16}}, {"model.top_k", {1}}}}; }),
       "zip[0].model.top_k: has 1 values but model.experts has 2; zipped lists must be equally long"},
      {with([](json& j) { j["zip"] = {{{"model.router", {"tanh"}}}}; }), "zip[0].model.router: this path is already varied"},
      {with([](json& j) { j["include"] = {{{"model.expert", 3}}}; }), "include[0].model.expert: unknown config path"},
      {with([](json& j) { j["include"] = {json::object()}; }), "include[0]: expected a non-empty object"},
      {with([](json& j) { j["exclude"] = {{{"sed", 1}}}; }), "exclude[0].sed: unknown config path (did you mean \"seed\"?)"},
      {with([](json& j) { j["max_attempts"] = 0; }), "max_attempts: expected an integer in [1, 2147483647], got 0"},
      {with([](json& j) { j["local"] = {{"job", 2}}; }), "local.job: unknown key (did you mean \"jobs\"?)"},
      {with([](json& j) { j["local"] = {{"ranks", 0}}; }), "local.ranks: expected an integer in [1, 2147483647], got 0"},
      {with([](json& j) { j["slurm"] = {{"gpu", 1}}; }), "slurm.gpu: unknown key (did you mean \"gpus\"?)"},
      {with([](json& j) { j["eval"] = {{"tasks", {"piqa", "hellaswg"}}}; }),
       "eval.tasks[1]: unknown task \"hellaswg\" (did you mean \"hellaswag\"?)"},
      {with([](json& j) { j["eval"] = {{"checkpoints", 1000}}; }), "eval.checkpoints: expected \"final\" or {\"every\": N} with N > 0, got 1000"},
      {with([](json& j) { j["slurm"] = {{"cpus", "4"}}; }), "slurm.cpus: expected an integer in [0, 2147483647], got \"4\""},
      {with([](json& j) { j["axes"]["model.top_k"] = {9}, j["axes"]["model.granularity"] = {2}; }),
       "\"model.top_k\":9}: model.top_k: top_k 18 exceeds experts 16 (after granularity 2)"},
      {with([](json& j) { j["axes"]["model.granularity"] = {3}; }), "model.expert_size: expert_size 64 is not divisible by granularity 3"},
  };
}

// More than one GPU per job: one trainer per GPU through srun, told where rank 0 serves the
// rendezvous; one GPU: the trainer runs directly and needs no rendezvous.
TEST(SlurmScript, DataParallelJobsStartOneTrainerPerGpuThroughSrun) {
  auto sweep = parse_sweep_spec(spec());
  SlurmRun run{"runs/moelab.db", "/shared/runs/s", "/opt/moelab"};
  SlurmOptions options;
  options.gpus = 4;
  auto script = sbatch_script(options, sweep, "/shared/runs/s/jobs.txt", "/shared/logs", run, 2);
  EXPECT_NE(script.find("#SBATCH --ntasks=4\n#SBATCH --gpus-per-task=1\n"), std::string::npos) << script;
  const auto rendezvous = script.find("export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)");
  const auto port = script.find("export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))");
  const auto trainer = script.find("srun --kill-on-bad-exit=1 '/opt/moelab' train");
  ASSERT_NE(rendezvous, std::string::npos) << script;
  ASSERT_NE(port, std::string::npos) << script;
  ASSERT_NE(trainer, std::string::npos) << script;
  EXPECT_LT(port, trainer);

  options.gpus = 1;
  script = sbatch_script(options, sweep, "/shared/runs/s/jobs.txt", "/shared/logs", run, 2);
  EXPECT_EQ(script.find("srun"), std::string::npos) << script;
  EXPECT_EQ(script.find("MASTER_ADDR"), std::string::npos) << script;
  EXPECT_NE(script.find("'/opt/moelab' train"), std::string::npos) << script;
}

TEST(SweepValidation, MalformedSpecsNameTheJsonPath) {
  for (auto& bad : malformed_specs()) {
    auto message = error_of(bad.spec);
    EXPECT_NE(message.find(bad.message), std::string::npos) << "expected \"" << bad.message << "\", got \"" << message << "\"";
  }
}

// Every value is read in its domain, never wrapped (4294967297 is 2^32 + 1), and named where the spec
// gives it. (Checked here only: `sweep run` reads a spec through the same parser, and
// CliRefusal.BadSpecValuesAreRefusedNamingFileAndKeyAndWriteNothing runs a few through the binary.)
TEST(SweepValidation, ValuesOutsideTheirDomainNameTheJsonPath) {
  const std::vector<Malformed> cases = {
      {with([](json& j) { j["axes"]["train.steps"] = {10, 4294967297}; }),
       "axes.train.steps[1]: expected an integer in [1, 2147483647], got 4294967297"},
      {with([](json& j) { j["base"]["model"]["d_model"] = 4294967328; }),
       "base.model.d_model: expected an integer in [1, 2147483647], got 4294967328"},
      {with([](json& j) { j["include"] = {{{"train.betas", {1.5, 0.95}}}}; }), "include[0].train.betas[0]: expected a number in [0, 1), got 1.5"},
      {with([](json& j) { j["zip"] = {{{"train.weight_decay", {0.1, -0.1}}}}; }), "zip[0].train.weight_decay[1]: expected a number >= 0, got -0.1"},
      {with([](json& j) { j["exclude"] = {{{"model.bias_update_rate", -1}}}; }), "exclude[0].model.bias_update_rate: expected a number >= 0, got -1"},
      {with([](json& j) { j["axes"]["seed"] = {0, -1}; }), "axes.seed[1]: expected an integer in [0, 9223372036854775807], got -1"},
      {with([](json& j) { j["max_attempts"] = 4294967297; }), "max_attempts: expected an integer in [1, 2147483647], got 4294967297"},
      {with([](json& j) { j["local"] = {{"jobs", 4294967296}}; }), "local.jobs: expected an integer in [0, 2147483647], got 4294967296"},
      {with([](json& j) { j["eval"] = {{"limit", 4294967296}}; }), "eval.limit: expected an integer in [0, 2147483647], got 4294967296"},
      {with([](json& j) { j["eval"] = {{"checkpoints", {{"every", 4294967296}}}}; }),
       "eval.checkpoints.every: expected an integer in [1, 2147483647], got 4294967296"},
      {with([](json& j) { j["slurm"] = {{"signal_seconds", 4294967297}}; }),
       "slurm.signal_seconds: expected an integer in [0, 2147483647], got 4294967297"},
      {with([](json& j) { j["slurm"] = {{"max_parallel", -1}}; }), "slurm.max_parallel: expected an integer in [0, 2147483647], got -1"},
  };
  for (auto& bad : cases) EXPECT_EQ(error_of(bad.spec), bad.message);
}

namespace {

using moelab::testing::run_moelab;

class SweepCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("moelab_sweep_" + std::to_string(getpid()));
    auto r = moelab::testing::prepare_corpus_slice(root_, 200000);
    ASSERT_EQ(r.code, 0) << r.output;
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  // Four tiny jobs (2 routers x 2 seeds) and a fifth that diverges.
  static json tiny_sweep(int steps) {
    return json{
        {"name", "tiny"},
        {"max_attempts", 2},
        {"base",
         {{"model", {{"vocab_size", 256}, {"seq_len", 32}, {"layers", 2}, {"d_model", 32}, {"heads", 4}, {"experts", 4}, {"top_k", 2}, {"expert_size", 32}}},
          {"train", {{"steps", steps}, {"batch_size", 8}, {"micro_batch", 4}, {"lr", 3e-3}, {"warmup", 2}, {"min_lr", 3e-4},
                     {"log_every", 1}, {"eval_every", 20}, {"eval_batches", 2}, {"checkpoint_every", 10}, {"device", "cpu"}}},
          {"data", {{"train", (root_ / "data/train.bin").string()}, {"val", (root_ / "data/val.bin").string()}, {"tokenizer", "bytes"}}}}},
        {"axes", {{"model.router", {"kern", "softmax"}}, {"seed", {0, 1}}}},
        {"include", {{{"model.router", "sigmoid"}, {"train.lr", 1e30}, {"train.min_lr", 1e30}, {"train.grad_clip", 0.0}}}}};
  }

  static std::string write(const json& j, const std::string& name) {
    auto path = root_ / name;
    std::ofstream(path) << j.dump(2);
    return path.string();
  }

  static std::string db() { return (root_ / "sweep.db").string(); }
  static std::string one(const std::string& sql) { return Store(db()).query(sql).at(0).at(0); }

  static inline fs::path root_;
};

TEST_F(SweepCli, BadSpecsWriteNothingToTheStore) {
  for (auto& bad : malformed_specs()) {
    auto r = run_moelab("sweep run " + write(bad.spec, "bad.json") + " --db " + (root_ / "bad.db").string() + " --workdir " +
                    (root_ / "bad").string());
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find(bad.message), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(root_ / "bad.db")) << bad.message;
    EXPECT_FALSE(fs::exists(root_ / "bad")) << bad.message;
  }
}

TEST_F(SweepCli, PlanPrintsJobsAsJson) {
  auto r = run_moelab("sweep plan --json " + write(tiny_sweep(40), "plan.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  auto jobs = json::parse(r.output);
  ASSERT_EQ(jobs.size(), 5u);
  EXPECT_EQ(jobs[0]["axes"]["model.router"], "kern");
  EXPECT_EQ(jobs[0]["config"]["model"]["router"], "kern");
  EXPECT_EQ(jobs[0]["id"].get<std::string>().size(), 16u);
}

// One job is SIGKILLed halfway; the sweep goes on; a second run resumes it from its checkpoint and
// every step of every job is in the store exactly once.
TEST_F(SweepCli, LocalExecutorSurvivesAFailureAndAKillAndResumes) {
  const int steps = 60;
  const std::string spec = write(tiny_sweep(steps), "tiny.json");
  const std::string args = "sweep run " + spec + " --jobs 2 --db " + db() + " --workdir " + (root_ / "runs").string();
  pid_t runner = fork();
  if (runner == 0) {
    std::string command = std::string(MOELAB_BIN) + " " + args + " > " + (root_ / "first.log").string() + " 2>&1";
    execl("/bin/sh", "sh", "-c", command.c_str(), (char*)nullptr);
    _exit(127);
  }
  // Kill the first job that is past step 15 and not yet done.
  std::string victim, pid;
  for (int i = 0; i < 1200 && victim.empty(); ++i, usleep(50000)) {
    if (!fs::exists(db())) continue;
    auto rows = Store(db()).query(
        "SELECT j.id, j.executor_id FROM jobs j JOIN job_progress p ON p.job_id = j.id "
        "WHERE j.status = 'running' AND p.step BETWEEN 15 AND 40 AND j.name NOT LIKE '%sigmoid%' LIMIT 1");
    if (!rows.empty()) victim = rows[0][0], pid = rows[0][1];
  }
  ASSERT_FALSE(victim.empty()) << "no job was caught running";
  kill(std::stoi(pid), SIGKILL);
  int status = 0;
  waitpid(runner, &status, 0);
  EXPECT_EQ(WEXITSTATUS(status), 1) << "a sweep with failed jobs exits 1";
  EXPECT_EQ(one("SELECT status FROM jobs WHERE id = '" + victim + "'"), "failed");
  EXPECT_NE(one("SELECT error FROM jobs WHERE id = '" + victim + "'").find("killed by signal 9"), std::string::npos);
  EXPECT_EQ(one("SELECT count(*) FROM jobs WHERE status = 'done'"), "3");

  auto second = run_moelab(args);
  EXPECT_EQ(second.code, 1) << second.output;  // the diverging job fails again
  EXPECT_EQ(one("SELECT count(*) FROM jobs WHERE status = 'done'"), "4");
  EXPECT_EQ(one("SELECT count(*) FROM events WHERE job_id = '" + victim + "' AND message LIKE 'resumed from step %'"), "1");
  EXPECT_EQ(one("SELECT count(*) FROM jobs WHERE status = 'failed' AND error LIKE 'non-finite loss%' AND attempts = 2"), "1");
  // Every step of every finished job exactly once, resumed or not.
  EXPECT_EQ(one("SELECT count(*) FROM metrics m JOIN jobs j ON j.id = m.job_id WHERE j.status = 'done' AND split = 'train'"),
            std::to_string(4 * steps));
  EXPECT_EQ(one("SELECT count(*) FROM (SELECT DISTINCT job_id, step, split FROM metrics)"), one("SELECT count(*) FROM metrics"));
  EXPECT_EQ(one("SELECT count(DISTINCT sweep) FROM jobs"), "1");

  auto third = run_moelab(args);  // nothing left but the job out of attempts
  EXPECT_NE(third.output.find("0 of 5 jobs to run"), std::string::npos) << third.output;
  auto status_output = run_moelab("sweep status tiny --db " + db());
  EXPECT_NE(status_output.output.find("sweep tiny: 4 done, 1 failed"), std::string::npos) << status_output.output;
  auto query = run_moelab("db query \"SELECT count(*) AS n FROM jobs\" --db " + db());
  EXPECT_NE(query.output.find("n\n5"), std::string::npos) << query.output;
}


// A job of two Gloo processes (local.ranks) trains on the global batch one process would take:
// the same loss at every step. Ranks that a job's batch cannot split are refused before anything runs.
TEST_F(SweepCli, LocalJobOnTwoRanksMatchesOneProcess) {
  auto j = tiny_sweep(20);
  j["name"] = "ranks", j["axes"] = {{"seed", {0}}};
  j.erase("include");
  j["local"] = {{"ranks", 2}};
  const std::string spec = write(j, "ranks.json");
  auto sweep = [&](const std::string& name, const std::string& options) {
    return run_moelab("sweep run " + spec + options + " --db " + (root_ / (name + ".db")).string() + " --workdir " +
                      (root_ / name).string());
  };
  auto losses = [&](const std::string& name) {
    return Store((root_ / (name + ".db")).string()).query("SELECT step, loss FROM metrics WHERE split = 'train' ORDER BY step");
  };
  auto two = sweep("two_ranks", "");
  ASSERT_EQ(two.code, 0) << two.output;
  auto one = sweep("one_rank", " --ranks 1");
  ASSERT_EQ(one.code, 0) << one.output;
  auto a = losses("two_ranks"), b = losses("one_rank");
  ASSERT_EQ(a.size(), 20u);
  ASSERT_EQ(b.size(), 20u);
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_NEAR(std::stod(a[i][1]), std::stod(b[i][1]), 1e-4 * std::stod(b[i][1])) << "step " << a[i][0];
  Store two_store((root_ / "two_ranks.db").string());
  EXPECT_EQ(two_store.query("SELECT count(*) FROM events WHERE message LIKE '% on 2 data-parallel ranks%'")[0][0], "1");
  EXPECT_TRUE(fs::exists(root_ / "two_ranks" / two_store.query("SELECT id FROM jobs")[0][0] / "train.rank1.log"));

  auto three = sweep("three_ranks", " --ranks 3");
  EXPECT_EQ(three.code, 2) << three.output;
  EXPECT_NE(three.output.find("which do not split evenly over 3 ranks"), std::string::npos) << three.output;
  EXPECT_FALSE(fs::exists(root_ / "three_ranks.db"));
}

// Killing one process of a two-rank job fails the job with that process's cause, and the runner,
// which waits for every rank of a job, finishes. (A Gloo peer sees the closed connection and exits;
// one that would wait out its collective's timeout, as NCCL can, is killed by the runner.)
TEST_F(SweepCli, ARankKilledFailsItsJobAndTheRunnerFinishes) {
  auto j = tiny_sweep(100000);
  j["name"] = "rank_killed", j["axes"] = {{"seed", {0}}};
  j.erase("include");
  j["local"] = {{"ranks", 2}};
  const std::string store = (root_ / "rank_killed.db").string();
  const std::string spec = write(j, "rank_killed.json"), workdir = (root_ / "rank_killed").string();
  pid_t runner = fork();
  if (runner == 0) {
    freopen((root_ / "rank_killed.log").c_str(), "w", stdout);
    execl(MOELAB_BIN, MOELAB_BIN, "sweep", "run", spec.c_str(), "--db", store.c_str(), "--workdir", workdir.c_str(),
          (char*)nullptr);
    _exit(127);
  }
  std::string rank0;
  for (int i = 0; i < 1200 && rank0.empty(); ++i, usleep(50000)) {
    if (!fs::exists(store)) continue;
    auto rows = Store(store).query(
        "SELECT j.executor_id FROM jobs j JOIN job_progress p ON p.job_id = j.id WHERE p.status = 'running' AND p.step >= 3");
    if (!rows.empty()) rank0 = rows[0][0];
  }
  ASSERT_FALSE(rank0.empty()) << "the job did not start";
  kill(std::stoi(rank0), SIGKILL);
  int status = 0;
  for (int i = 0; i < 600 && waitpid(runner, &status, WNOHANG) == 0; ++i) usleep(100000);
  if (kill(runner, 0) == 0) kill(runner, SIGKILL), waitpid(runner, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << "the runner did not finish within 60 s of the kill";
  EXPECT_EQ(WEXITSTATUS(status), 1);
  Store s(store);
  EXPECT_EQ(s.query("SELECT status FROM jobs")[0][0], "failed");
  EXPECT_NE(s.query("SELECT error FROM jobs")[0][0].find("killed by signal 9"), std::string::npos);
}

// SIGTERM to the runner reaches its jobs: they checkpoint, are marked interrupted, and it exits 75.
TEST_F(SweepCli, SigtermToTheRunnerInterruptsItsJobs) {
  auto j = tiny_sweep(100000);
  j["name"] = "long", j["axes"] = {{"seed", {0, 1}}};
  j.erase("include");
  const std::string store = (root_ / "long.db").string();
  const std::string spec = write(j, "long.json"), workdir = (root_ / "long").string();
  pid_t runner = fork();
  if (runner == 0) {
    freopen((root_ / "long.log").c_str(), "w", stdout);
    execl(MOELAB_BIN, MOELAB_BIN, "sweep", "run", spec.c_str(), "--jobs", "2", "--db", store.c_str(), "--workdir",
          workdir.c_str(), (char*)nullptr);
    _exit(127);
  }
  auto running = [&] {
    if (!fs::exists(store)) return false;
    return Store(store).query("SELECT count(*) FROM job_progress WHERE status = 'running' AND step >= 3")[0][0] == "2";
  };
  for (int i = 0; i < 1200 && !running(); ++i) usleep(50000);
  ASSERT_TRUE(running()) << "the jobs did not start";
  kill(runner, SIGTERM);
  int status = 0;
  waitpid(runner, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 75);
  Store s(store);
  EXPECT_EQ(s.query("SELECT count(*) FROM jobs WHERE status = 'interrupted'")[0][0], "2");
  // Each job's newest checkpoint is at the last step it logged.
  EXPECT_EQ(s.query("SELECT count(*) FROM jobs j WHERE (SELECT max(step) FROM checkpoints WHERE job_id = j.id) = "
                    "(SELECT max(step) FROM metrics WHERE job_id = j.id AND split = 'train')")[0][0],
            "2");
}

}  // namespace
