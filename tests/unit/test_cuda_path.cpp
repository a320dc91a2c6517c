// The CUDA path against the CPU's fp32 results and ATen's kernels: the grouped bf16 expert kernel
// (at::_grouped_mm with device-side offsets), routers kept in fp32 under autocast, a whole model's
// loss on the GPU in fp32 and bf16, training in bf16 and in fp16 with loss scaling, moelab's own
// kernels (engine/kernels) and their start-up self-checks, and the captured training step
// (train.cuda_graph). Every test is skipped
// where no CUDA device is visible (CI has none); scripts/gpu_machine.sh runs them on a GPU machine.
#include <gtest/gtest.h>

#include <c10/cuda/CUDAFunctions.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>

#include "db/store.hpp"
#include "engine/data/token_file.hpp"
#include "engine/kernels/switch.hpp"
#include "engine/model/cross_entropy.hpp"
#include "engine/model/gated_gelu.hpp"
#include "engine/model/gpt.hpp"
#include "engine/model/kern_gate.hpp"
#include "engine/model/own_kernels.hpp"
#include "engine/model/slot_dispatch.hpp"
#include "engine/train/autocast.hpp"
#include "engine/train/kernel_self_check.hpp"
#include "engine/train/optimizer.hpp"
#include "engine/train/step_graph.hpp"
#include "engine/train/trainer.hpp"
#include "kern_gate_cases.hpp"
#include "tiny_job.hpp"

using namespace moelab;

namespace {

class Cuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device visible";
  }
  const torch::Device gpu{torch::kCUDA, 0};
};

ModelConfig small_moe(const std::string& router, int experts, int top_k, int d_model, int expert_size) {
  ModelConfig m;
  m.vocab_size = 256, m.seq_len = 64, m.layers = 2, m.d_model = d_model, m.heads = 4;
  m.router = router, m.experts = experts, m.top_k = top_k, m.expert_size = expert_size;
  return m;
}

// GPT-2's 50,257 tokens are not a multiple of 64, so CUDA pads the output projection; 257 does the same.
ModelConfig unaligned_vocabulary_moe(const std::string& router) {
  auto config = small_moe(router, 8, 2, 64, 64);
  config.vocab_size = 257;
  return config;
}

struct TokenBatch {
  torch::Tensor inputs, targets;
};

// Random token sequences of the model's length, each target the next input.
TokenBatch random_batch(const ModelConfig& m, int sequences) {
  auto tokens = torch::randint(m.vocab_size, {sequences, m.seq_len + 1});
  return {tokens.narrow(1, 0, m.seq_len), tokens.narrow(1, 1, m.seq_len)};
}

// One bf16 training step as the trainer takes it: forward under autocast, backward, foreach
// clipping, fused AdamW. Returns the loss and the gradient norm, on the device.
std::vector<torch::Tensor> bf16_training_step(Gpt& model, FusedAdamW& optimizer, const torch::Tensor& inputs,
                                              const torch::Tensor& targets) {
  optimizer.zero_grad();
  torch::Tensor loss;
  {
    AutocastScope bf16(inputs.device(), "bf16");
    loss = model->loss(inputs, targets);
  }
  loss.backward();
  auto norm = clip_gradient_norm(model->parameters(), 1.0);
  optimizer.step();
  return {loss.detach(), norm};
}

// Experts' weights are initialised by the model (GptImpl::initialise_weights), not by the layer.
MoeLayer layer_with_random_experts(const ModelConfig& m) {
  MoeLayer layer(m, 1);
  torch::NoGradGuard no_grad;
  for (auto& p : layer->experts->parameters()) torch::nn::init::normal_(p, 0.0, 0.2);
  return layer;
}

}  // namespace

