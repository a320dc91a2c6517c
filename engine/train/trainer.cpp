#include "engine/train/trainer.hpp"

#include <c10/core/impl/VirtualGuardImpl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>

#include "db/store.hpp"
#include "engine/data/token_file.hpp"
#include "engine/kernels/switch.hpp"
#include "engine/model/gpt.hpp"
#include "engine/train/autocast.hpp"
#include "engine/train/batches.hpp"
#include "engine/train/checkpoint.hpp"
#include "engine/train/data_parallel.hpp"
#include "engine/train/error_message.hpp"
#include "engine/train/kernel_self_check.hpp"
#include "engine/train/memory_use.hpp"
#include "engine/train/optimizer.hpp"
#include "engine/train/run_dir_lock.hpp"
#include "engine/train/schedule.hpp"
#include "engine/train/step_graph.hpp"
#include "engine/train/step_profile.hpp"

namespace moelab {
namespace {

std::atomic<bool> stop_requested{false};

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// On CUDA each data-parallel process of a node takes the GPU of its local rank, made the current
// device so that kernels, autocast and NCCL all use it.
torch::Device pick_device(const TrainConfig& t, const LaunchRank& launch) {
  if (t.device == "cuda" || (t.device == "auto" && torch::cuda::is_available())) {
    const int gpus = int(torch::cuda::device_count());
    if (gpus == 0) throw ConfigError("train.device: cuda, but no CUDA device is visible");
    torch::Device device(torch::kCUDA, c10::DeviceIndex(launch.local_rank % gpus));
    c10::impl::VirtualGuardImpl(device.type()).setDevice(device);
    return device;
  }
  return torch::kCPU;
}

// Both token files open and agree with the config; throws naming the file otherwise.
void check_data(const JobConfig& c, const TokenFile& file, const std::string& field) {
  if (file.tokenizer() != c.data.tokenizer)
    throw std::runtime_error(file.path() + " (" + field + "): tokenized with " + file.tokenizer() + " but data.tokenizer is " +
                             c.data.tokenizer);
  if (file.vocab_size() > uint32_t(c.model.vocab_size))
    throw std::runtime_error(file.path() + " (" + field + "): vocabulary " + std::to_string(file.vocab_size()) +
                             " exceeds model.vocab_size " + std::to_string(c.model.vocab_size));
  if (file.size() < size_t(c.model.seq_len) + 2)
    throw std::runtime_error(file.path() + " (" + field + "): " + std::to_string(file.size()) +
                             " tokens, fewer than one sequence of model.seq_len " + std::to_string(c.model.seq_len));
}

// MOELAB_ATEN_ONLY is read when a kernel is first chosen, inside the first step: a value that names
// no kernel is refused here instead, before anything is written, in every build.
void check_own_kernel_switch() {
  try {
    kernels::kernels_turned_off(std::getenv("MOELAB_ATEN_ONLY"));
  } catch (const std::invalid_argument& e) {
    throw ConfigError(e.what());
  }
}

// AdamW with weight decay on matrices only; biases, LayerNorm gains and KERN's gamma are not decayed.
std::unique_ptr<FusedAdamW> make_optimizer(Gpt& model, const TrainConfig& t) {
  std::vector<torch::Tensor> decay, no_decay;
  for (auto& p : model->parameters()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  auto options = [&](double wd) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(t.lr).betas({t.betas[0], t.betas[1]}).weight_decay(wd).eps(1e-8));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, options(t.weight_decay));
  groups.emplace_back(no_decay, options(0.0));
  return std::make_unique<FusedAdamW>(groups, torch::optim::AdamWOptions(t.lr));
}

std::string format_duration(double seconds) {
  char buffer[32];
  int s = int(seconds);
  if (s >= 3600)
    std::snprintf(buffer, sizeof buffer, "%dh%02dm", s / 3600, s / 60 % 60);
  else
    std::snprintf(buffer, sizeof buffer, "%dm%02ds", s / 60, s % 60);
  return buffer;
}

// One job's training loop; holds what the steps share so each phase reads as a small function.
class Trainer {
 public:
  Trainer(const JobConfig& c, const TrainOptions& o, const LaunchRank& launch)
      : config_(c),
        options_(o),
        launch_(launch),
        job_id_(c.hash()),
        train_file_(c.data.train, "data.train"),
        val_file_(c.data.val, "data.val"),
        batches_(c, train_file_, val_file_),
        device_(pick_device(c.train, launch)),
        micro_batches_(c.train.micro_batches_per_rank(launch.world_size)),
        inputs_(micro_batches_),
        targets_(micro_batches_) {
    check_own_kernel_switch();
    check_data(c, train_file_, "data.train");
    check_data(c, val_file_, "data.val");
    if (c.train.threads > 0) torch::set_num_threads(c.train.threads);
    torch::manual_seed(c.seed);
    model_ = Gpt(c.model, c.seed);
    model_->to(device_);
    optimizer_ = make_optimizer(model_, c.train);
    if (device_.is_cuda() && c.train.precision == "fp16") optimizer_->enable_loss_scaling(device_);
    if (o.resume)
      if (auto checkpoint = find_checkpoint(o.run_dir, c)) resumed_ = load_checkpoint(*checkpoint, *model_, optimizer_.get());
    if (launch.distributed()) join_data_parallel();
    if (c.train.cuda_graph) {
      check_capturable();
      graph_ = std::make_unique<StepGraph>(device_);
    }
  }

