#include "runner/local_executor.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "db/store.hpp"
#include "engine/train/run_dir_lock.hpp"
#include "engine/train/trainer.hpp"
#include "runner/job_queue.hpp"

namespace moelab {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

std::atomic<int> stop_signal{0};

void install_runner_handlers() {
  struct sigaction action {};
  action.sa_handler = [](int signal) { stop_signal = signal; };
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

std::string log_tail(const std::string& path, size_t lines) {
  std::ifstream in(path);
  std::deque<std::string> last;
  for (std::string line; std::getline(in, line);) {
    last.push_back(line);
    if (last.size() > lines) last.pop_front();
  }
  std::string out;
  for (auto& line : last) out += line + "\n";
  return out;
}

// A job's processes: one per rank, rank 0 first. The job ends when all have exited.
struct RunningJob {
  const PlannedJob* job;
  int attempts_at_launch;
  std::vector<int> gpus;  // empty on the CPU
  Clock::time_point started;
  bool evaluating = false;  // the evaluation stage after training, in the same slot
  std::vector<pid_t> pids;
  size_t exited = 0;
  int status = 0;             // wait status of rank 0, or of the first rank that failed
  std::string log;            // the log of that process
  bool rank_failed = false;
};

// A job whose trainer this runner did not start (a runner that died left it, or someone ran it by
// hand): it holds the job's run directory, and the runner waits for it to let go, then takes its
// outcome from the store, as if it had launched it.
struct FollowedJob {
  const PlannedJob* job;
  std::string run_dir;
  LockHolder trainer;
  bool trainer_counted;  // the job was already "running", its attempt counted, when following began
  int attempts_at_follow;
  std::vector<int> gpus;  // the slot it occupies here
};

// A TCP port nothing listens on now, for a data-parallel job's rendezvous.
int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  const bool bound = fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0 &&
                     getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  const int error = errno;
  if (fd >= 0) close(fd);
  if (!bound) throw std::runtime_error(std::string("cannot find a free TCP port: ") + std::strerror(error));
  return ntohs(address.sin_port);
}

std::string join(const std::vector<int>& values) {
  std::string out;
  for (int v : values) out += (out.empty() ? "" : ",") + std::to_string(v);
  return out;
}

using Environment = std::vector<std::pair<std::string, std::string>>;

class LocalPool {
 public:
  LocalPool(const std::string& sweep, const EvalStage& eval, const LocalRun& o)
      : sweep_(sweep), eval_(eval), options_(o), store_(o.db_path) {
    for (int g = 0; g < o.gpus; ++g) free_gpus_.push_back(g);
  }

