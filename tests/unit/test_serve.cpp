// `moelab serve`'s contract with lm-eval's local-completions model, against a real checkpoint over
// real HTTP on loopback: logprobs equal the engine's own computation, entry counts, tokenizer
// endpoints, malformed requests, and many clients at once.
#include <gtest/gtest.h>
#include <httplib.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "engine/model/gpt.hpp"
#include "engine/serve/completion_server.hpp"
#include "engine/train/checkpoint.hpp"
#include "run_moelab.hpp"

namespace fs = std::filesystem;
using namespace moelab;
using nlohmann::json;

namespace {

class Serve : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("moelab_serve_" + std::to_string(getpid()));
    auto r = moelab::testing::prepare_corpus_slice(root_, 100000);
    ASSERT_EQ(r.code, 0) << r.output;
    json config{{"name", "served"},
                {"model", {{"vocab_size", 256}, {"seq_len", 32}, {"layers", 2}, {"d_model", 32}, {"heads", 4}, {"router", "kern"},
                           {"experts", 4}, {"top_k", 2}, {"expert_size", 32}}},
                {"train", {{"steps", 10}, {"batch_size", 4}, {"micro_batch", 4}, {"warmup", 1}, {"lr", 1e-3}, {"min_lr", 1e-4},
                           {"eval_every", 10}, {"eval_batches", 1}, {"checkpoint_every", 10}, {"device", "cpu"}}},
                {"data", {{"train", (root_ / "data/train.bin").string()}, {"val", (root_ / "data/val.bin").string()},
                          {"tokenizer", "bytes"}}}};
    std::ofstream(root_ / "config.json") << config.dump();
    r = moelab::testing::run_moelab("train --quiet --config " + (root_ / "config.json").string() + " --db " + (root_ / "s.db").string() +
                            " --run-dir " + (root_ / "run").string());
    ASSERT_EQ(r.code, 0) << r.output;
    checkpoint_ = (root_ / "run/step_00000010.pt").string();
    scorer_ = new Scorer(checkpoint_);
    server_ = new CompletionServer(*scorer_, "served");
    port_ = server_->bind("127.0.0.1", 0);
    thread_ = new std::thread([] { server_->listen(); });
    for (int i = 0; i < 100 && !client().Get("/health"); ++i) usleep(20000);
  }
  static void TearDownTestSuite() {
    server_->stop();
    thread_->join();
    delete thread_, delete server_, delete scorer_;
    fs::remove_all(root_);
  }

  static httplib::Client client() { return httplib::Client("127.0.0.1", port_); }
  static std::pair<int, json> post(const std::string& path, const std::string& body) {
    auto res = client().Post(path.c_str(), body, "application/json");
    if (!res) return {0, json(httplib::to_string(res.error()))};
    return {res->status, json::parse(res->body, nullptr, false)};
  }

  // Sum of log p(token_i | tokens_<i) for i >= from, computed by the engine directly in fp32.
  static double engine_logprob(const std::vector<int64_t>& ids, size_t from) {
    auto checkpoint = open_checkpoint(checkpoint_);
    auto config = checkpoint_config(checkpoint);
    Gpt model(config.model, 0);
    load_checkpoint(checkpoint, *model, nullptr);
    model->eval();
    torch::NoGradGuard no_grad;
    auto logits = model->forward(torch::tensor(ids).unsqueeze(0)).logits[0];
    auto lp = torch::log_softmax(logits, -1);
    double sum = 0;
    for (size_t i = from; i < ids.size(); ++i) sum += lp[i - 1][ids[i]].item<float>();
    return sum;
  }

  static inline fs::path root_;
  static inline std::string checkpoint_;
  static inline Scorer* scorer_ = nullptr;
  static inline CompletionServer* server_ = nullptr;
  static inline std::thread* thread_ = nullptr;
  static inline int port_ = 0;
};

// lm-eval's loglikelihood request: echo the prompt with max_tokens 1 and logprobs 1, then sum
// token_logprobs[ctxlen:-1].
TEST_F(Serve, EchoedLogprobsEqualTheEnginesOwn) {
  std::vector<int64_t> ids = {84, 104, 101, 32, 102, 97, 109, 105, 108, 121, 32, 111, 102};  // "The family of"
  auto [status, body] = post("/v1/completions", json{{"prompt", ids}, {"max_tokens", 1}, {"echo", true}, {"logprobs", 1},
                                                      {"temperature", 0}}.dump());
  ASSERT_EQ(status, 200) << body;
  auto& lp = body["choices"][0]["logprobs"];
  ASSERT_EQ(lp["token_logprobs"].size(), ids.size() + 1);
  ASSERT_EQ(lp["top_logprobs"].size(), ids.size() + 1);
  ASSERT_EQ(lp["tokens"].size(), ids.size() + 1);
  EXPECT_TRUE(lp["token_logprobs"][0].is_null());
  EXPECT_TRUE(lp["top_logprobs"][0].is_null());
  for (size_t context : {1, 4, 10}) {
    double served = 0;
    for (size_t i = context; i < ids.size(); ++i) served += lp["token_logprobs"][i].get<double>();
    EXPECT_NEAR(served, engine_logprob(ids, context), 1e-4) << "context " << context;
  }
  // The top entry is the best token at each position: no token's logprob exceeds it.
  for (size_t i = 1; i <= ids.size(); ++i)
    EXPECT_LE(lp["token_logprobs"][i].get<double>(), lp["top_logprobs"][i].begin().value().get<double>() + 1e-12);
  EXPECT_EQ(body["choices"][0]["text"].get<std::string>().substr(0, 13), "The family of");
}