  // Only rank 0 writes to the store; the other ranks train and take part in every collective.
  int run() {
    if (launch_.rank == 0) {
      store_.emplace(options_.db_path);
      store_->upsert_job(JobRow{job_id_, config_.name, "", config_.to_json().dump(), "{}", config_.train.steps});
      store_->set_job_status(job_id_, JobStatus::running);
      std::string started = resumed_.step ? "resumed from step " + std::to_string(resumed_.step) : "started";
      if (launch_.distributed()) started += " on " + std::to_string(launch_.world_size) + " data-parallel ranks";
      store_->log_event(job_id_, "info", started);
    }
    int code;
    try {
      self_check_own_kernels();
      code = loop();
    } catch (const std::exception& e) {
      error_ = error_message(e);
      code = kExitFailed;
    }
    finish(code);
    return code;
  }

  // `--profile-steps N`: warm-up steps (the allocator's first blocks, kernel autotuning, and with
  // train.cuda_graph the capture), then N steps with rank 0 under the profiler. Writes
  // <run dir>/profile/{trace.json,ops.csv} (and on CUDA operators.csv), nothing to the store.
  int profile() {
    constexpr int kWarmUpSteps = 2;
    self_check_own_kernels();
    int step = resumed_.step;
    for (int i = 0; i < kWarmUpSteps || (graph_ && !graph_->captured()); ++i) train_step(++step);
    const auto dir = std::filesystem::path(options_.run_dir) / "profile";
    std::optional<StepProfiler> profiler;
    if (launch_.rank == 0) {
      std::filesystem::create_directories(dir);
      profiler.emplace(device_);
    }
    for (int i = 0; i < options_.profile_steps; ++i) train_step(++step);
    if (!profiler) return kExitOk;
    auto profile = profiler->finish(options_.profile_steps, (dir / "trace.json").string());
    write_step_profile_csv(profile, profile.ops, (dir / "ops.csv").string());
    if (!profile.by_operator.empty()) write_step_profile_csv(profile, profile.by_operator, (dir / "operators.csv").string());
    print_step_profile(profile, stdout);
    const double tokens_per_step = double(config_.train.batch_size) * config_.model.seq_len / launch_.world_size;
    print_time_by_kind(profile, double(model_size(config_.model).flops_per_token) * tokens_per_step, stdout);
    std::printf("wrote trace.json and the tables as CSV in %s\n", dir.c_str());
    return kExitOk;
  }

 private:
  // What a step leaves on the device; the host reads it only at logging steps, so that on a GPU
  // the host queues the next step without waiting for this one.
  struct StepResult {
    torch::Tensor loss;       // this rank's share of the step's mean loss
    torch::Tensor grad_norm;  // before clipping, the same on every rank
  };

  // A logging step's view of the step: the loss over all ranks, and whether any rank was asked to
  // stop (all ranks then checkpoint and stop at this same step).
  struct StepReport {
    double loss = 0, grad_norm = 0;
    bool stop = false;
  };

  // Every rank builds the same weights from the seed and the checkpoint; rank 0's copy is sent to
  // all as well (as DDP does), so that replicas start equal even if a rank's initialisation differed.
  void join_data_parallel() {
    parallel_ = std::make_unique<DataParallel>(launch_, rendezvous_from_environment(), device_, model_->parameters());
    parallel_->broadcast_from_rank0(model_->parameters());
    parallel_->broadcast_from_rank0(model_->buffers());
  }

  // Before the first step on a GPU, each of moelab's kernels that is on checks itself against ATen's
  // composition (kernel_self_check.hpp); one that fails is turned off for the run, with a warning.
  void self_check_own_kernels() {
    report_kernels_turned_off(check_own_kernels(device_, autocast_dtype(config_.train.precision)), stderr,
                              store_ ? &*store_ : nullptr, job_id_);
  }

