#include "engine/train/data_parallel.hpp"

#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <cstdlib>
#include <optional>
#include <stdexcept>

namespace moelab {
namespace {

// An environment variable as an integer; nullopt when unset, an error naming it when not a number.
std::optional<int64_t> integer_variable(const char* name) {
  const char* text = std::getenv(name);
  if (!text || !*text) return std::nullopt;
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  if (*end != '\0') throw std::runtime_error(std::string(name) + "=" + text + ": expected an integer");
  return value;
}

// The first of `names` that is set.
std::optional<int64_t> first_set(std::initializer_list<const char*> names) {
  for (const char* name : names)
    if (auto value = integer_variable(name)) return value;
  return std::nullopt;
}

c10::intrusive_ptr<c10d::Backend> make_backend(const c10::intrusive_ptr<c10d::Store>& store, const LaunchRank& launch,
                                               torch::Device device, std::chrono::milliseconds timeout) {
  if (device.is_cuda()) {
#ifdef USE_C10D_NCCL
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = timeout;
    return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, launch.rank, launch.world_size, options);
#else
    throw std::runtime_error("data-parallel training on CUDA needs NCCL, and this build of moelab has none "
                             "(nccl.h was not found when it was configured)");
#endif
  }
#ifdef USE_C10D_GLOO
  auto options = c10d::ProcessGroupGloo::Options::create_default(timeout);
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, launch.rank, launch.world_size, options);
#else
  throw std::runtime_error("data-parallel training on the CPU needs Gloo, and this build of moelab has none "
                           "(install libgloo-dev and configure again)");
#endif
}

}  // namespace

LaunchRank launch_rank_from_environment() {
  const bool moelab_contract = std::getenv("MOELAB_WORLD_SIZE") != nullptr;
  const char* world_name = moelab_contract ? "MOELAB_WORLD_SIZE" : "SLURM_NTASKS";
  const char* rank_name = moelab_contract ? "MOELAB_RANK" : "SLURM_PROCID";
  LaunchRank launch;
  launch.world_size = int(integer_variable(world_name).value_or(1));
  if (launch.world_size < 1) throw std::runtime_error(std::string(world_name) + ": the world size must be at least 1");
  launch.rank = int(integer_variable(rank_name).value_or(0));
  if (launch.rank < 0 || launch.rank >= launch.world_size)
    throw std::runtime_error(std::string(rank_name) + "=" + std::to_string(launch.rank) + ": outside [0, " +
                             world_name + "=" + std::to_string(launch.world_size) + ")");
  launch.local_rank = int(first_set({"MOELAB_LOCAL_RANK", "SLURM_LOCALID"}).value_or(launch.rank));
  return launch;
}

Rendezvous rendezvous_from_environment() {
  Rendezvous r;
  if (const char* addr = std::getenv("MASTER_ADDR"); addr && *addr) r.master_addr = addr;
  if (auto port = integer_variable("MASTER_PORT")) {
    if (*port < 1 || *port > 65535) throw std::runtime_error("MASTER_PORT=" + std::to_string(*port) + ": not a TCP port");
    r.master_port = int(*port);
  }
  if (auto seconds = integer_variable("MOELAB_DIST_TIMEOUT")) {
    if (*seconds < 1) throw std::runtime_error("MOELAB_DIST_TIMEOUT: expected seconds >= 1");
    r.timeout = std::chrono::seconds(*seconds);
  }
  if (auto kib = integer_variable("MOELAB_BUCKET_KB")) {
    if (*kib < 1) throw std::runtime_error("MOELAB_BUCKET_KB: expected KiB >= 1");
    r.bucket_bytes = *kib << 10;
  }
  return r;
}

DataParallel::DataParallel(const LaunchRank& launch, const Rendezvous& rendezvous, torch::Device device,
                           std::vector<torch::Tensor> parameters)
    : launch_(launch), timeout_(rendezvous.timeout), parameters_(std::move(parameters)) {
  c10d::TCPStoreOptions store_options;
  store_options.port = uint16_t(rendezvous.master_port);
  store_options.isServer = launch.rank == 0;
  store_options.numWorkers = launch.world_size;
  store_options.timeout = rendezvous.timeout;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(rendezvous.master_addr, store_options);
  } catch (const c10::Error& e) {
    throw std::runtime_error("rank " + std::to_string(launch.rank) + ": rendezvous at " + rendezvous.master_addr + ":" +
                             std::to_string(rendezvous.master_port) + " (MASTER_ADDR:MASTER_PORT) failed: " +
                             e.what_without_backtrace());
  }
  backend_ = make_backend(store, launch, device, rendezvous.timeout);
  assign_buckets(rendezvous.bucket_bytes);
  hook_gradient_accumulators();
}

DataParallel::~DataParallel() {
  // Hooks capture `this`: remove them with the accumulators' last owner gone, before members die.
  for (auto& accumulator : accumulators_) accumulator->post_hooks().clear();
}

