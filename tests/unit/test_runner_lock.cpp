// One job, one trainer (run_dir_lock.hpp): a second `moelab train` on a run directory that another
// process holds exits at once and writes nothing; a runner killed with -9 is followed by the next
// `sweep run`, which adopts the trainers still alive (never starting a second one on a run directory)
// and resumes the one that died, with the losses of an undisturbed run; `sweep run --detach`,
// `sweep status` and `sweep cancel` with a runner alive and with a runner dead. All with the real
// `moelab` binary, real processes and signals.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <regex>
#include <thread>

#include "db/store.hpp"
#include "engine/train/run_dir_lock.hpp"
#include "run_moelab.hpp"
#include "tiny_job.hpp"

namespace fs = std::filesystem;
using namespace moelab;
using moelab::testing::run_moelab;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// `moelab train` processes by their --run-dir, for run directories under `root`, from /proc (zombies
// have no command line).
std::map<std::string, int> trainers_by_run_dir(const fs::path& root) {
  std::map<std::string, int> count;
  for (auto& entry : fs::directory_iterator("/proc")) {
    std::ifstream in(entry.path() / "cmdline");
    std::vector<std::string> argv;
    for (std::string arg; std::getline(in, arg, '\0');) argv.push_back(arg);
    if (argv.size() < 2 || !argv[0].ends_with("moelab") || argv[1] != "train") continue;
    for (size_t i = 2; i + 1 < argv.size(); ++i)
      if (argv[i] == "--run-dir" && argv[i + 1].starts_with(root.string())) ++count[argv[i + 1]];
  }
  return count;
}

// Samples the trainers under `root` every 50 ms on its own thread and keeps the most any run
// directory had at once.
class TrainerSampler {
 public:
  explicit TrainerSampler(const fs::path& root) : thread_([this, root] {
      while (!stop_) {
        for (auto& [dir, n] : trainers_by_run_dir(root)) {
          std::lock_guard guard(mutex_);
          most_[dir] = std::max(most_[dir], n);
        }
        ++samples_;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    }) {}
  ~TrainerSampler() { stop(); }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  std::map<std::string, int> most() {
    std::lock_guard guard(mutex_);
    return most_;
  }
  int samples() const { return samples_; }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<int> samples_{0};
  std::mutex mutex_;
  std::map<std::string, int> most_;
  std::thread thread_;
};

// Starts `moelab args...` as a child, its output to `log`.
pid_t start_moelab(const std::vector<std::string>& args, const fs::path& log) {
  pid_t pid = fork();
  if (pid == 0) {
    freopen(log.c_str(), "w", stdout);
    dup2(STDOUT_FILENO, STDERR_FILENO);
    std::vector<char*> argv = {const_cast<char*>(MOELAB_BIN)};
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(MOELAB_BIN, argv.data());
    _exit(127);
  }
  return pid;
}

std::string shell_words(const std::vector<std::string>& args) {
  std::string out;
  for (auto& a : args) out += (out.empty() ? "" : " ") + a;
  return out;
}

// `moelab args...` to its end, or killed after `seconds`: exit code (128 + signal when killed) and output.
moelab::testing::CliResult run_with_deadline(const std::vector<std::string>& args, const fs::path& log, double seconds) {
  const pid_t pid = start_moelab(args, log);
  const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (Clock::now() > deadline) kill(pid, SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::ifstream in(log);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), std::string(std::istreambuf_iterator<char>(in), {})};
}

bool wait_for(const std::function<bool()>& condition, double seconds) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
  while (Clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return condition();
}

// A process that has exited, whether or not its parent has reaped it yet.
bool gone(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;
  return line.substr(line.rfind(')') + 2, 1) == "Z";
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Every file under `dir` with its size and a hash of its bytes.
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (auto& entry : fs::recursive_directory_iterator(dir)) {
    if (!entry.is_regular_file()) continue;
    const std::string bytes = read_file(entry.path());
    files[fs::relative(entry.path(), dir).string()] =
        std::to_string(bytes.size()) + " bytes, hash " + std::to_string(std::hash<std::string>{}(bytes));
  }
  return files;
}