// The bf16 grouped kernel computes what the fp32 per-expert loop computes, forward and backward (the
// input, both weights and the gates), to bf16 accuracy; d 20 / hidden 12 exercises the padding to
// multiples of 8.
TEST_F(Cuda, GroupedMmInBf16MatchesTheFp32Loop) {
  for (auto [experts, top_k, d_model, expert_size] : {std::tuple{16, 4, 64, 48}, std::tuple{6, 2, 20, 12}}) {
    torch::manual_seed(experts);
    auto layer = layer_with_random_experts(small_moe("softmax", experts, top_k, d_model, expert_size));
    layer->to(gpu);
    auto x = torch::randn({300, d_model}, torch::TensorOptions(gpu).requires_grad(true));
    auto routing = layer->router(x);
    auto index = routing.expert_index.detach(), gate = routing.gate.detach().requires_grad_(true);
    auto inputs = std::vector<torch::Tensor>{x, layer->experts->w_in, layer->experts->w_out, gate};

    torch::Tensor fast;
    {
      AutocastScope bf16(gpu, "bf16");
      ASSERT_EQ(expert_kernel_for(x), ExpertKernel::GroupedMm);
      fast = layer->experts(x, index, gate);
    }
    auto upstream = torch::randn_like(fast, torch::kFloat);
    auto fast_grads = torch::autograd::grad({(fast.to(torch::kFloat) * upstream).sum()}, inputs);
    auto slow = layer->experts->forward_with_kernel(x, index, gate, ExpertKernel::PerExpertLoop);
    auto slow_grads = torch::autograd::grad({(slow * upstream).sum()}, inputs);

    EXPECT_LT(relative_error(fast, slow), 1e-2) << "d " << d_model;
    for (size_t i = 0; i < inputs.size(); ++i)
      EXPECT_LT(relative_error(fast_grads[i], slow_grads[i]), 2e-2) << "d " << d_model << ", gradient " << i;
  }
}

// The fp32 loop on the GPU equals the CPU's (which tests/unit/test_moe.cpp checks against a naive loop).
TEST_F(Cuda, PerExpertLoopMatchesTheCpu) {
  torch::manual_seed(3);
  auto layer = layer_with_random_experts(small_moe("kern", 8, 2, 32, 32));
  auto x = torch::randn({200, 32});
  auto routing = layer->router(x);
  auto on_cpu = layer->experts(x, routing.expert_index, routing.gate);
  layer->to(gpu);
  auto on_gpu = layer->experts(x.to(gpu), routing.expert_index.to(gpu), routing.gate.to(gpu));
  EXPECT_LT(relative_error(on_gpu, on_cpu), 1e-5);
}

// Routers compute in fp32 under bf16 autocast and choose the experts the CPU chooses. KERN's ReLU
// leaves tokens with fewer than k positive gates; which zero-gate experts fill their top-k is a tie
// that CPU and GPU break differently, so indices are compared where the gate is positive.
TEST_F(Cuda, RoutersStayFp32UnderAutocast) {
  for (std::string router : {"softmax", "sigmoid", "tanh", "kern"}) {
    torch::manual_seed(7);
    Router r(small_moe(router, 16, 4, 64, 64), 0);
    auto x = torch::randn({512, 64});
    auto want = r(x);
    r->to(gpu);
    AutocastScope bf16(gpu, "bf16");
    auto got = r(x.to(gpu));
    EXPECT_EQ(got.gate.scalar_type(), torch::kFloat) << router;
    auto same_expert = got.expert_index.cpu() == want.expert_index;
    EXPECT_TRUE((same_expert | (want.gate == 0)).all().item<bool>()) << router;
    if (router != "kern") {
      EXPECT_TRUE(same_expert.all().item<bool>()) << router;
    }
    // cuBLAS and the CPU sum the fp32 scores in different orders (up to 2e-5 apart); bf16 would be ~1e-2 off.
    EXPECT_LT(relative_error(got.gate, want.gate), 1e-4) << router;
  }
}

// A vocabulary that is not a multiple of 64 (GPT-2's 50,257; here 257) is padded for the output
// projection on CUDA: the logits keep its columns, and loss and gradients equal the CPU's, which
// projects without padding.
TEST_F(Cuda, UnalignedVocabularyGivesTheCpuLossAndGradients) {
  auto config = unaligned_vocabulary_moe("softmax");
  torch::manual_seed(17);
  auto [inputs, targets] = random_batch(config, 2);
  Gpt cpu_model(config, 5), gpu_model(config, 5);
  gpu_model->to(gpu);
  auto cpu_loss = cpu_model->loss(inputs, targets);
  auto gpu_loss = gpu_model->loss(inputs.to(gpu), targets.to(gpu));
  cpu_loss.backward();
  gpu_loss.backward();
  auto logits = gpu_model->forward(inputs.to(gpu)).logits;
  EXPECT_EQ(logits.size(-1), 257);
  EXPECT_TRUE(torch::isfinite(logits).all().item<bool>()) << "a padded -inf logit was returned";
  EXPECT_NEAR(gpu_loss.item<double>(), cpu_loss.item<double>(), 1e-5 * cpu_loss.item<double>());
  EXPECT_LT(relative_error(gpu_model->token_embedding->weight.grad(), cpu_model->token_embedding->weight.grad()), 1e-4);
  EXPECT_LT(relative_error(gpu_model->ln_final->weight.grad(), cpu_model->ln_final->weight.grad()), 1e-4);
}