  int loop() {
    const auto& t = config_.train;
    started_ = Clock::now();
    interval_start_ = started_;
    for (int step = resumed_.step + 1; step <= t.steps; ++step) {
      auto result = train_step(step);
      const bool last = step == t.steps;
      bool stopping = step == options_.stop_after;
      if (step % t.log_every == 0 || last) {
        auto report = read_report(result);
        if (!std::isfinite(report.loss)) {
          error_ = "non-finite loss " + std::to_string(report.loss) + " at step " + std::to_string(step);
          return kExitDiverged;
        }
        log_train(step, report.loss, report.grad_norm);
        stopping = stopping || report.stop;
      } else if (!parallel_) {
        stopping = stopping || stop_requested;  // a single process answers a signal at once
      }
      if (step % t.eval_every == 0 || last) evaluate(step);
      if (step % t.checkpoint_every == 0 || last || stopping) checkpoint(step);
      if (stopping && !last) return kExitInterrupted;
      if (step % kStepsBetweenHeapReturns == 0) return_freed_heap_pages();
    }
    return kExitOk;
  }

  // `train.cuda_graph` is refused, naming why, where the step could not be captured (see step_graph.hpp).
  void check_capturable() const {
    const auto& t = config_.train;
    auto refuse = [](const std::string& why) { throw ConfigError("train.cuda_graph: " + why); };
    if (!device_.is_cuda()) refuse("needs a GPU, and this job runs on the CPU (no CUDA device is visible)");
    if (launch_.distributed())
      refuse("not with data-parallel training (" + std::to_string(launch_.world_size) +
             " ranks): the gradient all-reduce is not captured");
    if (!model_->moe_layers().empty() && t.precision != "bf16")
      refuse("MoE layers in " + t.precision +
             " take the per-expert loop, which reads the expert counts on the host; use train.precision bf16");
    if (!model_->moe_layers().empty() && !grouped_mm_stays_on_device(device_))
      refuse("on this GPU the MoE layers' grouped matmuls read their group offsets on the host (ATen's grouped "
             "kernels need compute capability 9.x or 10.x)");
  }

  StepResult train_step(int step) {
    model_->train();
    optimizer_->set_learning_rate(learning_rate(config_.train, step));
    load_batches(step);
    if (!graph_) return forward_backward_update();
    const bool was_captured = graph_->captured();
    auto outputs = graph_->run([this] {
      auto result = forward_backward_update();
      return std::vector<torch::Tensor>{result.loss, result.grad_norm};
    });
    if (!was_captured && graph_->captured() && store_)
      store_->log_event(job_id_, "info", "step " + std::to_string(step) + " captured as a CUDA graph; later steps replay it");
    return {outputs[0], outputs[1]};
  }

  // This rank's micro-batches of `step`. On CUDA they are copied into the same device tensors every
  // step, from pinned memory without blocking: a captured step reads them there, and a copy from
  // pageable memory would make the host wait until the GPU has drained, so it could not queue the
  // next step while this one runs.
  void load_batches(int step) {
    for (int micro = 0; micro < micro_batches_; ++micro) {
      auto batch = batches_.train_batch(step, launch_.rank * micro_batches_ + micro);
      place(inputs_[micro], batch.inputs);
      place(targets_[micro], batch.targets);
    }
  }

  void place(torch::Tensor& slot, const torch::Tensor& batch) const {
    if (slot.defined() && device_.is_cuda())
      slot.copy_(batch.pin_memory(), /*non_blocking=*/true);
    else
      slot = on_device(batch);
  }

  // One optimizer step over the loaded micro-batches. The loss of each micro-batch is divided by
  // the micro-batches of the whole step, summed over ranks by the gradient all-reduce's mean times
  // the world size: gradients and loss equal those of one process taking the global batch.
  StepResult forward_backward_update() {
    optimizer_->zero_grad();
    auto loss_sum = torch::zeros({}, torch::TensorOptions().device(device_));
    for (int micro = 0; micro < micro_batches_; ++micro) {
      torch::Tensor loss;
      {
        AutocastScope autocast(device_, config_.train.precision);
        loss = model_->loss(inputs_[micro], targets_[micro]) / micro_batches_;
      }
      if (parallel_ && micro == micro_batches_ - 1) parallel_->sync_next_backward();
      optimizer_->scale_loss(loss).backward();
      loss_sum += loss.detach();
    }
    if (parallel_) parallel_->finish_gradient_sync();
    optimizer_->unscale_gradients();
    auto grad_norm = clip_gradients();
    optimizer_->step();
    if (parallel_) average_balancing_state();
    return {loss_sum, grad_norm};
  }