class RunnerLock : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("moelab_lock_" + std::to_string(getpid()));
    auto r = moelab::testing::prepare_corpus_slice(root_, 200000);
    ASSERT_EQ(r.code, 0) << r.output;
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  static json train_section(int steps) {
    return {{"steps", steps}, {"batch_size", 8},  {"micro_batch", 4},       {"lr", 3e-3},         {"warmup", 2},
            {"min_lr", 3e-4}, {"log_every", 1},   {"eval_every", 40},       {"eval_batches", 2},  {"checkpoint_every", 10},
            {"device", "cpu"}};
  }

  static json sweep(const std::string& name, int steps, int seeds) {
    auto base = moelab::testing::tiny_kern_job(root_ / "data", name, 0, train_section(steps));
    base.erase("name");
    json seed_list = json::array();
    for (int s = 0; s < seeds; ++s) seed_list.push_back(s);
    return {{"name", name}, {"max_attempts", 3}, {"base", base}, {"axes", {{"seed", seed_list}}}};
  }

  static std::string write(const json& j, const std::string& name) {
    auto path = root_ / name;
    std::ofstream(path) << j.dump(2);
    return path.string();
  }

  static inline fs::path root_;
};

// A second trainer on a run directory another process holds exits at once with exit code 73 and one
// line naming the run directory and the holder; it writes nothing. Held by a live trainer (stopped
// with SIGSTOP so that its own writes cannot hide the second one's), and by some other process (this
// test) on a run directory whose store does not exist yet.
TEST_F(RunnerLock, ASecondTrainerOnAHeldRunDirectoryExitsAtOnceAndWritesNothing) {
  const std::string config = write(moelab::testing::tiny_kern_job(root_ / "data", "held", 0, train_section(100000)), "held.json");
  const std::string db = (root_ / "held.db").string(), run_dir = (root_ / "held").string();
  const pid_t first = start_moelab({"train", "--config", config, "--db", db, "--run-dir", run_dir, "--quiet"}, root_ / "first.log");
  ASSERT_TRUE(wait_for([&] { return fs::exists(db) && Store(db).query("SELECT count(*) FROM checkpoints")[0][0] != "0"; }, 120))
      << read_file(root_ / "first.log");
  kill(first, SIGSTOP);
  const auto rows = [&] {
    return Store(db).query("SELECT (SELECT status || attempts || started_at || error FROM jobs), (SELECT count(*) FROM metrics), "
                           "(SELECT count(*) FROM events), (SELECT count(*) FROM checkpoints)");
  };
  const auto store_before = rows();
  const auto files_before = snapshot(run_dir);

  const auto started = Clock::now();
  auto second = run_with_deadline(
      {"train", "--config", config, "--db", db, "--run-dir", run_dir, "--resume", "--stop-after", "3", "--quiet"},
      root_ / "second.log", 60);
  const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
  EXPECT_EQ(second.code, 73) << second.output;
  EXPECT_EQ(second.output, "error: run directory " + run_dir + " is in use by another trainer (host " + this_host() +
                               ", pid " + std::to_string(first) + "); not training one job twice\n");
  EXPECT_LT(seconds, 20) << "the second trainer should exit at once";
  EXPECT_EQ(rows(), store_before);
  EXPECT_EQ(snapshot(run_dir), files_before);

  // The first goes on untouched: it checkpoints and stops on SIGTERM.
  kill(first, SIGCONT);
  kill(first, SIGTERM);
  int status = 0;
  waitpid(first, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 75) << read_file(root_ / "first.log");

  // Held by another process, before any store exists: no store file, nothing in the run directory.
  const std::string fresh_db = (root_ / "fresh.db").string(), fresh_dir = (root_ / "fresh").string();
  fs::create_directories(fresh_dir);
  {
    ProcessLock held(run_dir_lock_path(fresh_dir));
    auto refused = run_moelab("train --config " + config + " --db " + fresh_db + " --run-dir " + fresh_dir + " --quiet --stop-after 3");
    EXPECT_EQ(refused.code, 73) << refused.output;
    EXPECT_NE(refused.output.find("(host " + this_host() + ", pid " + std::to_string(getpid()) + ")"), std::string::npos)
        << refused.output;
    EXPECT_FALSE(fs::exists(fresh_db));
    EXPECT_EQ(snapshot(fresh_dir).size(), 1u) << "only the lock file";
  }
  // Once the holder is gone the same command trains.
  auto after = run_moelab("train --config " + config + " --db " + fresh_db + " --run-dir " + fresh_dir + " --quiet --stop-after 3");
  EXPECT_EQ(after.code, 75) << after.output;

  // Bad input leaves no run directory behind, though the lock was taken in it first.
  auto bad = run_moelab("train --config " + config + " --set data.val=" + (root_ / "missing.bin").string() + " --db " +
                        (root_ / "bad.db").string() + " --run-dir " + (root_ / "bad").string() + " --quiet");
  EXPECT_EQ(bad.code, 2) << bad.output;
  EXPECT_FALSE(fs::exists(root_ / "bad"));
}

