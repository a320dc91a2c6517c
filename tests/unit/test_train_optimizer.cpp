// The fused optimizer step against LibTorch's reference implementations: FusedAdamW must follow
// torch::optim::AdamW's update (decoupled weight decay, bias correction, per-group options), keep
// its state across save/load, skip overflowing fp16 steps under loss scaling, and the foreach
// gradient norm must clip as clip_grad_norm_ does.
#include <gtest/gtest.h>

#include <sstream>

#include "engine/train/optimizer.hpp"

namespace {

using moelab::FusedAdamW;

// Two parameter groups (with and without weight decay) of a few shapes, one of them laid out
// transposed in memory as the experts' w_in is, on fixed gradients.
struct Problem {
  std::vector<torch::Tensor> decayed, plain;
  explicit Problem(uint64_t seed) {
    torch::manual_seed(seed);
    decayed = {torch::randn({7, 5}), torch::randn({3, 4, 2}), torch::randn({6, 4}).t()};
    plain = {torch::randn({5}), torch::randn({})};
    for (auto* group : {&decayed, &plain})
      for (auto& p : *group) p.requires_grad_(true);
  }
  std::vector<torch::Tensor> all() const {
    auto out = decayed;
    out.insert(out.end(), plain.begin(), plain.end());
    return out;
  }
  // Gradients that change from step to step, the same for every optimizer under test.
  void set_gradients(int step) {
    auto generator = at::make_generator<at::CPUGeneratorImpl>(1000 + step);
    for (auto& p : all()) p.mutable_grad() = torch::empty_like(p).copy_(at::randn(p.sizes(), generator));
  }
};

template <class Optimizer>
std::unique_ptr<Optimizer> make(Problem& problem) {
  std::vector<torch::optim::OptimizerParamGroup> groups;
  auto options = [](double wd) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(1e-2).betas({0.9, 0.95}).weight_decay(wd).eps(1e-8));
  };
  groups.emplace_back(problem.decayed, options(0.1));
  groups.emplace_back(problem.plain, options(0.0));
  return std::make_unique<Optimizer>(groups, torch::optim::AdamWOptions(1e-2));
}

TEST(FusedAdamW, FollowsTorchAdamWOverManySteps) {
  Problem reference(0), fused(0);
  auto a = make<torch::optim::AdamW>(reference);
  auto b = make<FusedAdamW>(fused);
  for (int step = 1; step <= 50; ++step) {
    reference.set_gradients(step), fused.set_gradients(step);
    a->step(), b->step();
  }
  auto expected = reference.all(), actual = fused.all();
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_TRUE(torch::allclose(actual[i], expected[i], 1e-5, 1e-6)) << "parameter " << i;
    EXPECT_GT((actual[i] - Problem(0).all()[i]).abs().max().item<double>(), 1e-2) << "parameter " << i << " moved";
  }
}

// Saved after 10 steps and loaded into a fresh optimizer, the next 10 steps equal uninterrupted ones
// exactly: moments and step counts (bias correction) survive the round trip.
TEST(FusedAdamW, StateRoundTripsThroughSaveAndLoad) {
  Problem straight(0), resumed(0);
  auto a = make<FusedAdamW>(straight);
  auto b = make<FusedAdamW>(resumed);
  for (int step = 1; step <= 10; ++step) straight.set_gradients(step), a->step(), resumed.set_gradients(step), b->step();
  std::ostringstream bytes;
  {
    torch::serialize::OutputArchive archive;
    b->save(archive);
    archive.save_to(bytes);
  }
  auto c = make<FusedAdamW>(resumed);  // a new optimizer over the same parameters
  std::istringstream in(bytes.str());
  torch::serialize::InputArchive archive;
  archive.load_from(in);
  c->load(archive);
  for (int step = 11; step <= 20; ++step) straight.set_gradients(step), a->step(), resumed.set_gradients(step), c->step();
  for (size_t i = 0; i < straight.all().size(); ++i) EXPECT_TRUE(torch::equal(resumed.all()[i], straight.all()[i])) << i;
}