  // One collective carries the ranks' losses and stop requests; one copy brings them to the host.
  StepReport read_report(const StepResult& result) {
    const auto options = result.loss.options().dtype(torch::kDouble);
    auto shared = torch::stack({result.loss.to(torch::kDouble), torch::full({}, stop_requested ? 1.0 : 0.0, options)});
    if (parallel_) parallel_->sum(shared);
    auto host = torch::cat({shared, result.grad_norm.to(options).view({1})}).cpu();
    return {host[0].item<double>() / launch_.world_size, host[2].item<double>(), host[1].item<double>() > 0};
  }

  // Selection biases and centroids move with each rank's own tokens; averaging keeps replicas equal.
  void average_balancing_state() {
    std::vector<torch::Tensor> state;
    for (auto& layer : model_->moe_layers())
      for (auto& t : layer->router->balancing_state()) state.push_back(t);
    if (!state.empty()) parallel_->average(state);
  }

  // Total gradient norm before clipping (what the metrics record); clipping only when grad_clip > 0.
  torch::Tensor clip_gradients() {
    const double max_norm = config_.train.grad_clip > 0 ? config_.train.grad_clip : std::numeric_limits<double>::infinity();
    return clip_gradient_norm(model_->parameters(), max_norm);
  }

  // Pinned first, so that the copy does not block the host (see load_batches).
  torch::Tensor on_device(const torch::Tensor& t) const {
    return device_.is_cuda() ? t.pin_memory().to(device_, /*non_blocking=*/true) : t;
  }

  double wall_time() const { return resumed_.wall_time + seconds_since(started_); }
  int64_t tokens_seen(int step) const { return int64_t(step) * config_.train.batch_size * config_.model.seq_len; }

  void log_train(int step, double loss, double grad_norm) {
    if (!store_) return;
    const int steps_in_interval = step - last_logged_step();
    const double interval = seconds_since(interval_start_);
    const double tokens_per_s = steps_in_interval * double(config_.train.batch_size) * config_.model.seq_len / interval;
    interval_start_ = Clock::now();
    last_logged_ = step;
    store_->put_metric(MetricRow{job_id_, step, "train", loss, tokens_seen(step), learning_rate(config_.train, step),
                               grad_norm, tokens_per_s, wall_time()});
    if (options_.progress) print_progress(step, loss, tokens_per_s);
  }

  int last_logged_step() const { return last_logged_ ? last_logged_ : resumed_.step; }

  void print_progress(int step, double loss, double tokens_per_s) const {
    const int steps = config_.train.steps;
    const double eta = (steps - step) * double(config_.train.batch_size) * config_.model.seq_len / tokens_per_s;
    const bool tty = isatty(STDERR_FILENO);
    std::fprintf(stderr, "%s[%s] step %d/%d | loss %.4f | %.0f tok/s | ETA %s%s", tty ? "\r\033[K" : "",
                 config_.name.c_str(), step, steps, loss, tokens_per_s, format_duration(eta).c_str(),
                 tty && step < steps ? "" : "\n");
    std::fflush(stderr);
  }

  // Ranks split the validation batches (rank r takes r, r + world, ...) and add up their losses;
  // the routing counters of all ranks are added before rank 0 records them.
  void evaluate(int step) {
    const double loss = validation_loss();
    auto layers = model_->moe_layers();
    std::vector<RoutingSnapshot> snapshots;
    for (auto& layer : layers) {
      if (parallel_)
        for (auto counter : layer->router->statistics()) parallel_->sum(counter);
      snapshots.push_back(layer->router->take_snapshot());
    }
    if (!store_) return;
    store_->transaction([&] {
      store_->put_metric(MetricRow{job_id_, step, "val", loss, tokens_seen(step), learning_rate(config_.train, step), 0.0,
                                   0.0, wall_time()});
      for (size_t layer = 0; layer < snapshots.size(); ++layer) {
        const auto& s = snapshots[layer];
        store_->put_routing(RoutingRow{job_id_, step, int(layer), s.expert_fraction, s.load_std, s.load_max_over_mean,
                                       s.dead_experts, s.positive_gates, s.fewer_than_k, s.router_cosine});
      }
    });
    if (options_.progress) std::fprintf(stderr, "[%s] step %d val loss %.4f\n", config_.name.c_str(), step, loss);
    interval_start_ = Clock::now();  // tokens/s measures training only
  }

