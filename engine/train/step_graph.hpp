// Optional CUDA graph capture of a whole training step (`train.cuda_graph`): the forward pass, the
// backward pass, gradient clipping and the AdamW update are recorded once as one CUDA graph and then
// replayed, one launch per step instead of a few thousand. That pays where a step is many small
// kernels (small models, small batches, the router benchmarks); a large step keeps the GPU busy
// without it.
//
// A step can be captured when it never waits for the host and every tensor it reads keeps its
// address from step to step:
//  - its batches are copied into the same device tensors each step (the trainer's input slots);
//  - its learning rate is read from the device (FusedAdamW keeps it there on CUDA);
//  - gradients are left in place between steps: the captured backward writes them where the capture
//    put them, so nothing may set them to undefined after the capture (zero_grad inside the captured
//    step is harmless, as it only runs on the host while capturing);
//  - no data-parallel all-reduce (not capturable here) and no per-expert loop (it reads the expert
//    counts on the host): MoE layers must take the grouped kernel, i.e. bf16.
// The trainer checks these before it asks for a graph (check_capturable in trainer.cpp).
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <vector>

namespace moelab {

class StepGraph {
 public:
  // The step runs eagerly for the first `warm_up_steps` calls (lazy initialisation of cuBLAS, cuDNN,
  // the optimizer's state and the allocator must not happen while capturing), is captured on the
  // next, and is replayed from then on. While the object lives, its own stream is the current CUDA
  // stream of this thread, so that all of the job's work (batch copies, evaluation, checkpoints)
  // stays in one stream order with the replays. Throws where this build of LibTorch has no CUDA.
  StepGraph(torch::Device device, int warm_up_steps = 3);
  ~StepGraph();
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;

  // Runs one step: `step` itself while warming up or capturing, the graph afterwards. Returns the
  // step's outputs; once captured these are the same tensors every step, overwritten by each replay.
  std::vector<torch::Tensor> run(const std::function<std::vector<torch::Tensor>()>& step);

  bool captured() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace moelab