// Under fp16 autocast the loss takes the fp16 logits into an fp32 log-softmax directly, and bf16
// logits go through the fused kernels (no fp32 copy either way): in both precisions it equals the
// cross-entropy of the same logits cast to fp32 first, and so does the gradient that reaches the
// token embeddings (padded vocabulary of 257, as GPT-2's is).
TEST_F(Cuda, HalfPrecisionLogitsGiveTheFp32CrossEntropy) {
  auto config = unaligned_vocabulary_moe("kern");
  torch::manual_seed(19);
  auto batch = random_batch(config, 2);
  auto inputs = batch.inputs.to(gpu), targets = batch.targets.to(gpu);
  for (std::string precision : {"bf16", "fp16"}) {
    Gpt model(config, 5), reference(config, 5);
    model->to(gpu), reference->to(gpu);
    torch::Tensor loss, cast_first;
    {
      AutocastScope autocast(gpu, precision);
      loss = model->loss(inputs, targets);
      auto out = reference->forward(inputs);
      auto logits = out.logits.reshape({-1, config.vocab_size});
      EXPECT_NE(logits.scalar_type(), torch::kFloat) << precision << ": the logits should be half precision";
      cast_first = torch::cross_entropy_loss(logits.to(torch::kFloat), targets.reshape(-1)) + out.aux_loss;
    }
    EXPECT_EQ(loss.scalar_type(), torch::kFloat) << precision;
    EXPECT_NEAR(loss.item<double>(), cast_first.item<double>(), 1e-5 * cast_first.item<double>()) << precision;
    loss.backward();
    cast_first.backward();
    EXPECT_LT(relative_error(model->token_embedding->weight.grad(), reference->token_embedding->weight.grad()), 1e-3)
        << precision;
  }
}

// One bf16 training step as the trainer takes it (bf16_training_step) never waits for the host:
// CUDA's sync debug mode makes every synchronising call (an .item(), a pageable copy,
// torch::bincount's min/max) throw. The first step runs before it, since lazy initialisation may
// synchronise once. A vocabulary of 257 takes the padded output projection, as GPT-2's does.
TEST_F(Cuda, Bf16TrainingStepNeverWaitsForTheHost) {
  if (!grouped_mm_stays_on_device(gpu)) GTEST_SKIP() << "ATen's grouped matmul reads its offsets on the host here";
  auto config = unaligned_vocabulary_moe("kern");
  torch::manual_seed(13);
  auto batch = random_batch(config, 4);
  auto inputs = batch.inputs.to(gpu), targets = batch.targets.to(gpu);
  Gpt model(config, 5);
  model->to(gpu);
  FusedAdamW optimizer(model->parameters(), torch::optim::AdamWOptions(3e-3));
  auto step = [&] { bf16_training_step(model, optimizer, inputs, targets); };
  step();
  auto& sync_debug = c10::cuda::warning_state();
  sync_debug.set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR);
  std::string error;
  try {
    step();
  } catch (const c10::Error& e) {
    error = e.what();
  }
  bool item_caught = false;  // the detector itself works: an .item() does throw
  try {
    torch::ones({}, gpu).item<float>();
  } catch (const c10::Error&) {
    item_caught = true;
  }
  sync_debug.set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
  EXPECT_EQ(error, "");
  EXPECT_TRUE(item_caught) << "sync debug mode let an .item() through, so the step's check proves nothing";
}