  double validation_loss() {
    torch::NoGradGuard no_grad;
    AutocastScope autocast(device_, config_.train.precision);
    model_->eval();
    auto total = torch::zeros({}, torch::TensorOptions().dtype(torch::kDouble).device(device_));
    for (int i = launch_.rank; i < config_.train.eval_batches; i += launch_.world_size) {
      auto batch = batches_.val_batch(i);
      total += model_->loss(on_device(batch.inputs), on_device(batch.targets)).to(torch::kDouble);
    }
    if (parallel_) parallel_->sum(total);
    return total.item<double>() / config_.train.eval_batches;
  }

  // Rank 0 writes checkpoints (the other ranks hold the same weights and optimizer state).
  void checkpoint(int step) {
    if (!store_) return;
    auto saved = save_checkpoint(options_.run_dir, config_, *model_, *optimizer_, Progress{step, wall_time()});
    store_->put_checkpoint(CheckpointRow{job_id_, step, saved.path, saved.sha256});
    record_peak_memory();
    interval_start_ = Clock::now();
  }

  // Records how the job ended. A failure is printed here too, so that it is seen even when the
  // store cannot take it (a damaged store is one way a job fails).
  void finish(int code) {
    const bool failed = code != kExitOk && code != kExitInterrupted;
    if (failed) std::fprintf(stderr, "error: %s\n", error_.c_str());
    if (!store_) return;
    try {
      record_peak_memory();
      if (code == kExitOk) {
        store_->set_job_status(job_id_, JobStatus::done, "", code);
      } else if (code == kExitInterrupted) {
        store_->set_job_status(job_id_, JobStatus::interrupted, "", code);
        store_->log_event(job_id_, "info", "interrupted; checkpoint written, resume with --resume");
      } else {
        store_->set_job_status(job_id_, JobStatus::failed, error_, code);
        store_->log_event(job_id_, "error", error_);
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: the store could not record how job %s ended: %s\n", job_id_.c_str(),
                   error_message(e).c_str());
    }
  }

  void record_peak_memory() {
    const auto peak = peak_memory(device_);
    store_->record_peak_memory(job_id_, peak.resident_bytes, peak.gpu_bytes);
  }

  const JobConfig& config_;
  TrainOptions options_;
  LaunchRank launch_;
  std::string job_id_;
  TokenFile train_file_, val_file_;
  BatchSource batches_;
  torch::Device device_;
  int micro_batches_;  // this rank's micro-batches per step
  std::vector<torch::Tensor> inputs_, targets_;  // the step's micro-batches (load_batches)
  Gpt model_{nullptr};
  std::unique_ptr<FusedAdamW> optimizer_;
  std::unique_ptr<DataParallel> parallel_;  // null in a single-process job
  std::unique_ptr<StepGraph> graph_;        // train.cuda_graph only
  std::optional<Store> store_;              // rank 0 only
  Progress resumed_;
  Clock::time_point started_, interval_start_;
  int last_logged_ = 0;
  std::string error_;
};

}  // namespace

void install_stop_handlers() {
  auto request_stop = [](int) { stop_requested = true; };
  std::signal(SIGINT, request_stop);
  std::signal(SIGTERM, request_stop);
}

int train_job(const JobConfig& config, const TrainOptions& options) {
  const LaunchRank launch = launch_rank_from_environment();  // data_parallel.hpp: the launch contract
  TrainOptions resolved = options;
  if (resolved.run_dir.empty()) resolved.run_dir = default_job_run_dir(config.hash());
  resolved.progress = options.progress && launch.rank == 0;
  const bool new_run_dir = !std::filesystem::exists(resolved.run_dir);
  std::optional<ProcessLock> lock;  // rank 0 writes, so rank 0 holds the run directory
  if (launch.rank == 0) {
    try {
      std::filesystem::create_directories(resolved.run_dir);
      lock.emplace(run_dir_lock_path(resolved.run_dir));
      lock->hold_until_exit();
    } catch (const LockHeld& e) {
      std::fprintf(stderr, "error: run directory %s is in use by another trainer (%s); not training one job twice\n",
                   resolved.run_dir.c_str(), e.holder.describe().c_str());
      return kExitRunDirBusy;
    }
  }
  std::optional<Trainer> trainer;
  try {
    trainer.emplace(config, resolved, launch);  // all input checks happen here, before the store is touched
  } catch (...) {
    if (lock && new_run_dir) {  // bad input leaves no trace, not even the run directory
      std::filesystem::remove(lock->path());
      std::error_code not_empty;
      std::filesystem::remove(resolved.run_dir, not_empty);
    }
    throw;
  }
  return options.profile_steps > 0 ? trainer->profile() : trainer->run();
}

}  // namespace moelab