// A gradient laid out in memory unlike its parameter is refused, naming the strides, before anything
// moves: the CPU's fused kernel would pair the wrong elements without noticing.
TEST(FusedAdamW, GradientLaidOutUnlikeItsParameterIsRefused) {
  auto fine = torch::randn({5}).requires_grad_(true), p = torch::randn({6, 4}).t().requires_grad_(true);
  auto fine_before = fine.detach().clone(), before = p.detach().clone();
  // In groups of their own, so that checking group by group would already have moved `fine`.
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (const auto& t : {fine, p})
    groups.emplace_back(std::vector<torch::Tensor>{t}, std::make_unique<torch::optim::AdamWOptions>(0.1));
  FusedAdamW optimizer(groups, torch::optim::AdamWOptions(0.1));
  fine.mutable_grad() = torch::ones({5});
  p.mutable_grad() = torch::ones({4, 6});
  try {
    optimizer.step();
    ADD_FAILURE() << "a contiguous gradient of a transposed parameter was taken";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("strides [1, 4] has a gradient of strides [6, 1]"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(torch::equal(p.detach(), before));
  EXPECT_TRUE(torch::equal(fine.detach(), fine_before)) << "the parameter before the refused one moved";
  p.mutable_grad() = torch::ones_like(p);
  optimizer.step();
  EXPECT_FALSE(torch::equal(p.detach(), before));
  // The refused step did not count, for the parameter before the refused one either (a checkpoint
  // stores these counts, and a resumed run's bias correction starts from them).
  auto steps_of = [&](const torch::Tensor& t) {
    return static_cast<torch::optim::AdamWParamState&>(*optimizer.state().at(t.unsafeGetTensorImpl())).step();
  };
  EXPECT_EQ(steps_of(fine), 1);
  EXPECT_EQ(steps_of(p), 1);
}

// Gradients of a scaled loss, unscaled, step exactly as unscaled ones (the scale is a power of 2).
TEST(FusedAdamWLossScaling, ScaledGradientsStepAsUnscaledOnes) {
  Problem plain(0), scaled(0);
  auto a = make<FusedAdamW>(plain);
  auto b = make<FusedAdamW>(scaled);
  b->enable_loss_scaling(torch::kCPU, 1024.0);
  EXPECT_EQ(b->scale_loss(torch::ones({})).item<double>(), 1024.0);
  for (int step = 1; step <= 5; ++step) {
    plain.set_gradients(step), scaled.set_gradients(step);
    for (auto& p : scaled.all()) p.mutable_grad().mul_(1024.0);  // what backward of the scaled loss gives
    a->step();
    b->unscale_gradients();
    b->step();
  }
  for (size_t i = 0; i < plain.all().size(); ++i) EXPECT_TRUE(torch::equal(scaled.all()[i], plain.all()[i])) << i;
}

// An overflowing step changes nothing but the scale (halved), and does not count as a step: the
// next clean step equals the first step of an optimizer that never saw the overflow. The scale and
// the step counts survive a checkpoint.
TEST(FusedAdamWLossScaling, OverflowSkipsTheStepAndHalvesTheScale) {
  Problem reference(0), overflowed(0);
  auto a = make<FusedAdamW>(reference);
  auto b = make<FusedAdamW>(overflowed);
  b->enable_loss_scaling(torch::kCPU, 1024.0);
  auto before = overflowed.all();
  std::vector<torch::Tensor> copies;
  for (auto& p : before) copies.push_back(p.detach().clone());
  overflowed.set_gradients(1);
  overflowed.all()[1].mutable_grad()[0][0][0] = std::numeric_limits<float>::infinity();
  b->unscale_gradients();
  b->step();
  for (size_t i = 0; i < copies.size(); ++i) EXPECT_TRUE(torch::equal(overflowed.all()[i], copies[i])) << i;
  EXPECT_EQ(b->loss_scale(), 512.0);

  std::ostringstream bytes;
  {
    torch::serialize::OutputArchive archive;
    b->save(archive);
    archive.save_to(bytes);
  }
  auto c = make<FusedAdamW>(overflowed);
  c->enable_loss_scaling(torch::kCPU, 1.0);
  std::istringstream in(bytes.str());
  torch::serialize::InputArchive archive;
  archive.load_from(in);
  c->load(archive);
  EXPECT_EQ(c->loss_scale(), 512.0);

  reference.set_gradients(2), overflowed.set_gradients(2);
  for (auto& p : overflowed.all()) p.mutable_grad().mul_(512.0);
  a->step();
  c->unscale_gradients();
  c->step();
  for (size_t i = 0; i < reference.all().size(); ++i)
    EXPECT_TRUE(torch::equal(overflowed.all()[i], reference.all()[i])) << "parameter " << i;
}

TEST(ClipGradientNorm, EqualsClipGradNormAndOnlyScalesDown) {
  for (double max_norm : {0.5, 1e9, std::numeric_limits<double>::infinity()}) {
    Problem reference(1), foreach_(1);
    reference.set_gradients(0), foreach_.set_gradients(0);
    const double expected = torch::nn::utils::clip_grad_norm_(reference.all(), max_norm);
    const double actual = moelab::clip_gradient_norm(foreach_.all(), max_norm).item<double>();
    EXPECT_NEAR(actual, expected, 1e-5 * expected) << max_norm;
    for (size_t i = 0; i < reference.all().size(); ++i)
      EXPECT_TRUE(torch::allclose(foreach_.all()[i].grad(), reference.all()[i].grad(), 1e-5, 1e-7)) << max_norm;
  }
  Problem none(2);  // no gradients yet: norm 0, nothing to clip
  EXPECT_EQ(moelab::clip_gradient_norm(none.all(), 1.0).item<double>(), 0.0);
}

}  // namespace