// The runner is killed with -9 mid-sweep (an SSH session dropped), and one of its two trainers dies
// with it; a second `sweep run` follows the trainer still alive and resumes the dead one from its
// checkpoint. Sampled every 50 ms throughout, no run directory ever has two trainers, and every job
// ends with the losses of an undisturbed run of the same spec, at every step.
TEST_F(RunnerLock, AKilledRunnerIsFollowedAndEveryJobHasOneTrainer) {
  const int steps = 160;
  const std::string spec = write(sweep("adopt", steps, 2), "adopt.json");
  auto sweep_args = [&](const std::string& name) {
    return std::vector<std::string>{"sweep", "run", spec, "--jobs", "2", "--db", (root_ / (name + ".db")).string(),
                                    "--workdir", (root_ / name).string()};
  };
  const std::string db = (root_ / "adopt.db").string();
  TrainerSampler sampler(root_ / "adopt");
  const pid_t first = start_moelab(sweep_args("adopt"), root_ / "adopt_first.log");
  auto running = [&] {
    if (!fs::exists(db)) return std::vector<std::vector<std::string>>{};
    return Store(db).query(
        "SELECT j.id, j.executor_id FROM jobs j JOIN job_progress p ON p.job_id = j.id WHERE p.status = 'running' AND "
        "p.step >= 12 AND p.step < " + std::to_string(steps / 2) + " ORDER BY j.id");
  };
  ASSERT_TRUE(wait_for([&] { return running().size() == 2; }, 120)) << read_file(root_ / "adopt_first.log");
  kill(first, SIGKILL);
  waitpid(first, nullptr, 0);
  const auto jobs = running();
  ASSERT_EQ(jobs.size(), 2u) << "both jobs should still be mid-way";
  const std::string survivor = jobs[0][0], victim = jobs[1][0];
  const pid_t victim_trainer = std::stoi(jobs[1][1]);
  kill(victim_trainer, SIGKILL);
  ASSERT_TRUE(wait_for([&] { return gone(victim_trainer); }, 10));
  ASSERT_FALSE(gone(std::stoi(jobs[0][1]))) << "the other trainer survives its runner";

  const pid_t second = start_moelab(sweep_args("adopt"), root_ / "adopt_second.log");
  int status = 0;
  waitpid(second, &status, 0);
  sampler.stop();
  const std::string second_log = read_file(root_ / "adopt_second.log");
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << second_log;
  EXPECT_NE(second_log.find("follow " + survivor), std::string::npos) << second_log;
  EXPECT_GT(sampler.samples(), 20);
  EXPECT_EQ(sampler.most().size(), 2u) << "every job's trainer was seen";
  for (auto& [dir, most] : sampler.most()) EXPECT_EQ(most, 1) << dir << " had " << most << " trainers at once";

  Store store(db);
  EXPECT_EQ(store.query("SELECT count(*) FROM jobs WHERE status = 'done'")[0][0], "2");
  EXPECT_EQ(store.job_state(survivor)->attempts, 1);
  EXPECT_EQ(store.job_state(victim)->attempts, 2);
  EXPECT_EQ(store.query("SELECT count(*) FROM events WHERE job_id = '" + victim + "' AND message LIKE 'resumed from step %'")[0][0], "1");
  EXPECT_EQ(store.query("SELECT count(*) FROM metrics WHERE split = 'train'")[0][0], std::to_string(2 * steps));

  // The same spec undisturbed, in another store: the same loss at every step, train and val.
  auto reference = run_moelab(shell_words(sweep_args("undisturbed")));
  ASSERT_EQ(reference.code, 0) << reference.output;
  const std::string losses = "SELECT job_id, step, split, loss FROM metrics ORDER BY job_id, split, step";
  auto disturbed_rows = store.query(losses);
  auto reference_rows = Store((root_ / "undisturbed.db").string()).query(losses);
  ASSERT_EQ(disturbed_rows.size(), reference_rows.size());
  for (size_t i = 0; i < disturbed_rows.size(); ++i) {
    ASSERT_EQ(disturbed_rows[i][0], reference_rows[i][0]);
    ASSERT_EQ(disturbed_rows[i][1], reference_rows[i][1]);
    EXPECT_EQ(std::stod(disturbed_rows[i][3]), std::stod(reference_rows[i][3]))
        << disturbed_rows[i][0] << " " << disturbed_rows[i][2] << " loss at step " << disturbed_rows[i][1];
  }
}

