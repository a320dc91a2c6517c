#include "engine/train/trainer.hpp"

#include <ATen/autocast_mode.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>

#include "db/store.hpp"
#include "engine/data/token_file.hpp"
#include "engine/model/gpt.hpp"
#include "engine/train/batches.hpp"
#include "engine/train/checkpoint.hpp"
#include "engine/train/schedule.hpp"

namespace moelab {
namespace {

std::atomic<bool> stop_requested{false};

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

torch::Device pick_device(const TrainConfig& t) {
  if (t.device == "cuda" || (t.device == "auto" && torch::cuda::is_available())) return torch::kCUDA;
  return torch::kCPU;
}

// Mixed precision on CUDA: autocast around the forward pass (router math casts itself to fp32).
// The CPU always computes in fp32.
class AutocastScope {
 public:
  AutocastScope(torch::Device device, const std::string& precision) : enabled_(device.is_cuda() && precision != "fp32") {
    if (!enabled_) return;
    at::autocast::set_autocast_dtype(at::kCUDA, precision == "bf16" ? at::kBFloat16 : at::kHalf);
    at::autocast::set_autocast_enabled(at::kCUDA, true);
    at::autocast::increment_nesting();
  }
  ~AutocastScope() {
    if (!enabled_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(at::kCUDA, false);
  }

 private:
  bool enabled_;
};

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

// AdamW with weight decay on matrices only; biases, LayerNorm gains and KERN's gamma are not decayed.
std::unique_ptr<torch::optim::AdamW> make_optimizer(Gpt& model, const TrainConfig& t) {
  std::vector<torch::Tensor> decay, no_decay;
  for (auto& p : model->parameters()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  auto options = [&](double wd) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(t.lr).betas({t.beta1, t.beta2}).weight_decay(wd).eps(1e-8));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, options(t.weight_decay));
  groups.emplace_back(no_decay, options(0.0));
  return std::make_unique<torch::optim::AdamW>(groups, torch::optim::AdamWOptions(t.lr));
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
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
  Trainer(const JobConfig& c, const TrainOptions& o)
      : config_(c),
        options_(o),
        job_id_(c.hash()),
        train_file_(c.data.train),
        val_file_(c.data.val),
        batches_(c, train_file_, val_file_),
        device_(pick_device(c.train)) {
    check_data(c, train_file_, "data.train");
    check_data(c, val_file_, "data.val");
    if (device_.is_cuda() && c.train.precision == "fp16")
      throw ConfigError("train.precision: fp16 on CUDA needs loss scaling, which the engine does not have yet; use bf16");
    if (c.train.threads > 0) torch::set_num_threads(c.train.threads);
    torch::manual_seed(c.seed);
    model_ = Gpt(c.model, c.seed);
    model_->to(device_);
    optimizer_ = make_optimizer(model_, c.train);
    if (o.resume)
      if (auto checkpoint = find_checkpoint(o.run_dir, c)) resumed_ = load_checkpoint(*checkpoint, *model_, optimizer_.get());
  }

  int run() {
    Store store(options_.db_path);
    store.upsert_job(JobRow{job_id_, config_.name, "", config_.to_json().dump(), "{}", config_.train.steps});
    store.set_job_status(job_id_, "running");
    store.log_event(job_id_, "info", resumed_.step ? "resumed from step " + std::to_string(resumed_.step) : "started");
    int code = loop(store);
    finish(store, code);
    return code;
  }

 private:
  int loop(Store& store) {
    const auto& t = config_.train;
    started_ = Clock::now();
    interval_start_ = started_;
    for (int step = resumed_.step + 1; step <= t.steps; ++step) {
      auto [loss, grad_norm] = train_step(step);
      if (!std::isfinite(loss)) {
        error_ = "non-finite loss " + std::to_string(loss) + " at step " + std::to_string(step);
        return kExitDiverged;
      }
      const bool last = step == t.steps;
      if (step % t.log_every == 0 || last) log_train(store, step, loss, grad_norm);
      if (step % t.eval_every == 0 || last) evaluate(store, step);
      const bool stopping = stop_requested || step == options_.stop_after;
      if (step % t.checkpoint_every == 0 || last || stopping) checkpoint(store, step);
      if (stopping && !last) return kExitInterrupted;
    }
    return kExitOk;
  }

  std::pair<double, double> train_step(int step) {
    const auto& t = config_.train;
    model_->train();
    set_learning_rate(*optimizer_, learning_rate(t, step));
    optimizer_->zero_grad();
    const int accumulation = t.accumulation_steps();
    auto loss_sum = torch::zeros({}, torch::TensorOptions().device(device_));
    for (int micro = 0; micro < accumulation; ++micro) {
      auto batch = batches_.train_batch(step, micro);
      torch::Tensor loss;
      {
        AutocastScope autocast(device_, t.precision);
        loss = model_->loss(batch.inputs.to(device_), batch.targets.to(device_)) / accumulation;
      }
      loss.backward();
      loss_sum += loss.detach();
    }
    double grad_norm = clip_gradients();
    optimizer_->step();
    return {loss_sum.item<double>(), grad_norm};
  }