  int run(const std::vector<PlannedJob>& jobs) {
    for (auto* job : jobs_to_run(store_, jobs, sweep_, options_.max_attempts)) queue_.push_back(job);
    if (eval_.enabled)  // trained earlier, but the evaluation stage never finished
      for (auto& job : jobs) {
        const auto state = store_.job_state(job.id);
        if (state && state->status == JobStatus::done && state->eval.stage != EvalStatus::Stage::done)
          eval_queue_.push_back(&job);
      }
    std::printf("[sweep %s] %zu of %zu jobs to run, %d at a time\n", sweep_.c_str(), queue_.size(), jobs.size(),
                options_.jobs);
    std::fflush(stdout);
    install_runner_handlers();
    auto last_report = Clock::now();
    while (!queue_.empty() || !eval_queue_.empty() || !running_.empty() || !followed_.empty()) {
      if (stop_signal && !stopping_) stop_all();
      while (!stopping_ && !queue_.empty() && free_slot()) {
        const PlannedJob* job = queue_.front();
        queue_.pop_front();
        if (!follow_live_trainer(*job)) launch(job);
      }
      while (!stopping_ && !eval_queue_.empty() && free_slot()) {
        launch_eval(RunningJob{eval_queue_.front(), 0, take_gpus(), Clock::now()});
        eval_queue_.pop_front();
      }
      reap();
      poll_followed();
      if (Clock::now() - last_report > std::chrono::seconds(10)) report(), last_report = Clock::now();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    report();
    if (stopping_) return kExitInterrupted;
    return failed_ ? 1 : 0;
  }

 private:
  bool free_slot() const { return int(running_.size() + followed_.size()) < options_.jobs; }

  // A slot's GPUs: `ranks` of the free ones (none on the CPU).
  std::vector<int> take_gpus() {
    if (options_.gpus == 0) return {};
    std::vector<int> gpus(free_gpus_.begin(), free_gpus_.begin() + options_.ranks);
    free_gpus_.erase(free_gpus_.begin(), free_gpus_.begin() + options_.ranks);
    return gpus;
  }

  void launch(const PlannedJob* job) {
    const std::string dir = job_run_dir(options_.workdir, job->id);
    // CPU jobs share the cores among all their processes; a GPU job keeps LibTorch's default.
    const int processes = options_.jobs * options_.ranks;
    const int threads = options_.gpus == 0 ? std::max(1, int(std::thread::hardware_concurrency()) / processes) : 0;
    const std::string config = write_job_config(*job, dir, threads);
    RunningJob r{job, store_.job_state(job->id).value().attempts, take_gpus(), Clock::now()};
    const std::vector<std::string> args = {"train", "--config", config, "--db", options_.db_path, "--run-dir", dir, "--resume"};
    if (options_.ranks == 1) {
      r.pids.push_back(spawn(args, dir + "/train.log", r.gpus));
    } else {
      const std::string port = std::to_string(free_port());
      for (int rank = 0; rank < options_.ranks; ++rank)
        r.pids.push_back(spawn(args, rank_log(dir, rank), r.gpus,
                               {{"MOELAB_RANK", std::to_string(rank)}, {"MOELAB_LOCAL_RANK", std::to_string(rank)},
                                {"MOELAB_WORLD_SIZE", std::to_string(options_.ranks)}, {"MASTER_ADDR", "127.0.0.1"},
                                {"MASTER_PORT", port}}));
    }
    store_.set_job_executor(job->id, kLocalExecutor, std::to_string(r.pids[0]), this_host(), dir);
    std::printf("[sweep %s] start %s %s (pid %s%s)\n", sweep_.c_str(), job->id.c_str(), job->config.name.c_str(),
                join(std::vector<int>(r.pids.begin(), r.pids.end())).c_str(),
                r.gpus.empty() ? "" : ((r.gpus.size() > 1 ? ", GPUs " : ", GPU ") + join(r.gpus)).c_str());
    std::fflush(stdout);
    add_running(std::move(r));
  }

  // A trainer alive in the job's run directory, here or where the store last saw the job run, holds
  // its lock: the job is followed, not started a second time. Returns whether it is.
  bool follow_live_trainer(const PlannedJob& job) {
    const JobState state = store_.job_state(job.id).value();
    std::vector<std::string> dirs = {job_run_dir(options_.workdir, job.id)};
    if (!state.run_dir.empty() && state.run_dir != dirs[0]) dirs.push_back(state.run_dir);
    for (auto& dir : dirs) {
      auto trainer = lock_holder(run_dir_lock_path(dir));
      if (!trainer) continue;
      std::printf("[sweep %s] follow %s %s: its trainer is alive (%s, run directory %s)\n", sweep_.c_str(),
                  job.id.c_str(), job.config.name.c_str(), trainer->describe().c_str(), dir.c_str());
      std::fflush(stdout);
      followed_.push_back(FollowedJob{&job, dir, *trainer, state.status == JobStatus::running, state.attempts, take_gpus()});
      return true;
    }
    return false;
  }

  // Followed trainers that let go of their run directory: their outcome is in the store.
  void poll_followed() {
    for (size_t i = 0; i < followed_.size();) {
      if (lock_holder(run_dir_lock_path(followed_[i].run_dir))) {
        ++i;
        continue;
      }
      FollowedJob done = std::move(followed_[i]);
      followed_.erase(followed_.begin() + i);
      record_followed(done);
    }
  }

  void record_followed(const FollowedJob& f) {
    const auto& job = *f.job;
    const JobState state = store_.job_state(job.id).value();
    std::string outcome = to_string(state.status);
    if (state.status == JobStatus::failed) {
      outcome = "failed (" + state.error.substr(0, state.error.find('\n')) + ")";
      ++failed_;
    } else if (state.status != JobStatus::done && state.status != JobStatus::interrupted) {
      // Killed, or crashed, before it could record an end.
      const std::string log = rank_log(f.run_dir, 0);
      store_.set_job_status(job.id, JobStatus::failed, "its trainer (" + f.trainer.describe() +
                                                  ") ended without recording an outcome; end of " + log + ":\n" +
                                                  log_tail(log, 20));
      if (!f.trainer_counted && state.attempts == f.attempts_at_follow) store_.count_attempt(job.id);
      outcome = "failed (its trainer ended without recording an outcome, log " + log + ")";
      ++failed_;
    }
    std::printf("[sweep %s] %s %s %s (followed trainer, %s)\n", sweep_.c_str(), outcome.c_str(), job.id.c_str(),
                job.config.name.c_str(), f.trainer.describe().c_str());
    std::fflush(stdout);
    if (state.status == JobStatus::done && eval_.enabled && !stopping_) {
      launch_eval(RunningJob{&job, state.attempts, f.gpus, Clock::now()});
      return;
    }
    free_gpus_.insert(free_gpus_.end(), f.gpus.begin(), f.gpus.end());
  }

  static std::string rank_log(const std::string& dir, int rank) {
    return dir + (rank == 0 ? "/train.log" : "/train.rank" + std::to_string(rank) + ".log");
  }

  void add_running(RunningJob r) {
    const pid_t leader = r.pids[0];
    for (pid_t pid : r.pids) leader_of_[pid] = leader;
    running_[leader] = std::move(r);
  }

  // `moelab <args>` in its own process group (the runner decides when a job is told to stop), its
  // output appended to `log`, on `gpus` if some were handed out, with `environment` added.
  pid_t spawn(const std::vector<std::string>& args, const std::string& log, const std::vector<int>& gpus,
              const Environment& environment = {}) {
    pid_t pid = fork();
    if (pid == 0) {
      setpgid(0, 0);
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      dup2(fd, STDOUT_FILENO), dup2(fd, STDERR_FILENO), close(fd);
      if (!gpus.empty()) setenv("CUDA_VISIBLE_DEVICES", join(gpus).c_str(), 1);
      for (auto& [name, value] : environment) setenv(name.c_str(), value.c_str(), 1);
      std::vector<char*> argv = {const_cast<char*>("moelab")};
      for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(options_.moelab_binary.c_str(), argv.data());
      std::perror("exec moelab");
      _exit(127);
    }
    return pid;
  }

  // After training: the spec's evaluation stage, in the slot the job had.
  // One process on the slot's first GPU; the slot keeps the others until it is done.
  void launch_eval(RunningJob r) {
    const std::string log = job_run_dir(options_.workdir, r.job->id) + "/eval.log";
    const std::vector<int> gpu(r.gpus.begin(), r.gpus.begin() + std::min<size_t>(1, r.gpus.size()));
    pid_t pid = spawn(eval_arguments(eval_, r.job->id, options_.db_path), log, gpu);
    std::printf("[sweep %s] evaluate %s %s (pid %d, log %s)\n", sweep_.c_str(), r.job->id.c_str(), r.job->config.name.c_str(),
                pid, log.c_str());
    std::fflush(stdout);
    add_running(RunningJob{r.job, r.attempts_at_launch, r.gpus, Clock::now(), /*evaluating=*/true, {pid}});
  }

  void record_eval(const RunningJob& r) {
    const int status = r.status;
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    auto state = store_.job_state(r.job->id);
    // A process that died before recording its outcome (killed, a store it cannot open) would
    // otherwise leave the stage "running" for ever.
    if (!ok && state && state->eval.stage != EvalStatus::Stage::failed) {
      const std::string why = WIFEXITED(status) ? "exit code " + std::to_string(WEXITSTATUS(status))
                                                : "signal " + std::to_string(WTERMSIG(status));
      state->eval = {EvalStatus::Stage::failed, why + " (see " + job_run_dir(options_.workdir, r.job->id) + "/eval.log)"};
      store_.set_eval_status(r.job->id, state->eval);
    }
    if (!ok) ++failed_;
    std::printf("[sweep %s] evaluation of %s %s: %s\n", sweep_.c_str(), r.job->id.c_str(), r.job->config.name.c_str(),
                state ? state->eval.text().c_str() : "?");
    std::fflush(stdout);
  }

  // Exit codes a rank can end with while its peers end the same way on their own.
  static bool expected_exit(int status) {
    if (!WIFEXITED(status)) return false;
    const int code = WEXITSTATUS(status);
    return code == kExitOk || code == kExitInterrupted || code == kExitDiverged;
  }

  void reap() {
    int status = 0;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
      auto leader = leader_of_.find(pid);
      if (leader == leader_of_.end()) continue;
      RunningJob& r = running_.at(leader->second);
      leader_of_.erase(leader);
      const size_t rank = std::find(r.pids.begin(), r.pids.end(), pid) - r.pids.begin();
      if (!expected_exit(status) && !r.rank_failed) {
        // Its peers would wait in their next collective until the timeout: stop them now.
        r.rank_failed = true, r.status = status, r.log = rank_log(job_run_dir(options_.workdir, r.job->id), int(rank));
        for (pid_t peer : r.pids)
          if (peer != pid && leader_of_.count(peer)) kill(-peer, SIGKILL);
      } else if (rank == 0 && !r.rank_failed) {
        r.status = status, r.log = rank_log(job_run_dir(options_.workdir, r.job->id), 0);
      }
      if (++r.exited < r.pids.size()) continue;
      RunningJob finished = std::move(r);
      running_.erase(finished.pids[0]);
      if (!finished.evaluating && WIFEXITED(finished.status) && WEXITSTATUS(finished.status) == kExitRunDirBusy) {
        // Another trainer took the run directory between the look and the launch: follow it, or
        // start again if it is gone already. This launch wrote nothing.
        free_gpus_.insert(free_gpus_.end(), finished.gpus.begin(), finished.gpus.end());
        if (!stopping_ && !follow_live_trainer(*finished.job)) queue_.push_front(finished.job);
        continue;
      }
      if (finished.evaluating) {
        record_eval(finished);
      } else {
        record(finished);
        const bool trained = WIFEXITED(finished.status) && WEXITSTATUS(finished.status) == kExitOk;
        if (trained && eval_.enabled && !stopping_) {
          launch_eval(std::move(finished));
          continue;
        }
      }
      free_gpus_.insert(free_gpus_.end(), finished.gpus.begin(), finished.gpus.end());
    }
  }