// A whole model: the GPU's fp32 loss is the CPU's, bf16 autocast stays within bf16 accuracy of it,
// and training on one fixed batch drives the loss down, in bf16 and in fp16 with loss scaling.
TEST_F(Cuda, ModelLossAndTrainingInEveryPrecision) {
  auto config = small_moe("kern", 8, 2, 64, 64);
  torch::manual_seed(11);
  auto [inputs, targets] = random_batch(config, 4);
  Gpt cpu_model(config, 5);
  const double cpu_loss = cpu_model->loss(inputs, targets).item<double>();

  for (std::string precision : {"fp32", "bf16", "fp16"}) {
    Gpt model(config, 5);
    model->to(gpu);
    auto x = inputs.to(gpu), y = targets.to(gpu);
    FusedAdamW optimizer(model->parameters(), torch::optim::AdamWOptions(3e-3).weight_decay(0.0));
    if (precision == "fp16") optimizer.enable_loss_scaling(gpu);
    std::vector<double> losses;
    for (int step = 0; step < 40; ++step) {
      optimizer.zero_grad();
      torch::Tensor loss;
      {
        AutocastScope autocast(gpu, precision);
        loss = model->loss(x, y);
      }
      optimizer.scale_loss(loss).backward();
      optimizer.unscale_gradients();
      clip_gradient_norm(model->parameters(), 1.0);
      optimizer.step();
      losses.push_back(loss.item<double>());
    }
    const double tolerance = precision == "fp32" ? 1e-5 : 2e-2;
    EXPECT_NEAR(losses.front(), cpu_loss, tolerance * cpu_loss) << precision;
    EXPECT_LT(losses.back(), 0.5 * losses.front()) << precision << ": one batch is memorised";
    for (double l : losses) ASSERT_TRUE(std::isfinite(l)) << precision;
    if (precision == "fp16") {
      EXPECT_GT(optimizer.loss_scale(), 1.0);
    }
  }
}

// On CUDA the fused kernel reads the learning rate from the device: a schedule set through
// set_learning_rate, and a rate changed through the group's options, both reach it, as they reach
// torch::optim::AdamW on the CPU.
TEST_F(Cuda, FusedAdamWFollowsALearningRateSchedule) {
  torch::manual_seed(3);
  auto start = torch::randn({64, 32});
  auto reference = start.clone().requires_grad_(true), on_gpu = start.to(gpu).requires_grad_(true);
  const auto options = torch::optim::AdamWOptions(1e-2).weight_decay(0.1);
  torch::optim::AdamW cpu_optimizer({reference}, options);
  FusedAdamW gpu_optimizer({on_gpu}, options);
  auto set_in_options = [](torch::optim::Optimizer& o, double lr) {
    static_cast<torch::optim::AdamWOptions&>(o.param_groups()[0].options()).lr(lr);
  };
  for (int step = 1; step <= 20; ++step) {
    const double lr = 1e-2 / step;
    set_in_options(cpu_optimizer, lr);
    step % 2 ? gpu_optimizer.set_learning_rate(lr) : set_in_options(gpu_optimizer, lr);
    auto gradient = torch::randn({64, 32});
    reference.mutable_grad() = gradient, on_gpu.mutable_grad() = gradient.to(gpu);
    cpu_optimizer.step(), gpu_optimizer.step();
  }
  EXPECT_LT(relative_error(on_gpu.detach(), reference.detach()), 1e-5);
}

// A captured step computes what the eager step computes: a model trained eagerly and a copy trained
// through StepGraph (two eager warm-up steps, the capture, then replays) on the same changing batches
// and a falling learning rate end with the same losses and weights, to bf16's run-to-run noise. A
// graph that kept the batch or the learning rate of its capture would drift far from the eager run.
TEST_F(Cuda, CapturedStepsTrainAsEagerStepsDo) {
  if (!grouped_mm_stays_on_device(gpu)) GTEST_SKIP() << "ATen's grouped matmul reads its offsets on the host here";
  auto config = unaligned_vocabulary_moe("kern");
  torch::manual_seed(17);
  std::vector<TokenBatch> batches;
  for (int s = 0; s < 8; ++s) batches.push_back(random_batch(config, 4));
  struct Run {
    std::vector<double> losses;
    torch::Tensor weights;
  };
  auto train = [&](bool captured) {
    Gpt model(config, 5);
    model->to(gpu);
    FusedAdamW optimizer(model->parameters(), torch::optim::AdamWOptions(3e-3));
    auto inputs = batches[0].inputs.to(gpu), targets = batches[0].targets.to(gpu);
    std::optional<StepGraph> graph;
    if (captured) graph.emplace(gpu, /*warm_up_steps=*/2);
    auto step = [&] { return bf16_training_step(model, optimizer, inputs, targets); };
    Run run;
    for (size_t s = 0; s < batches.size(); ++s) {
      optimizer.set_learning_rate(3e-3 / double(s + 1));
      inputs.copy_(batches[s].inputs), targets.copy_(batches[s].targets);
      auto outputs = graph ? graph->run(step) : step();
      run.losses.push_back(outputs[0].item<double>());
    }
    if (graph) {
      EXPECT_TRUE(graph->captured());
    }
    std::vector<torch::Tensor> flat;
    for (auto& p : model->parameters()) flat.push_back(p.detach().flatten().cpu());
    run.weights = torch::cat(flat);
    return run;
  };
  const auto eager = train(false), replayed = train(true);
  for (size_t s = 0; s < eager.losses.size(); ++s)
    EXPECT_NEAR(replayed.losses[s], eager.losses[s], 2e-3 * eager.losses[s]) << "step " << s;
  EXPECT_LT(relative_error(replayed.weights, eager.weights), 2e-3);
}