// `sweep run --detach` returns at once and the runner goes on in the background; `sweep status`
// shows it alive, a second runner of the sweep is refused naming it, and `sweep cancel` stops the
// runner and its jobs. Then the same with the runner killed with -9 first: cancel still stops the
// trainers it left, by the pids their locks name.
TEST_F(RunnerLock, DetachedRunnerStatusAndCancel) {
  const std::string spec = write(sweep("detached", 100000, 2), "detached.json");
  const std::string db = (root_ / "detached.db").string(), workdir = (root_ / "detached").string();
  const std::string run = "sweep run " + spec + " --jobs 2 --db " + db + " --workdir " + workdir + " --detach";
  const std::string status = "sweep status detached --db " + db;
  auto trainers = [&] {
    int n = 0;
    for (auto& [dir, count] : trainers_by_run_dir(workdir)) n += count;
    return n;
  };
  auto running_jobs = [&] {
    return fs::exists(db) && Store(db).query("SELECT count(*) FROM job_progress WHERE status = 'running' AND step >= 2")[0][0] == "2";
  };
  auto start_detached = [&] {
    const auto started = Clock::now();
    auto r = run_moelab(run);
    EXPECT_LT(std::chrono::duration<double>(Clock::now() - started).count(), 20) << "--detach returns at once";
    EXPECT_EQ(r.code, 0) << r.output;
    std::smatch match;
    if (!std::regex_search(r.output, match, std::regex("pid (\\d+), log (\\S+)"))) return pid_t(-1);
    EXPECT_EQ(match[2], workdir + "/runner.log");
    return pid_t(std::stoi(match[1]));
  };

  const pid_t runner = start_detached();
  ASSERT_GT(runner, 0) << "no runner pid printed";
  ASSERT_TRUE(wait_for(running_jobs, 120)) << read_file(workdir + "/runner.log");
  auto alive = run_moelab(status);
  EXPECT_NE(alive.output.find("runner: alive (host " + this_host() + ", pid " + std::to_string(runner) + "), work directory " +
                              workdir + ", log " + workdir + "/runner.log"),
            std::string::npos)
      << alive.output;
  auto refused = run_moelab(run);
  EXPECT_EQ(refused.code, 2) << refused.output;
  EXPECT_NE(refused.output.find("another runner (host " + this_host() + ", pid " + std::to_string(runner) + ")"),
            std::string::npos) << refused.output;

  auto cancelled = run_moelab("sweep cancel detached --db " + db);
  EXPECT_EQ(cancelled.code, 0) << cancelled.output;
  EXPECT_TRUE(gone(runner)) << cancelled.output;
  EXPECT_EQ(trainers(), 0) << cancelled.output;
  auto after = run_moelab(status);
  EXPECT_NE(after.output.find("sweep detached: 2 cancelled\n"), std::string::npos) << after.output;
  EXPECT_NE(after.output.find("runner: none alive"), std::string::npos) << after.output;
  Store store(db);
  EXPECT_EQ(store.query("SELECT count(DISTINCT job_id) FROM checkpoints")[0][0], "2") << "the jobs checkpointed as they stopped";

  // The runner dies; its trainers go on, and cancel stops them.
  const pid_t second = start_detached();
  ASSERT_GT(second, 0) << "no runner pid printed";
  ASSERT_TRUE(wait_for([&] { return running_jobs() && trainers() == 2; }, 120)) << read_file(workdir + "/runner.log");
  kill(second, SIGKILL);
  ASSERT_TRUE(wait_for([&] { return gone(second); }, 10));
  EXPECT_NE(run_moelab(status).output.find("runner: none alive"), std::string::npos);
  EXPECT_EQ(trainers(), 2) << "the trainers outlive their runner";
  cancelled = run_moelab("sweep cancel detached --db " + db);
  EXPECT_EQ(cancelled.code, 0) << cancelled.output;
  EXPECT_EQ(trainers(), 0) << cancelled.output;
  EXPECT_NE(run_moelab(status).output.find("sweep detached: 2 cancelled\n"), std::string::npos);
}

}  // namespace