  // The trainer records done, interrupted and diverged itself; anything else (bad input, a crash,
  // a kill) is recorded here with the end of the job's log.
  void record(const RunningJob& r) {
    const int status = r.status;
    const auto& job = *r.job;
    const bool exited = WIFEXITED(status);
    const int code = exited ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    const double minutes = std::chrono::duration<double>(Clock::now() - r.started).count() / 60;
    finished_minutes_.push_back(minutes);
    std::string outcome;
    if (exited && code == kExitOk) {
      outcome = to_string(JobStatus::done);
    } else if (exited && code == kExitInterrupted) {
      outcome = to_string(JobStatus::interrupted);
    } else {
      const std::string& log = r.log;
      if (!exited || code != kExitDiverged) {
        std::string why = exited ? "exit code " + std::to_string(code) : "killed by signal " + std::to_string(WTERMSIG(status));
        store_.set_job_status(job.id, JobStatus::failed, why + "; end of " + log + ":\n" + log_tail(log, 20), code);
        if (store_.job_state(job.id).value().attempts == r.attempts_at_launch) store_.count_attempt(job.id);
      }
      outcome = "failed (" + (exited ? "exit code " + std::to_string(code) : "signal " + std::to_string(WTERMSIG(status))) +
                ", log " + log + ")";
      ++failed_;
    }
    std::printf("[sweep %s] %s %s %s after %.1f min\n", sweep_.c_str(), outcome.c_str(), job.id.c_str(),
                job.config.name.c_str(), minutes);
    std::fflush(stdout);
  }