// The fused bf16 cross-entropy kernels give ATen's fp32 cross-entropy of the same logits
// (cross_entropy_disagreement) with GPT-2's padded vocabulary: 50,257 columns padded to 50,304.
TEST_F(Cuda, FusedCrossEntropyEqualsAtensInFp32) {
  auto logits = torch::empty({300, 50304}, torch::TensorOptions(gpu).dtype(torch::kBFloat16));
  ASSERT_TRUE(fused_cross_entropy_applies(logits));
  EXPECT_FALSE(fused_cross_entropy_applies(logits.narrow(1, 0, 50257).contiguous())) << "rows of 50,257 are not 16-byte";
  EXPECT_EQ(cross_entropy_disagreement(gpu, {.rows = 300, .vocab = 50257, .padded = 50304}, cross_entropy_by_kernel),
            std::nullopt);
}

// The fused KERN gate kernels give what ATen's composition gives on the CPU (kern_gate_cases.hpp);
// gamma's gradient, summed across blocks inside the kernel, is the same bit for bit when run again.
TEST_F(Cuda, FusedKernGateEqualsTheCpuComposition) {
  ASSERT_TRUE(fused_kern_gate_applies(torch::zeros({3, 5}, gpu), torch::ones({}, gpu)));
  moelab::testing::expect_kern_gate_equals_the_composition(gpu, kern_gate_by_kernel);
}

// moelab's row kernels move what ATen's index_select and embedding bag move (slot_rows_disagreement):
// bf16 rows as the grouped kernel has them (gathered and summed), and fp32 rows as the per-expert
// loop has them (gathered); 1001 tokens, 8 of 64 experts each.
TEST_F(Cuda, SlotRowKernelsEqualAtens) {
  for (auto dtype : {torch::kBFloat16, torch::kFloat})
    EXPECT_EQ(slot_rows_disagreement(gpu, {.tokens = 1001, .k = 8, .experts = 64, .width = 776}, dtype,
                                     slot_rows_by_kernel()),
              std::nullopt)
        << dtype;
}

// The fused gated-GELU kernels give the fp32 composition GELU(h) * gate of the same bf16 hidden
// units (gated_gelu_disagreement), over 1003 rows of 392; rows that are not 16-byte, and fp32 hidden
// units, take ATen's ops.
TEST_F(Cuda, FusedGatedGeluEqualsTheFp32Composition) {
  auto hidden = torch::zeros({1003, 392}, torch::TensorOptions(gpu).dtype(torch::kBFloat16));
  auto gate = torch::zeros({1003}, gpu);
  ASSERT_TRUE(fused_gated_gelu_applies(hidden, gate));
  EXPECT_FALSE(fused_gated_gelu_applies(hidden.narrow(1, 0, 390).contiguous(), gate)) << "rows of 390 are not 16-byte";
  EXPECT_FALSE(fused_gated_gelu_applies(hidden.to(torch::kFloat), gate)) << "fp32 takes ATen's ops";
  EXPECT_EQ(gated_gelu_disagreement(gpu, {.rows = 1003, .width = 392}, gated_gelu_by_kernel), std::nullopt);
}

