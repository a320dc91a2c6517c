// `moelab serve`'s contract with lm-eval's local-completions model and the official OpenAI client,
// against a real checkpoint over real HTTP on loopback: logprobs equal the engine's own computation,
// entry counts, tokenizer endpoints, malformed requests, many clients at once, the protocol's error
// objects, and that no request can hold the model: the real `moelab serve` process under a huge
// max_tokens, a long generation, a client that hangs up, and SIGTERM mid-generation.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <future>
#include <regex>
#include <thread>

#include "engine/model/gpt.hpp"
#include "engine/serve/completion_server.hpp"
#include "engine/train/checkpoint.hpp"
#include "run_moelab.hpp"

namespace fs = std::filesystem;
using namespace moelab;
using nlohmann::json;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

struct Answer {
  int status = 0;  // 0: no answer (the error is in body)
  json body;
  double seconds = 0;
};

// One POST from a client of its own that waits at most read_timeout_s for the answer.
Answer post_to(int port, const std::string& path, const json& body, int read_timeout_s = 30) {
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(read_timeout_s, 0);
  const auto start = Clock::now();
  auto res = client.Post(path.c_str(), body.dump(), "application/json");
  if (!res) return {0, json(httplib::to_string(res.error())), seconds_since(start)};
  return {res->status, json::parse(res->body, nullptr, false), seconds_since(start)};
}

// The protocol's error object: all four fields, a message, and the type and code given.
void expect_error_object(const json& body, const std::string& type, const json& code) {
  ASSERT_TRUE(body.contains("error")) << body;
  auto& error = body["error"];
  for (auto* key : {"message", "type", "param", "code"}) EXPECT_TRUE(error.contains(key)) << key << " missing: " << body;
  EXPECT_TRUE(error["message"].is_string() && !error["message"].get<std::string>().empty()) << body;
  EXPECT_EQ(error["type"], type) << body;
  EXPECT_EQ(error["code"], code) << body;
}

// The real `moelab serve` as a process of its own, on a free port read from the line it prints.
class ServeProcess {
 public:
  explicit ServeProcess(const std::string& options) {
    int out[2];
    if (pipe(out) != 0) throw std::runtime_error("pipe failed");
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], STDOUT_FILENO);
      close(out[0]);
      execl("/bin/sh", "sh", "-c", ("exec " MOELAB_BIN " serve --port 0 " + options).c_str(), nullptr);
      _exit(127);
    }
    close(out[1]);
    FILE* stream = fdopen(out[0], "r");
    char line[1024] = "";
    if (!fgets(line, sizeof line, stream)) line[0] = 0;
    fclose(stream);
    std::cmatch port;
    if (std::regex_search(line, port, std::regex(R"(http://127\.0\.0\.1:(\d+)/)"))) port_ = std::stoi(port[1]);
  }
  ~ServeProcess() {
    if (running()) kill(pid_, SIGKILL), waitpid(pid_, nullptr, 0);
  }
  int port() const { return port_; }
  bool running() {
    if (exit_status_ >= 0) return false;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) != pid_) return true;
    exit_status_ = status;
    return false;
  }
  // Sends the signal and waits up to limit_s for the process to end; its exit status, or -1 if still running.
  int signal_and_wait(int signal, double limit_s) {
    kill(pid_, signal);
    for (const auto start = Clock::now(); seconds_since(start) < limit_s; usleep(10000))
      if (!running()) return exit_status_;
    return -1;
  }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  int exit_status_ = -1;
};

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

// The issue's hang: a huge max_tokens was accepted and held the model. Now it is a 400 naming the
// field and the cap (the model's context, 32, by default), and the next request is answered at once.
TEST_F(Serve, AHugeMaxTokensIsRefusedAndTheModelStaysFree) {
  auto huge = post_to(port_, "/v1/completions", {{"prompt", "ab"}, {"max_tokens", 1000000000}}, 5);
  ASSERT_EQ(huge.status, 400) << huge.body;
  expect_error_object(huge.body, "invalid_request_error", nullptr);
  EXPECT_EQ(huge.body["error"]["param"], "max_tokens");
  EXPECT_NE(huge.body["error"]["message"].get<std::string>().find("32"), std::string::npos) << huge.body;
  EXPECT_EQ(post_to(port_, "/v1/completions", {{"prompt", "ab"}, {"max_tokens", 33}}, 5).status, 400);
  auto at_cap = post_to(port_, "/v1/completions", {{"prompt", "ab"}, {"max_tokens", 32}});  // no tight deadline: CI is loaded
  EXPECT_EQ(at_cap.status, 200) << at_cap.body;
  auto next = post_to(port_, "/v1/completions", {{"prompt", "ab"}, {"max_tokens", 1}}, 5);
  EXPECT_EQ(next.status, 200) << next.body;
  EXPECT_LT(next.seconds, 1.0);
}

