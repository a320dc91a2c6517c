// The sort-based dispatch against a naive loop over tokens and their chosen experts, forward and
// backward, for several expert counts, top-k and granularities and both expert kernels (the
// per-expert loop, and at::_grouped_mm, which runs ATen's fp32 fallback on the CPU); and the
// parameter counts.
#include <gtest/gtest.h>

#include "engine/model/gpt.hpp"

using namespace moelab;

namespace {

ModelConfig moe_config(int experts, int top_k, int expert_size, int granularity, const std::string& router = "softmax",
                       int d_model = 24) {
  ModelConfig m;
  m.vocab_size = 50, m.seq_len = 16, m.layers = 2, m.d_model = d_model, m.heads = 4;
  m.router = router, m.experts = experts, m.top_k = top_k, m.expert_size = expert_size, m.granularity = granularity;
  return m;
}

// out[t] = sum_j gate[t, j] * expert_{index[t, j]}(x[t]), one token and one expert at a time.
torch::Tensor naive_moe(ExpertsImpl& experts, const torch::Tensor& x, const torch::Tensor& index, const torch::Tensor& gate) {
  std::vector<torch::Tensor> rows;
  for (int64_t t = 0; t < x.size(0); ++t) {
    auto row = torch::zeros({1, x.size(1)});
    for (int64_t j = 0; j < index.size(1); ++j)
      row = row + gate[t][j] * experts.apply_expert(index[t][j].item<int>(), x[t].unsqueeze(0));
    rows.push_back(row);
  }
  return torch::cat(rows);
}

}  // namespace

// experts, top_k, granularity, expert_size, d_model, kernel
using DispatchCase = std::tuple<std::tuple<int, int, int, int, int>, ExpertKernel>;

std::string dispatch_case_name(const ::testing::TestParamInfo<DispatchCase>& info) {
  auto [shape, kernel] = info.param;
  auto [e, k, g, h, d] = shape;
  return "e" + std::to_string(e) + "k" + std::to_string(k) + "g" + std::to_string(g) + "h" + std::to_string(h) + "d" +
         std::to_string(d) + (kernel == ExpertKernel::GroupedMm ? "_grouped_mm" : "_loop");
}

class MoeDispatch : public ::testing::TestWithParam<DispatchCase> {};

TEST_P(MoeDispatch, MatchesNaivePerTokenLoop) {
  auto [shape, kernel] = GetParam();
  auto [experts, top_k, granularity, expert_size, d_model] = shape;
  torch::manual_seed(experts * 100 + top_k * 10 + granularity);
  auto config = moe_config(experts, top_k, expert_size, granularity, "softmax", d_model);
  MoeLayer layer(config, 1);
  for (auto& p : layer->experts->parameters()) torch::nn::init::normal_(p, 0.0, 0.2);
  auto x = torch::randn({37, config.d_model}, torch::requires_grad());
  auto routing = layer->router(x);

  auto fast = layer->experts->forward_with_kernel(x, routing.expert_index, routing.gate, kernel);
  auto upstream = torch::randn_like(fast);
  const std::vector<torch::Tensor> inputs = {x, layer->experts->w_in, layer->experts->b_in, layer->experts->w_out,
                                              layer->experts->b_out, layer->router->parameters()[0]};
  auto grads = torch::autograd::grad({(fast * upstream).sum()}, inputs, /*grad_outputs=*/{}, /*retain_graph=*/true);
  auto slow = naive_moe(*layer->experts, x, routing.expert_index, routing.gate);
  auto slow_grads = torch::autograd::grad({(slow * upstream).sum()}, inputs);
  EXPECT_TRUE(torch::allclose(fast, slow, 1e-5, 1e-5)) << (fast - slow).abs().max();
  for (size_t i = 0; i < grads.size(); ++i)
    EXPECT_TRUE(torch::allclose(grads[i], slow_grads[i], 1e-5, 1e-5)) << "gradient " << i << ": "
                                                                       << (grads[i] - slow_grads[i]).abs().max();
  if (kernel == ExpertKernel::GroupedMm) {  // w_in's gradient comes out hidden-major, in w_in's own layout (experts.cpp)
    EXPECT_EQ(grads[1].stride(1), 1) << grads[1].strides();
  }
  EXPECT_EQ(routing.expert_index.size(1), top_k * granularity);
  EXPECT_EQ(layer->experts->w_in.size(0), experts * granularity);
  EXPECT_EQ(layer->experts->w_in.size(2), expert_size / granularity);
}

// The case with d_model 20 and hidden 12: the grouped kernel pads both to multiples of 8. The last
// has 320 experts, more than a byte's 256 ids, which the slot sort then keeps as int64 keys.
INSTANTIATE_TEST_SUITE_P(
    ExpertsTopKGranularity, MoeDispatch,
    ::testing::Combine(::testing::Values(std::tuple{4, 1, 1, 32, 24}, std::tuple{8, 2, 1, 32, 24},
                                         std::tuple{8, 8, 1, 32, 24}, std::tuple{4, 2, 2, 32, 24},
                                         std::tuple{16, 4, 4, 32, 24}, std::tuple{6, 2, 1, 12, 20},
                                         std::tuple{40, 2, 8, 32, 24}),
                       ::testing::Values(ExpertKernel::PerExpertLoop, ExpertKernel::GroupedMm)),
    dispatch_case_name);