// Buckets of about `bucket_bytes`, filled from the last parameter backwards: backward produces the
// gradients of the last layers first, so the first buckets complete (and go out) earliest.
void DataParallel::assign_buckets(int64_t bucket_bytes) {
  bucket_of_.resize(parameters_.size());
  arrived_.assign(parameters_.size(), false);
  int64_t bytes = bucket_bytes;
  for (size_t i = parameters_.size(); i-- > 0;) {
    const auto& p = parameters_[i];
    TORCH_CHECK(p.is_non_overlapping_and_dense(), "data parallel: parameter ", i, " is not one dense block of memory");
    const bool fits = !buckets_.empty() && bytes + int64_t(p.nbytes()) <= bucket_bytes &&
                      buckets_.back().flat.scalar_type() == p.scalar_type();
    if (!fits) {
      buckets_.emplace_back();
      buckets_.back().flat = torch::empty({0}, p.options());
      bytes = 0;
    }
    auto& bucket = buckets_.back();
    bucket.offsets.push_back(bucket.flat.numel());
    bucket.members.push_back(i);
    bucket.flat = torch::empty({bucket.flat.numel() + p.numel()}, p.options());
    bucket_of_[i] = buckets_.size() - 1;
    bytes += p.nbytes();
  }
}

// A parameter's part of a bucket in the parameter's own memory layout (w_in lies transposed), so that
// its gradient, which has that layout, goes in and its mean comes back out as straight copies. Every
// rank builds the same model or loads the same checkpoint, so the layouts agree between ranks.
static torch::Tensor part_of(const torch::Tensor& flat, int64_t offset, const torch::Tensor& p) {
  return flat.narrow(0, offset, p.numel()).as_strided(p.sizes(), p.strides());
}

void DataParallel::hook_gradient_accumulators() {
  for (size_t i = 0; i < parameters_.size(); ++i) {
    auto accumulator = torch::autograd::impl::grad_accumulator(parameters_[i]);
    TORCH_CHECK(accumulator, "data parallel: parameter ", i, " does not require a gradient");
    accumulator->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
        [this, i](const torch::autograd::variable_list& outputs, const torch::autograd::variable_list&) {
          on_gradient_ready(i);
          return outputs;
        }));
    accumulators_.push_back(std::move(accumulator));
  }
}

void DataParallel::sync_next_backward() {
  for (auto& bucket : buckets_) bucket.pending = bucket.members.size(), bucket.work.reset();
  arrived_.assign(parameters_.size(), false);
  next_bucket_ = 0;
  syncing_ = true;
}

// Runs in the backward pass once the parameter's gradient is fully accumulated.
void DataParallel::on_gradient_ready(size_t parameter) {
  if (!syncing_ || arrived_[parameter]) return;
  arrived_[parameter] = true;
  auto& bucket = buckets_[bucket_of_[parameter]];
  --bucket.pending;
  launch_ready_buckets();
}

// Collectives must be issued in the same order on every rank, and the order gradients arrive in
// can differ between ranks (data-dependent graphs): a complete bucket waits for the ones before it.
void DataParallel::launch_ready_buckets() {
  while (next_bucket_ < buckets_.size() && buckets_[next_bucket_].pending == 0) launch(buckets_[next_bucket_++]);
}

// Copies the members' gradients into the bucket (zeros where a parameter got none) and starts its
// all-reduce; the sum is divided by the world size when it has arrived.
void DataParallel::launch(Bucket& bucket) {
  torch::NoGradGuard no_grad;
  for (size_t j = 0; j < bucket.members.size(); ++j) {
    const auto& p = parameters_[bucket.members[j]];
    auto part = part_of(bucket.flat, bucket.offsets[j], p);
    if (p.grad().defined())
      part.copy_(p.grad());
    else
      part.zero_();
  }
  std::vector<at::Tensor> tensors{bucket.flat};
  bucket.work = backend_->allreduce(tensors);
}

void DataParallel::finish_gradient_sync() {
  TORCH_CHECK(syncing_, "finish_gradient_sync without sync_next_backward");
  syncing_ = false;
  for (auto& bucket : buckets_) bucket.pending = 0;  // gradients that never came are zeros
  launch_ready_buckets();
  torch::NoGradGuard no_grad;
  for (auto& bucket : buckets_) {
    wait(bucket.work, "gradient all-reduce");
    bucket.flat.div_(launch_.world_size);
    for (size_t j = 0; j < bucket.members.size(); ++j) {
      auto& p = parameters_[bucket.members[j]];
      auto mean = part_of(bucket.flat, bucket.offsets[j], p);
      if (p.grad().defined())
        p.mutable_grad().copy_(mean);
      else
        p.mutable_grad() = mean.clone();  // in the parameter's layout, as the fused optimizer wants
    }
  }
}

void DataParallel::wait(c10::intrusive_ptr<c10d::Work> work, const char* what) {
  try {
    work->wait(std::chrono::duration_cast<std::chrono::milliseconds>(timeout_));
  } catch (const std::exception& e) {
    throw std::runtime_error("rank " + std::to_string(rank()) + ": " + what + " failed (another rank gone?): " + e.what());
  }
}

torch::Tensor& DataParallel::sum(torch::Tensor& values) {
  std::vector<at::Tensor> tensors{values};
  wait(backend_->allreduce(tensors), "all-reduce");
  return values;
}

void DataParallel::average(std::vector<torch::Tensor> values) {
  for (auto& v : values) sum(v).div_(launch_.world_size);
}

void DataParallel::broadcast_from_rank0(std::vector<torch::Tensor> values) {
  torch::NoGradGuard no_grad;
  for (auto& v : values) {
    // NCCL takes contiguous tensors only; a weight stored transposed (w_in) travels as a copy.
    std::vector<at::Tensor> tensors{v.contiguous()};
    wait(backend_->broadcast(tensors), "broadcast");
    if (!tensors[0].is_same(v)) v.copy_(tensors[0]);
  }
}

}  // namespace moelab