TEST_F(Serve, BatchesOfStringsAndIdsGetOneChoiceEach) {
  auto [status, body] = post("/v1/completions", json{{"prompt", {"one", "two words", "x"}}, {"max_tokens", 1},
                                                      {"echo", true}, {"logprobs", 1}}.dump());
  ASSERT_EQ(status, 200) << body;
  ASSERT_EQ(body["choices"].size(), 3u);
  EXPECT_EQ(body["choices"][1]["index"], 1);
  EXPECT_EQ(body["choices"][1]["logprobs"]["token_logprobs"].size(), 10u);  // 9 bytes + the generated token
  auto [s2, ids] = post("/v1/completions", json{{"prompt", {{1, 2, 3}, {4, 5}}}, {"max_tokens", 0}, {"echo", true}, {"logprobs", 1}}.dump());
  ASSERT_EQ(s2, 200) << ids;
  EXPECT_EQ(ids["choices"][0]["logprobs"]["token_logprobs"].size(), 3u);  // max_tokens 0: the prompt only
}

TEST_F(Serve, GreedyGenerationStopsAtLengthOrStop) {
  auto [status, body] = post("/v1/completions", json{{"prompt", "It is a truth"}, {"max_tokens", 5}}.dump());
  ASSERT_EQ(status, 200) << body;
  EXPECT_EQ(body["choices"][0]["text"].get<std::string>().size(), 5u);  // bytes: one character per token
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
}

TEST_F(Serve, TokenizerEndpointsRoundTrip) {
  auto [s1, tokens] = post("/tokenize", R"({"prompt": "Emma", "add_special_tokens": false})");
  ASSERT_EQ(s1, 200);
  EXPECT_EQ(tokens["tokens"], json({69, 109, 109, 97}));
  auto [s2, text] = post("/detokenize", json{{"tokens", tokens["tokens"]}}.dump());
  EXPECT_EQ(text["prompt"], "Emma");
  auto info = client().Get("/tokenizer_info");
  ASSERT_TRUE(info);
  auto j = json::parse(info->body);
  EXPECT_TRUE(j.contains("eos_token"));
  EXPECT_EQ(j["model_max_length"], 32);
}

// A prompt longer than the context (32) is scored with a sliding window: the first window as a
// prompt of its own, and the end as the last full context before it, whatever the windows between.
TEST_F(Serve, LongerThanTheContextIsScoredWithASlidingWindow) {
  std::vector<uint32_t> ids;
  for (int i = 0; i < 85; ++i) ids.push_back(uint32_t('a' + (i * 7) % 26));
  auto whole = scorer_->score(ids);
  auto head = scorer_->score({ids.begin(), ids.begin() + 32});
  auto tail = scorer_->score({ids.end() - 32, ids.end()});
  for (size_t i = 1; i < 32; ++i) EXPECT_DOUBLE_EQ(whole.logprob[i], head.logprob[i]) << i;
  EXPECT_DOUBLE_EQ(whole.logprob.back(), tail.logprob.back());
  EXPECT_EQ(whole.next_token, tail.next_token);
  for (size_t i = 1; i < ids.size(); ++i) EXPECT_TRUE(std::isfinite(whole.logprob[i]) && whole.logprob[i] < 0) << i;
  auto [status, body] = post("/v1/completions", json{{"prompt", ids}, {"max_tokens", 0}, {"echo", true}, {"logprobs", 1}}.dump());
  ASSERT_EQ(status, 200) << body;
  EXPECT_NEAR(body["choices"][0]["logprobs"]["token_logprobs"][84].get<double>(), tail.logprob.back(), 1e-6);
}

TEST_F(Serve, MalformedRequestsGetA4xxAndServingGoesOn) {
  EXPECT_EQ(post("/v1/completions", "{not json").first, 400);
  EXPECT_EQ(post("/v1/completions", "[1, 2]").first, 400);
  EXPECT_EQ(post("/v1/completions", R"({"max_tokens": 1})").first, 400);
  EXPECT_EQ(post("/v1/completions", R"({"prompt": 42})").first, 400);
  EXPECT_EQ(post("/v1/completions", R"({"prompt": [1, 999]})").first, 400);
  EXPECT_EQ(post("/v1/completions", R"({"prompt": "x", "max_tokens": "one"})").first, 400);
  EXPECT_EQ(post("/v1/completions", R"({"prompt": "x", "echo": "yes"})").first, 400);
  EXPECT_EQ(post("/v1/completions", R"({"prompt": "x", "temperature": 0.7})").first, 400);
  auto huge = client().Post("/v1/completions", std::string(20 << 20, ' '), "application/json");
  ASSERT_TRUE(huge);
  EXPECT_EQ(huge->status, 413);
  auto health = client().Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
}

TEST_F(Serve, SixtyFourConcurrentClients) {
  std::atomic<int> ok{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 64; ++c)
    clients.emplace_back([&, c] {
      for (int i = 0; i < 3; ++i) {
        auto [status, body] = post("/v1/completions", json{{"prompt", {c % 200 + 1, 2, 3, 4}}, {"max_tokens", 1}, {"echo", true},
                                                            {"logprobs", 1}}.dump());
        if (status == 200 && body["choices"][0]["logprobs"]["token_logprobs"].size() == 5)
          ++ok;
        else
          ADD_FAILURE() << "client " << c << " request " << i << ": status " << status << " " << body;
      }
    });
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok.load(), 64 * 3);
}

}  // namespace