// A generation the cap allows but that runs past the request deadline (2 s) ends there with a 503,
// and a request that came 1 s later, waiting for the model, is answered soon after, not held.
TEST_F(Serve, ALongGenerationEndsAtItsDeadlineAndTheNextRequestIsServed) {
  ServeProcess serve("--checkpoint " + checkpoint_ + " --max-tokens 100000000 --request-timeout 2");
  ASSERT_GT(serve.port(), 0);
  auto long_one = std::async(std::launch::async, [&] {
    return post_to(serve.port(), "/v1/completions", {{"prompt", "It is"}, {"max_tokens", 100000000}});
  });
  std::this_thread::sleep_for(std::chrono::seconds(1));
  auto next = post_to(serve.port(), "/v1/completions", {{"prompt", "It is"}, {"max_tokens", 1}});
  auto first = long_one.get();
  EXPECT_EQ(first.status, 503) << first.body;
  expect_error_object(first.body, "server_error", "timeout");
  EXPECT_GE(first.seconds, 2.0);
  EXPECT_LT(first.seconds, 4.0);
  EXPECT_EQ(next.status, 200) << next.body;
  EXPECT_LT(next.seconds, 2.5) << "the 1-token request waited for the whole long generation";
}

// A client that gives up (read timeout 1 s) ends its generation: the next 1-token request does not
// wait for the 60 s deadline.
TEST_F(Serve, AClientThatHangsUpStopsItsGeneration) {
  ServeProcess serve("--checkpoint " + checkpoint_ + " --max-tokens 100000000 --request-timeout 60");
  ASSERT_GT(serve.port(), 0);
  auto gone = post_to(serve.port(), "/v1/completions", {{"prompt", "It is"}, {"max_tokens", 100000000}}, 1);
  EXPECT_EQ(gone.status, 0) << "the long generation answered within 1 s: " << gone.body;
  auto next = post_to(serve.port(), "/v1/completions", {{"prompt", "It is"}, {"max_tokens", 1}}, 10);
  EXPECT_EQ(next.status, 200) << next.body;
  EXPECT_LT(next.seconds, 1.5);
}

