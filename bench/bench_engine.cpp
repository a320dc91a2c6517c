// Engine benchmarks (Google Benchmark): every router's forward+backward side by side (KERN must cost
// what softmax costs), the MoE layer, and a whole training step of the demo configuration. Where a
// CUDA device is visible the routers and the paper's MoE layer also run there (names ending in
// /cuda), timed in real time with a device sync per iteration; the routers also as a replayed CUDA
// graph (/cuda_graph), which leaves out the host's kernel launches: what a router costs the GPU
// inside a captured training step. On CUDA also the loss, the experts' activation (our kernels
// against ATen's) and attention under each scaled-dot-product backend.
// Run: build/bench/bench_engine [--benchmark_filter=Router]
#include <benchmark/benchmark.h>

#include <optional>

#include "engine/config/job_config.hpp"
#include "engine/config/router_registry.hpp"
#include "engine/model/cross_entropy.hpp"
#include "engine/model/gated_gelu.hpp"
#include "engine/model/gpt.hpp"
#include "engine/train/autocast.hpp"
#include "engine/train/heap.hpp"
#include "engine/train/optimizer.hpp"
#include "engine/train/step_graph.hpp"

using namespace moelab;

namespace {

// The paper's layer shape: 4096 tokens, d 768, 64 experts, top-8, size 384.
ModelConfig paper_layer(const std::string& router) {
  ModelConfig m;
  m.router = router;
  resolve_router_name(m);  // "kern_after_topk": KERN with its option
  return m;
}

// Waits for the device's queued kernels, so that an iteration's time covers its GPU work.
void finish(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

// CPU: 4096 tokens. CUDA: 8192 tokens (one micro-batch of 8 x 1024 of the 125M model), router math
// in fp32 under bf16 autocast as in training. Gradients are reset each iteration, as a training
// step does (and a captured one must).
void RouterForwardBackward(benchmark::State& state, const std::string& router, torch::Device device, bool captured) {
  torch::manual_seed(0);
  auto config = paper_layer(router);
  Router r(config, 0);
  r->to(device);
  auto x = torch::randn({device.is_cuda() ? 8192 : 4096, config.d_model}, torch::TensorOptions(device).requires_grad(true));
  auto step = [&] {
    r->zero_grad();
    x.mutable_grad() = torch::Tensor();
    AutocastScope autocast(device, "bf16");
    auto routing = r(x);
    auto loss = routing.gate.sum() + routing.aux_loss;
    if (loss.requires_grad()) loss.backward();  // the parameter-free kmeans router has no backward
    return std::vector<torch::Tensor>{routing.gate};
  };
  std::optional<StepGraph> graph;
  if (captured) {
    graph.emplace(device, /*warm_up_steps=*/2);
    while (!graph->captured()) graph->run(step);
  }
  for (auto _ : state) {
    auto outputs = graph ? graph->run(step) : step();
    benchmark::DoNotOptimize(outputs[0].data_ptr());
    finish(device);
  }
  state.SetItemsProcessed(state.iterations() * x.size(0));
}

// The paper's whole MoE layer (router, dispatch, 64 experts of 384, combine) on the GPU in bf16,
// with each expert kernel: the grouped CUTLASS kernel against one matmul per expert.
void MoeLayerForwardBackwardCuda(benchmark::State& state, ExpertKernel kernel) {
  torch::manual_seed(0);
  const torch::Device gpu(torch::kCUDA);
  MoeLayer layer(paper_layer("kern"), 0);
  layer->to(gpu);
  auto x = torch::randn({8192, 768}, torch::TensorOptions(gpu).requires_grad(true));
  AutocastScope autocast(gpu, "bf16");
  for (auto _ : state) {
    auto routing = layer->router(x);
    layer->experts->forward_with_kernel(x, routing.expert_index, routing.gate, kernel).sum().backward();
    benchmark::DoNotOptimize(x.grad().data_ptr());
    finish(gpu);
  }
  state.SetItemsProcessed(state.iterations() * x.size(0));
}

// The 125M model's loss, forward and backward, over one micro-batch of bf16 logits (16 x 1024 tokens,
// GPT-2's vocabulary padded to 50,304 with -inf logits): the engine's (the fused kernels where built)
// against ATen's cross-entropy of the logits cast to fp32.
void CrossEntropyForwardBackwardCuda(benchmark::State& state, bool engine) {
  torch::manual_seed(0);
  const torch::Device gpu(torch::kCUDA);
  const int64_t rows = 16 * 1024, vocab = 50257, padded = 50304;
  auto logits = torch::randn({rows, padded}, torch::TensorOptions(gpu).dtype(torch::kBFloat16));
  logits.narrow(1, vocab, padded - vocab).fill_(-INFINITY);
  logits.requires_grad_(true);
  auto targets = torch::randint(vocab, {rows}, torch::TensorOptions(gpu).dtype(torch::kLong));
  if (engine) state.SetLabel(fused_cross_entropy_applies(logits) ? "fused kernels" : "ATen (no fused kernels built)");
  for (auto _ : state) {
    logits.mutable_grad() = torch::Tensor();
    auto loss = engine ? fp32_cross_entropy(logits, targets) : torch::cross_entropy_loss(logits.to(torch::kFloat), targets);
    loss.backward();
    benchmark::DoNotOptimize(logits.grad().data_ptr());
    finish(gpu);
  }
  state.SetItemsProcessed(state.iterations() * rows);
}

// The experts' activation of the 125M model, forward and backward, over one micro-batch's slot rows
// (16 x 1024 tokens x top-8, 384 hidden units, bf16, fp32 gates): the engine's (the fused kernels
// where built) against ATen's GELU and product.
void GatedGeluForwardBackwardCuda(benchmark::State& state, bool engine) {
  torch::manual_seed(0);
  const torch::Device gpu(torch::kCUDA);
  const int64_t rows = 16 * 1024 * 8, width = 384;
  auto hidden = torch::randn({rows, width}, torch::TensorOptions(gpu).dtype(torch::kBFloat16)).requires_grad_(true);
  auto gate = torch::rand({rows}, gpu).requires_grad_(true);
  auto upstream = torch::randn({rows, width}, torch::TensorOptions(gpu).dtype(torch::kBFloat16));
  if (engine) state.SetLabel(fused_gated_gelu_applies(hidden, gate) ? "fused kernels" : "ATen (no fused kernels built)");
  for (auto _ : state) {
    hidden.mutable_grad() = torch::Tensor(), gate.mutable_grad() = torch::Tensor();
    auto out = engine ? gated_gelu(hidden, gate) : torch::gelu(hidden) * gate.to(torch::kBFloat16).unsqueeze(1);
    out.backward(upstream);
    benchmark::DoNotOptimize(hidden.grad().data_ptr());
    finish(gpu);
  }
  state.SetItemsProcessed(state.iterations() * rows);
}

// The 125M model's causal attention, forward and backward, over one micro-batch (16 x 1024 tokens,
// 12 heads of 64, bf16, q/k/v laid out as the engine unbinds them) with one scaled-dot-product
// backend allowed at a time: which this GPU runs fastest ("default" is PyTorch's own choice, the
// engine's). A backend that cannot take these inputs is reported as an error.
void AttentionForwardBackwardCuda(benchmark::State& state, const std::string& backend) {
  auto& context = at::globalContext();
  const bool cudnn = context.userEnabledCuDNNSDP(), flash = context.userEnabledFlashSDP(),
             efficient = context.userEnabledMemEfficientSDP(), math = context.userEnabledMathSDP();
  if (backend != "default") {
    context.setSDPUseCuDNN(backend == "cudnn"), context.setSDPUseFlash(backend == "flash");
    context.setSDPUseMemEfficient(backend == "efficient"), context.setSDPUseMath(false);
  }
  torch::manual_seed(0);
  const torch::Device gpu(torch::kCUDA);
  const int64_t B = 16, T = 1024, H = 12, hd = 64;
  auto qkv = torch::randn({B, T, 3, H, hd}, torch::TensorOptions(gpu).dtype(torch::kBFloat16)).requires_grad_(true);
  auto upstream = torch::randn({B, H, T, hd}, torch::TensorOptions(gpu).dtype(torch::kBFloat16));
  try {
    for (auto _ : state) {
      qkv.mutable_grad() = torch::Tensor();
      auto parts = qkv.unbind(2);
      auto y = at::scaled_dot_product_attention(parts[0].transpose(1, 2), parts[1].transpose(1, 2),
                                                parts[2].transpose(1, 2), {}, 0.0, /*is_causal=*/true);
      y.backward(upstream);
      finish(gpu);
    }
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
  context.setSDPUseCuDNN(cudnn), context.setSDPUseFlash(flash);
  context.setSDPUseMemEfficient(efficient), context.setSDPUseMath(math);
  state.SetItemsProcessed(state.iterations() * B * T);
}

// A CUDA benchmark: milliseconds of real time, each iteration ending with a device sync.
template <class... Args>
void register_cuda(const std::string& name, Args&&... args) {
  benchmark::RegisterBenchmark(name.c_str(), std::forward<Args>(args)...)->Unit(benchmark::kMillisecond)->UseRealTime();
}

void register_cuda_benchmarks() {
  for (bool captured : {false, true})
    for (std::string router : {"softmax", "kern", "kern_after_topk", "sigmoid", "tanh", "kmeans"})
      register_cuda("RouterForwardBackward/" + router + (captured ? "/cuda_graph" : "/cuda"), RouterForwardBackward, router,
                    torch::Device(torch::kCUDA), captured);
  for (auto [name, kernel] : {std::pair{"grouped_mm", ExpertKernel::GroupedMm}, std::pair{"loop", ExpertKernel::PerExpertLoop}})
    register_cuda(std::string("MoeLayerForwardBackward/") + name + "/cuda", MoeLayerForwardBackwardCuda, kernel);
  for (bool engine : {false, true})
    register_cuda(engine ? "CrossEntropyForwardBackward/engine/cuda" : "CrossEntropyForwardBackward/aten_fp32/cuda",
                  CrossEntropyForwardBackwardCuda, engine);
  for (std::string backend : {"default", "cudnn", "flash", "efficient"})
    register_cuda("AttentionForwardBackward/" + backend + "/cuda", AttentionForwardBackwardCuda, backend);
  for (bool engine : {false, true})
    register_cuda(engine ? "GatedGeluForwardBackward/engine/cuda" : "GatedGeluForwardBackward/aten/cuda",
                  GatedGeluForwardBackwardCuda, engine);
}

void MoeLayerForwardBackward(benchmark::State& state) {
  torch::manual_seed(0);
  auto config = paper_layer("kern");
  config.d_model = 256, config.expert_size = 128;  // the paper's 64-8 routing at a CPU-sized width
  MoeLayer layer(config, 0);
  auto x = torch::randn({1, state.range(0), config.d_model}, torch::requires_grad());
  for (auto _ : state) {
    auto aux = torch::zeros({});
    layer(x, aux).sum().backward();
    benchmark::DoNotOptimize(x.grad().data_ptr());
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

// One optimizer step of sweeps/jobs/demo-tiny.json on random tokens; items are tokens.
void DemoTrainStep(benchmark::State& state, const std::string& router) {
  auto config = load_job_config(std::string(MOELAB_SOURCE_DIR) + "/sweeps/jobs/demo-tiny.json");
  config.model.router = router;
  torch::manual_seed(0);
  Gpt model(config.model, 0);
  FusedAdamW optimizer(model->parameters(), torch::optim::AdamWOptions(config.train.lr));
  auto tokens = torch::randint(config.model.vocab_size, {config.train.micro_batch, config.model.seq_len + 1});
  auto inputs = tokens.narrow(1, 0, config.model.seq_len), targets = tokens.narrow(1, 1, config.model.seq_len);
  for (auto _ : state) {
    optimizer.zero_grad();
    model->loss(inputs, targets).backward();
    optimizer.step();
  }
  state.SetItemsProcessed(state.iterations() * inputs.numel());
}

// The optimizer's part of a step, before and after the fused kernels: torch::optim::AdamW with
// clip_grad_norm_ (per-parameter ops, a host sync for the norm) against FusedAdamW with the foreach
// norm. The demo model, and a wider CPU-sized MoE with 64 experts per layer.
template <class Optimizer>
void OptimizerStep(benchmark::State& state, bool fused, int d_model) {
  auto config = load_job_config(std::string(MOELAB_SOURCE_DIR) + "/sweeps/jobs/demo-tiny.json");
  if (d_model != config.model.d_model) config.model.d_model = d_model, config.model.experts = 64, config.model.layers = 4;
  torch::manual_seed(0);
  Gpt model(config.model, 0);
  auto parameters = model->parameters();
  for (auto& p : parameters) p.mutable_grad() = torch::randn_like(p);
  Optimizer optimizer(parameters, torch::optim::AdamWOptions(config.train.lr).weight_decay(0.1));
  int64_t count = 0;
  for (auto& p : parameters) count += p.numel();
  for (auto _ : state) {
    if (fused)
      benchmark::DoNotOptimize(clip_gradient_norm(parameters, 1.0).data_ptr());
    else
      benchmark::DoNotOptimize(torch::nn::utils::clip_grad_norm_(parameters, 1.0));
    optimizer.step();
  }
  state.SetItemsProcessed(state.iterations() * count);  // parameters updated
}
void TorchAdamWStep(benchmark::State& state, int d_model) { OptimizerStep<torch::optim::AdamW>(state, false, d_model); }
void FusedAdamWStep(benchmark::State& state, int d_model) { OptimizerStep<FusedAdamW>(state, true, d_model); }

}  // namespace

BENCHMARK_CAPTURE(TorchAdamWStep, demo, 64)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(FusedAdamWStep, demo, 64)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(TorchAdamWStep, d256_e64, 256)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(FusedAdamWStep, d256_e64, 256)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(RouterForwardBackward, softmax, std::string("softmax"), torch::kCPU, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(RouterForwardBackward, kern, std::string("kern"), torch::kCPU, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(RouterForwardBackward, kern_after_topk, std::string("kern_after_topk"), torch::kCPU, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(RouterForwardBackward, sigmoid, std::string("sigmoid"), torch::kCPU, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(RouterForwardBackward, tanh, std::string("tanh"), torch::kCPU, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(RouterForwardBackward, kmeans, std::string("kmeans"), torch::kCPU, false)->Unit(benchmark::kMillisecond);
BENCHMARK(MoeLayerForwardBackward)->Arg(1024)->Arg(4096)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(DemoTrainStep, kern, std::string("kern"))->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(DemoTrainStep, softmax, std::string("softmax"))->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(DemoTrainStep, dense, std::string("dense"))->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) {
  if (torch::cuda::is_available()) register_cuda_benchmarks();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