  // Total gradient norm before clipping (what the metrics record); clipping only when grad_clip > 0.
  double clip_gradients() {
    auto parameters = model_->parameters();
    const double max_norm = config_.train.grad_clip > 0 ? config_.train.grad_clip : std::numeric_limits<double>::infinity();
    return torch::nn::utils::clip_grad_norm_(parameters, max_norm);
  }

  double wall_time() const { return resumed_.wall_time + seconds_since(started_); }
  int64_t tokens_seen(int step) const { return int64_t(step) * config_.train.batch_size * config_.model.seq_len; }

  void log_train(Store& store, int step, double loss, double grad_norm) {
    const int steps_in_interval = step - last_logged_step();
    const double interval = seconds_since(interval_start_);
    const double tokens_per_s = steps_in_interval * double(config_.train.batch_size) * config_.model.seq_len / interval;
    interval_start_ = Clock::now();
    last_logged_ = step;
    store.put_metric(MetricRow{job_id_, step, "train", loss, tokens_seen(step), learning_rate(config_.train, step),
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

  void evaluate(Store& store, int step) {
    torch::NoGradGuard no_grad;
    AutocastScope autocast(device_, config_.train.precision);
    model_->eval();
    double total = 0;
    for (int i = 0; i < config_.train.eval_batches; ++i) {
      auto batch = batches_.val_batch(i);
      total += model_->loss(batch.inputs.to(device_), batch.targets.to(device_)).item<double>();
    }
    const double loss = total / config_.train.eval_batches;
    store.transaction([&] {
      store.put_metric(MetricRow{job_id_, step, "val", loss, tokens_seen(step), learning_rate(config_.train, step), 0.0,
                                 0.0, wall_time()});
      auto layers = model_->moe_layers();
      for (size_t layer = 0; layer < layers.size(); ++layer) {
        auto s = layers[layer]->router->take_snapshot();
        store.put_routing(RoutingRow{job_id_, step, int(layer), s.expert_fraction, s.load_std, s.load_max_over_mean,
                                     s.dead_experts, s.positive_gates, s.fewer_than_k, s.router_cosine});
      }
    });
    if (options_.progress) std::fprintf(stderr, "[%s] step %d val loss %.4f\n", config_.name.c_str(), step, loss);
    interval_start_ = Clock::now();  // tokens/s measures training only
  }

  void checkpoint(Store& store, int step) {
    auto saved = save_checkpoint(options_.run_dir, config_, *model_, *optimizer_, Progress{step, wall_time()});
    store.put_checkpoint(CheckpointRow{job_id_, step, saved.path, saved.sha256});
    interval_start_ = Clock::now();
  }

  void finish(Store& store, int code) {
    if (code == kExitOk) {
      store.set_job_status(job_id_, "done", "", code);
    } else if (code == kExitInterrupted) {
      store.set_job_status(job_id_, "interrupted", "", code);
      store.log_event(job_id_, "info", "interrupted; checkpoint written, resume with --resume");
    } else {
      store.set_job_status(job_id_, "failed", error_, code);
      store.log_event(job_id_, "error", error_);
      std::fprintf(stderr, "error: %s\n", error_.c_str());
    }
  }

  const JobConfig& config_;
  TrainOptions options_;
  std::string job_id_;
  TokenFile train_file_, val_file_;
  BatchSource batches_;
  torch::Device device_;
  Gpt model_{nullptr};
  std::unique_ptr<torch::optim::AdamW> optimizer_;
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

// The launch contract with the executors: one process per GPU, rank and world size from Slurm's
// SLURM_PROCID / SLURM_NTASKS (srun) or the local executor's equivalent.
int world_size() {
  const char* tasks = std::getenv("SLURM_NTASKS");
  return tasks ? std::max(1, std::atoi(tasks)) : 1;
}

int train_job(const JobConfig& config, const TrainOptions& options) {
  if (world_size() > 1)
    throw std::runtime_error("launched as " + std::to_string(world_size()) +
                             " processes (SLURM_NTASKS), but data-parallel training is not implemented yet; "
                             "use one GPU per job (slurm.gpus <= 1)");
  TrainOptions resolved = options;
  if (resolved.run_dir.empty()) resolved.run_dir = (std::filesystem::path("runs") / config.hash()).string();
  Trainer trainer(config, resolved);  // all input checks happen here, before the store is touched
  return trainer.run();
}

}  // namespace moelab
