// Multi-process data parallel training over c10d: one process per GPU (NCCL) or several CPU
// processes (Gloo). Every rank holds a full replica, trains on its share of each step's global
// batch, and the gradients are averaged across ranks in buckets, each bucket's all-reduce launched
// from an autograd hook as soon as its last gradient is accumulated, so communication overlaps the
// rest of the backward pass. With identical gradients on every rank the optimizers stay in step.
//
// The launch contract (what `srun`, the sbatch script and tests set):
//   rank, world size   SLURM_PROCID / SLURM_NTASKS (srun), or MOELAB_RANK / MOELAB_WORLD_SIZE
//                      (these win when both are set); neither: one process, no process group
//   local rank (GPU)   SLURM_LOCALID or MOELAB_LOCAL_RANK (default: the rank)
//   rendezvous         a c10d TCPStore served by rank 0 at MASTER_ADDR:MASTER_PORT
//                      (defaults 127.0.0.1:29500)
//   timeout            MOELAB_DIST_TIMEOUT seconds for rendezvous and every collective (default 600)
//   bucket size        MOELAB_BUCKET_KB KiB of gradients per all-reduce (default 25600, as DDP)
//   Gloo's interface   GLOO_SOCKET_IFNAME (default: the address this host's name resolves to)
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/torch.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace moelab {

struct LaunchRank {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;  // which of this node's GPUs the process uses
  bool distributed() const { return world_size > 1; }
};

// Reads the launch contract above; throws std::runtime_error naming the variable when it is not an
// integer or the rank is outside [0, world size).
LaunchRank launch_rank_from_environment();

struct Rendezvous {
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::chrono::seconds timeout{600};
  int64_t bucket_bytes = int64_t(25) << 20;
};

Rendezvous rendezvous_from_environment();

// The process group and the bucketed gradient all-reduce of one training job.
class DataParallel {
 public:
  // Joins the group (blocks until every rank has arrived) and hooks every parameter's gradient
  // accumulator. Parameters must be identical on every rank and stay in this order.
  DataParallel(const LaunchRank& launch, const Rendezvous& rendezvous, torch::Device device,
               std::vector<torch::Tensor> parameters);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  int rank() const { return launch_.rank; }
  int world_size() const { return launch_.world_size; }

  // Call before the last backward pass of a step (earlier micro-batches only accumulate locally):
  // its gradient hooks launch each bucket's all-reduce as soon as the bucket is complete.
  void sync_next_backward();
  // After that backward: launches what is left, waits, and leaves every parameter's gradient equal
  // to the mean over ranks of the ranks' gradients (undefined gradients count as zero).
  void finish_gradient_sync();

  // Blocking element-wise sum across ranks, in place; returns `values`.
  torch::Tensor& sum(torch::Tensor& values);
  // Blocking element-wise mean across ranks, in place.
  void average(std::vector<torch::Tensor> values);
  // Rank 0's values to every rank, in place.
  void broadcast_from_rank0(std::vector<torch::Tensor> values);

 private:
  struct Bucket {
    std::vector<size_t> members;  // indices into parameters_, in the order their gradients usually arrive
    std::vector<int64_t> offsets; // where each member's gradient lives in `flat`
    torch::Tensor flat;
    size_t pending = 0;           // members whose gradient has not arrived in this backward
    c10::intrusive_ptr<c10d::Work> work;
  };

  void assign_buckets(int64_t bucket_bytes);
  void hook_gradient_accumulators();
  void on_gradient_ready(size_t parameter);
  void launch_ready_buckets();
  void launch(Bucket& bucket);
  void wait(c10::intrusive_ptr<c10d::Work> work, const char* what);

  LaunchRank launch_;
  std::chrono::seconds timeout_;
  c10::intrusive_ptr<c10d::Backend> backend_;
  std::vector<torch::Tensor> parameters_;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;  // kept alive: they hold our hooks
  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_;  // parameter index -> bucket index
  std::vector<bool> arrived_;      // parameter index -> its gradient arrived in this backward
  size_t next_bucket_ = 0;         // buckets launch strictly in index order, the same on every rank
  bool syncing_ = false;
};

}  // namespace moelab
