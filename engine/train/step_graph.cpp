#include "engine/train/step_graph.hpp"

#include <stdexcept>

#ifdef MOELAB_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace moelab {

#ifdef MOELAB_WITH_CUDA

namespace {

// Capture needs a stream other than the default one. The work queued so far (the weights' upload, a
// checkpoint's load) is finished first, since the new stream does not wait for it.
c10::cuda::CUDAStream idle_side_stream(torch::Device device) {
  c10::cuda::device_synchronize();
  return c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index());
}

}  // namespace

struct StepGraph::State {
  State(torch::Device device, int warm_up_steps)
      : stream(idle_side_stream(device)), current(stream), warm_up_left(warm_up_steps) {}

  c10::cuda::CUDAStream stream;
  c10::cuda::CUDAStreamGuard current;
  at::cuda::CUDAGraph graph;
  std::vector<torch::Tensor> outputs;
  int warm_up_left;
  bool captured = false;
};

StepGraph::StepGraph(torch::Device device, int warm_up_steps) {
  if (!device.is_cuda()) throw std::invalid_argument("StepGraph: CUDA graphs need a CUDA device, not " + device.str());
  state_ = std::make_unique<State>(device, warm_up_steps);
}

// What the default stream queues later must not overtake the job's last steps on this stream.
StepGraph::~StepGraph() {
  try {
    if (state_) state_->stream.synchronize();
  } catch (const std::exception&) {  // a failed step has reported the device's error already
  }
}

std::vector<torch::Tensor> StepGraph::run(const std::function<std::vector<torch::Tensor>()>& step) {
  auto& s = *state_;
  if (s.captured) {
    s.graph.replay();
    return s.outputs;
  }
  if (s.warm_up_left > 0) {
    --s.warm_up_left;
    return step();
  }
  s.stream.synchronize();
  s.graph.capture_begin();
  try {
    s.outputs = step();
    s.graph.capture_end();
  } catch (const std::exception& e) {
    // A synchronising call inside the step ends up here; the capture is abandoned, nothing ran.
    try {
      s.graph.capture_end();
    } catch (const std::exception&) {
    }
    throw std::runtime_error(std::string("train.cuda_graph: the training step could not be captured as a CUDA graph: ") +
                             e.what());
  }
  s.captured = true;
  s.graph.replay();  // capturing records the step without running it
  return s.outputs;
}

bool StepGraph::captured() const { return state_->captured; }

#else

struct StepGraph::State {};

StepGraph::StepGraph(torch::Device, int) {
  throw std::runtime_error("train.cuda_graph: this build of moelab links a LibTorch without CUDA");
}

StepGraph::~StepGraph() = default;

std::vector<torch::Tensor> StepGraph::run(const std::function<std::vector<torch::Tensor>()>& step) { return step(); }

bool StepGraph::captured() const { return false; }

#endif

}  // namespace moelab