// SIGTERM while one request generates, another waits for the model, a keep-alive connection idles
// and a client has sent half a request: the process is gone within 2 s, and the two requests are
// told the server is shutting down.
TEST_F(Serve, SigtermStopsTheServerWithinTwoSecondsMidGeneration) {
  ServeProcess serve("--checkpoint " + checkpoint_ + " --max-tokens 100000000 --request-timeout 60");
  ASSERT_GT(serve.port(), 0);
  httplib::Client idle("127.0.0.1", serve.port());
  idle.set_keep_alive(true);
  ASSERT_TRUE(idle.Get("/health"));
  const int half_sent = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{.sin_family = AF_INET, .sin_port = htons(uint16_t(serve.port())), .sin_addr = {htonl(INADDR_LOOPBACK)}};
  ASSERT_EQ(connect(half_sent, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  const std::string half = "POST /v1/completions HTTP/1.1\r\nHost: x\r\n";
  ASSERT_EQ(write(half_sent, half.data(), half.size()), ssize_t(half.size()));
  auto generating = std::async(std::launch::async, [&] {
    return post_to(serve.port(), "/v1/completions", {{"prompt", "It is"}, {"max_tokens", 100000000}});
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto waiting = std::async(std::launch::async, [&] {
    return post_to(serve.port(), "/v1/completions", {{"prompt", "It is"}, {"max_tokens", 1}});
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const auto start = Clock::now();
  const int status = serve.signal_and_wait(SIGTERM, 2.0);
  const double seconds = seconds_since(start);
  ASSERT_NE(status, -1) << "moelab serve still runs 2 s after SIGTERM";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  std::printf("moelab serve stopped %.2f s after SIGTERM\n", seconds);
  for (auto* request : {&generating, &waiting}) {
    auto answer = request->get();
    EXPECT_EQ(answer.status, 503) << answer.body;
    expect_error_object(answer.body, "server_error", "shutting_down");
  }
  close(half_sent);
}

TEST_F(Serve, ModelsListAndErrorObjects) {
  auto models = client().Get("/v1/models");
  ASSERT_TRUE(models);
  ASSERT_EQ(models->status, 200) << models->body;
  auto list = json::parse(models->body);
  EXPECT_EQ(list["object"], "list");
  ASSERT_EQ(list["data"].size(), 1u);
  EXPECT_EQ(list["data"][0]["id"], "served");  // the checkpoint's job name
  EXPECT_EQ(list["data"][0]["object"], "model");
  EXPECT_TRUE(list["data"][0]["created"].is_number_integer());
  auto one = client().Get("/v1/models/served");
  ASSERT_TRUE(one);
  EXPECT_EQ(json::parse(one->body), list["data"][0]);
  auto other = client().Get("/v1/models/gpt-4");
  ASSERT_TRUE(other);
  EXPECT_EQ(other->status, 404);
  expect_error_object(json::parse(other->body), "invalid_request_error", "model_not_found");

  auto unknown = client().Get("/v1/chat/completions");
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->status, 404);
  expect_error_object(json::parse(unknown->body, nullptr, false), "invalid_request_error", "unknown_url");
  auto wrong_method = client().Get("/v1/completions");
  ASSERT_TRUE(wrong_method);
  EXPECT_EQ(wrong_method->status, 405);
  EXPECT_EQ(wrong_method->get_header_value("Allow"), "POST");
  expect_error_object(json::parse(wrong_method->body, nullptr, false), "invalid_request_error", "method_not_allowed");
  auto huge = client().Post("/v1/completions", std::string(20 << 20, ' '), "application/json");
  ASSERT_TRUE(huge);
  EXPECT_EQ(huge->status, 413);
  expect_error_object(json::parse(huge->body, nullptr, false), "invalid_request_error", "request_too_large");
  auto [status, bad] = post("/v1/completions", "{not json");
  EXPECT_EQ(status, 400);
  expect_error_object(bad, "invalid_request_error", nullptr);
  auto [s2, bad_echo] = post("/v1/completions", R"({"prompt": "x", "echo": "yes"})");
  EXPECT_EQ(s2, 400);
  EXPECT_EQ(bad_echo["error"]["param"], "echo");
}

// The official OpenAI Python client (the `openai` package in the project's venv) lists the model
// and completes against the server, and sees a refused max_tokens as its BadRequestError.
TEST_F(Serve, TheOfficialOpenAIClientListsAndCompletes) {
  const auto script = root_ / "openai_client.py";
  std::ofstream(script) << R"PY(
import json, sys
import openai
client = openai.OpenAI(base_url="http://127.0.0.1:%s/v1" % sys.argv[1], api_key="unused", max_retries=0, timeout=20)
out = {"models": [m.id for m in client.models.list()]}
c = client.completions.create(model=out["models"][0], prompt="It is a truth", max_tokens=5, temperature=0)
out["text"], out["finish_reason"], out["completion_tokens"] = c.choices[0].text, c.choices[0].finish_reason, c.usage.completion_tokens
try:
    client.completions.create(model=out["models"][0], prompt="ab", max_tokens=10**9)
except openai.BadRequestError as e:
    out["refused"] = {"status": e.status_code, "param": e.param}
print(json.dumps(out))
)PY";
  ASSERT_TRUE(fs::exists(MOELAB_PYTHON)) << MOELAB_PYTHON << ": no venv; run scripts/setup.sh";
  FILE* pipe = popen((std::string(MOELAB_PYTHON) + " " + script.string() + " " + std::to_string(port_) + " 2>&1").c_str(), "r");
  std::string output;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof buffer, pipe)) output.append(buffer, n);
  ASSERT_EQ(pclose(pipe), 0) << output;
  const size_t printed = output.find("{\"models\"");
  ASSERT_NE(printed, std::string::npos) << output;
  auto out = json::parse(output.substr(printed), nullptr, false);
  ASSERT_FALSE(out.is_discarded()) << output;
  EXPECT_EQ(out["models"], json({"served"}));
  auto [status, direct] = post("/v1/completions", json{{"prompt", "It is a truth"}, {"max_tokens", 5}}.dump());
  ASSERT_EQ(status, 200);
  EXPECT_EQ(out["text"], direct["choices"][0]["text"]);
  EXPECT_EQ(out["finish_reason"], "length");
  EXPECT_EQ(out["completion_tokens"], 5);
  EXPECT_EQ(out["refused"], json({{"status", 400}, {"param", "max_tokens"}}));
}

}  // namespace