  void stop_all() {
    stopping_ = true;
    std::printf("[sweep %s] signal %d: telling %zu running jobs to checkpoint and stop\n", sweep_.c_str(),
                int(stop_signal), running_.size() + followed_.size());
    for (auto& [pid, leader] : leader_of_) kill(-pid, SIGTERM);
    // A followed trainer is not in a process group of ours; its rank 0 tells the other ranks.
    for (auto& f : followed_)
      if (f.trainer.host == this_host() && f.trainer.pid > 0) kill(pid_t(f.trainer.pid), SIGTERM);
    queue_.clear(), eval_queue_.clear();
  }

  void report() {
    const std::string line = status_summary(store_.status_counts(sweep_));
    std::printf("[sweep %s] %s | %zu running here, %zu followed, %zu queued%s\n", sweep_.c_str(), line.c_str(),
                running_.size(), followed_.size(), queue_.size(), eta().c_str());
    std::fflush(stdout);
  }

  // Remaining jobs times the mean duration of the jobs finished so far, spread over the workers.
  std::string eta() const {
    if (finished_minutes_.empty() || (queue_.empty() && running_.empty())) return "";
    double mean = 0;
    for (double m : finished_minutes_) mean += m / finished_minutes_.size();
    char text[48];
    std::snprintf(text, sizeof text, " | ETA ~%.1f min", (queue_.size() + running_.size()) * mean / options_.jobs);
    return text;
  }

  std::string sweep_;
  EvalStage eval_;
  LocalRun options_;
  std::vector<double> finished_minutes_;
  Store store_;
  std::deque<const PlannedJob*> queue_, eval_queue_;
  std::map<pid_t, RunningJob> running_;  // by the pid of rank 0
  std::map<pid_t, pid_t> leader_of_;     // each running process -> the pid of its job's rank 0
  std::vector<FollowedJob> followed_;
  std::vector<int> free_gpus_;
  bool stopping_ = false;
  int failed_ = 0;
};

}  // namespace

int run_local(const std::vector<PlannedJob>& jobs, const SweepSpec& spec, const LocalRun& options) {
  return LocalPool(spec.name, spec.eval, options).run(jobs);
}

}  // namespace moelab