// The start-up self-checks (kernel_self_check.hpp) pass for every kernel in each precision a run may
// have, and run as the trainer runs them they turn no kernel off. Prints the time they add to a bf16
// run's start (the first time in this process, which may have launched the kernels before, and again).
TEST_F(Cuda, OwnKernelsPassTheirSelfChecks) {
  ASSERT_TRUE(own_kernels_run_on(gpu));
  for (int time = 0; time < 2; ++time) {
    torch::cuda::synchronize();
    const auto start = std::chrono::steady_clock::now();
    for (const auto& k : check_own_kernels(gpu, torch::kBFloat16)) ADD_FAILURE() << k.message();
    std::printf("the self-checks of a bf16 run took %.1f ms\n",
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  for (auto kernel : kernels::kKernelNames)
    EXPECT_EQ(kernels::own_kernel_enabled(kernel), kernels::enabled_by_environment(kernel)) << kernel;
  for (auto precision : {"fp32", "fp16"})
    for (const auto& [kernel, check] : own_kernel_checks()) {
      if (kernels::enabled_by_environment(kernel)) {
        EXPECT_EQ(check(gpu, autocast_dtype(precision)), std::nullopt) << kernel << " in " << precision;
      }
    }
}

// `train.cuda_graph` through the trainer, in this process (the GPU machines run this binary alone):
// a tiny bf16 KERN model trained with its step captured (three eager warm-up steps, then replays;
// two micro-batches per step, evaluation and checkpoints in between) records the losses that eager
// training records, to bf16's run-to-run noise; its store says the capture happened at step 4.
TEST_F(Cuda, GraphTrainingRecordsTheEagerLosses) {
  if (!grouped_mm_stays_on_device(gpu)) GTEST_SKIP() << "ATen's grouped matmul reads its offsets on the host here";
  namespace fs = std::filesystem;
  const auto root = fs::temp_directory_path() / ("moelab_cuda_graph_" + std::to_string(getpid()));
  fs::create_directories(root);
  {
    std::mt19937 random(7);  // letters and spaces: enough text for the bytes tokenizer
    std::string text(200000, ' ');
    for (auto& c : text) c = random() % 6 == 0 ? ' ' : char('a' + random() % 26);
    std::ofstream(root / "text.txt") << text;
  }
  prepare_dataset({.corpus = (root / "text.txt").string(), .tokenizer = "bytes", .out_dir = (root / "data").string()});
  auto job = [&](bool captured) {
    return parse_job_config(moelab::testing::tiny_kern_job(
        root / "data", captured ? "graph" : "eager", 1,
        {{"steps", 12}, {"batch_size", 8}, {"micro_batch", 4}, {"lr", 3e-3}, {"warmup", 2}, {"min_lr", 3e-4},
         {"log_every", 1}, {"eval_every", 4}, {"eval_batches", 2}, {"checkpoint_every", 4}, {"precision", "bf16"},
         {"device", "cuda"}, {"cuda_graph", captured}}));
  };
  auto train = [&](bool captured) {  // returns the job's store
    TrainOptions options;
    options.db_path = (root / (captured ? "graph.db" : "eager.db")).string();
    options.run_dir = (root / (captured ? "graph" : "eager")).string();
    options.progress = false;
    EXPECT_EQ(train_job(job(captured), options), 0) << (captured ? "graph" : "eager");
    return options.db_path;
  };
  auto losses = [](const std::string& db, const std::string& split) {
    std::map<int64_t, double> out;
    for (auto& row : Store(db).query("SELECT step, loss FROM metrics WHERE split = '" + split + "'"))
      out[std::stoll(row[0])] = std::stod(row[1]);
    return out;
  };
  const auto eager_db = train(false), graph_db = train(true);
  const std::string captured = "SELECT count(*) FROM events WHERE message LIKE 'step 4 captured as a CUDA graph%'";
  EXPECT_EQ(Store(graph_db).query(captured)[0][0], "1");
  EXPECT_EQ(Store(eager_db).query(captured)[0][0], "0");
  for (std::string split : {"train", "val"}) {
    auto eager = losses(eager_db, split), replayed = losses(graph_db, split);
    ASSERT_EQ(replayed.size(), split == "train" ? 12u : 3u) << split;
    ASSERT_EQ(eager.size(), replayed.size()) << split;
    for (auto& [step, loss] : eager) EXPECT_NEAR(replayed.at(step), loss, 2e-3 * loss) << split << " step " << step;
  }
  fs::remove_all(root);
}
