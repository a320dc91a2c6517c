// Where a training step's time goes: the PyTorch (Kineto) profiler over a few steps, summed per GPU
// kernel on CUDA and per operator's self time on the CPU, as a table, a CSV and a Chrome trace.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

namespace moelab {

// One kernel (CUDA) or operator (CPU) name over the profiled steps.
struct ProfiledOp {
  std::string name;
  int64_t calls = 0;
  double total_ms = 0;  // GPU time of the kernel, or the operator's CPU time minus its children's
};

struct StepProfile {
  std::string device;      // "cuda" or "cpu": what `ops` and `busy_ms` measure
  int steps = 0;
  double wall_ms = 0;      // all profiled steps, until the device had finished them
  double busy_ms = 0;      // the sum over `ops`: time the device spent in kernels, or the host in operators
  std::vector<ProfiledOp> ops;  // most time first
  std::vector<ProfiledOp> by_operator;  // CUDA: the same GPU time under "caller > operator" that launched it

  double per_step(double ms) const { return ms / steps; }
};

// Records from construction until finish(); a step's host and device work both fall inside when
// the caller runs whole steps in between.
class StepProfiler {
 public:
  explicit StepProfiler(torch::Device device);
  StepProfiler(const StepProfiler&) = delete;
  StepProfiler& operator=(const StepProfiler&) = delete;
  ~StepProfiler();  // stops recording if finish() was never reached (an exception in a step)

  // Waits for the device, stops recording, writes the Chrome trace (chrome://tracing, Perfetto) to
  // `trace_path` and sums the events of the `steps` steps run since construction.
  StepProfile finish(int steps, const std::string& trace_path);

 private:
  torch::Device device_;
  std::chrono::steady_clock::time_point started_;
  bool recording_ = false;
};

// The `top` most expensive rows of each table with calls and milliseconds per step and their share
// of busy time, after a line with wall time, busy time and launches per step.
void print_step_profile(const StepProfile& profile, std::FILE* out, size_t top = 30);

// A profile's time per step by the kind of work: matmuls (dense, batched and grouped), attention, the
// optimizer (fused AdamW, and the foreach ops of the gradient norm and clipping), and the rest: the
// memory traffic around them (casts, gathers, elementwise ops, normalisation, the loss). On CUDA,
// kernels count as the operator that launched them; on the CPU, operators by their self time.
struct TimeByKind {
  double matmul_ms = 0, attention_ms = 0, optimizer_ms = 0, other_ms = 0;
};
TimeByKind time_by_kind(const StepProfile& profile);

// The kinds' times and shares; then, given the model's training FLOPs per step on this device
// (model_size's flops_per_token times the step's tokens), the rate over the busy time and the rate
// were the matmuls and attention all that took time: the most that speeding up everything else can
// give. On CUDA each also as a share of 989 TFLOP/s (H100/H200 dense bf16), the MFU they stand for.
void print_time_by_kind(const StepProfile& profile, double flops_per_step, std::FILE* out);

// Every row of `rows` (profile.ops or profile.by_operator): name, calls_per_step, ms_per_step, share_of_busy.
void write_step_profile_csv(const StepProfile& profile, const std::vector<ProfiledOp>& rows, const std::string& path);

}  // namespace moelab