// w_in lies transposed in memory (experts.cpp). A seed gives the same model as when it did not (values
// printed by the build before the change), a saved model keeps the layout, and a model saved with
// w_in contiguous, as older checkpoints are, loads the same values and computes the same loss.
TEST(ExpertLayout, SeedsSavesAndOlderContiguousCheckpointsGiveTheSameModel) {
  auto config = moe_config(8, 2, 32, 1, "kern");
  Gpt model(config, 7);
  auto w_in = [](Gpt& m, int layer) { return m->moe_layers()[layer]->experts->w_in; };
  EXPECT_EQ(w_in(model, 0).stride(1), 1);
  EXPECT_FALSE(w_in(model, 0).is_view()) << "a view keeps its base's memory after the parameter gets new memory";
  EXPECT_FLOAT_EQ(w_in(model, 1)[3][5][2].item<float>(), 0.012971607f);
  EXPECT_FLOAT_EQ(w_in(model, 1)[7][23][31].item<float>(), 0.00557206618f);
  EXPECT_FLOAT_EQ(model->moe_layers()[0]->experts->w_out[2][9][11].item<float>(), -0.00836441759f);
  auto tokens = torch::arange(16).remainder(50).view({1, 16});
  const double loss = model->loss(tokens, tokens).item<double>();
  EXPECT_NEAR(loss, 3.71430135, 1e-6);

  for (bool contiguous : {false, true}) {
    if (contiguous)
      for (int layer : {0, 1}) w_in(model, layer).set_data(w_in(model, layer).contiguous());
    std::stringstream bytes;
    torch::serialize::OutputArchive out;
    model->save(out);
    out.save_to(bytes);
    Gpt loaded(config, 8);
    torch::serialize::InputArchive in;
    in.load_from(bytes);
    loaded->load(in);
    EXPECT_EQ(w_in(loaded, 0).stride(1) == 1, !contiguous) << w_in(loaded, 0).strides();
    for (const auto& p : model->named_parameters())
      EXPECT_TRUE(torch::equal(p.value(), loaded->named_parameters()[p.key()])) << p.key();
    EXPECT_DOUBLE_EQ(loaded->loss(tokens, tokens).item<double>(), loss) << "contiguous " << contiguous;
  }
}

// Every router builds, routes and back-propagates through a whole model.
TEST(Model, EveryRouterTrainsThroughTheModel) {
  for (std::string router : {"dense", "softmax", "sigmoid", "tanh", "kern", "kmeans"}) {
    torch::manual_seed(0);
    auto config = moe_config(8, 2, 32, 1, router);
    Gpt model(config, 0);
    auto tokens = torch::randint(config.vocab_size, {2, 16});
    auto loss = model->loss(tokens, tokens);
    loss.backward();
    EXPECT_TRUE(std::isfinite(loss.item<double>())) << router;
    EXPECT_NEAR(loss.item<double>(), std::log(50.0), 0.5) << router << ": a fresh model predicts near uniformly";
    EXPECT_EQ(model->moe_layers().size(), router == "dense" ? 0u : 2u);
  }
}

// The analytic sizes agree with the parameters a built model really has.
TEST(ModelSize, AgreesWithTheBuiltModel) {
  for (std::string router : {"dense", "softmax", "kern", "kmeans"}) {
    auto config = moe_config(8, 2, 32, 2, router);
    Gpt model(config, 0);
    int64_t counted = 0;
    for (auto& p : model->parameters()) counted += p.numel();
    auto size = model_size(config);
    EXPECT_EQ(size.total_params, counted) << router;
    if (router != "dense") {
      const int64_t expert = 24 * 16 * 2 + 16 + 24;  // d x h twice, biases; h = 32 / granularity 2
      EXPECT_EQ(size.total_params - size.active_params, 2 * (16 - 4) * expert) << router;
    }
  }
}

// The paper's 125M-active configuration: ~520M total, ~125M active; the dense twin ~125M.
TEST(ModelSize, PaperConfigurations) {
  ModelConfig moe;  // defaults are the paper's 125M: 12 x 768, 12 heads, 64 experts, top-8, 384, GPT-2 vocab
  auto size = model_size(moe);
  EXPECT_NEAR(size.total_params / 520e6, 1.0, 0.02) << size.total_params;
  EXPECT_NEAR(size.active_params / 125e6, 1.0, 0.02) << size.active_params;
  ModelConfig dense = moe;
  dense.router = "dense";
  EXPECT_NEAR(model_size(dense).total_params / 125e6, 1.0, 0.02);
  EXPECT_EQ(model_size(dense).active_params, model_size(dense).total_params);
  // Same active parameters up to the router: 8 x 384 = 3072 = 4 x 768.
  EXPECT_NEAR(double(size.active_params) / model_size(dense).active_params, 1.0, 0.01);
}
