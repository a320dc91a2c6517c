// `moelab serve`: a checkpoint behind the OpenAI completions protocol, as lm-evaluation-harness's
// `local-completions` model and the official OpenAI clients speak it, plus lm-eval's remote tokenizer
// endpoints:
//   POST /v1/completions   prompt (string, token ids, or a batch of either), echo, logprobs, max_tokens, stop
//   GET  /v1/models        GET /v1/models/{id}   (the checkpoint's job name is the one model id)
//   GET  /tokenizer_info   POST /tokenize {"prompt"}   POST /detokenize {"tokens"}   GET /health
// Every error is the protocol's error object {"error": {"message", "type", "param", "code"}} with a 4xx
// for what the client got wrong and a 5xx for what the server could not do; the server keeps serving.
// No request can hold the model for long: max_tokens is capped, each request has a deadline, a request
// whose client went away stops, and stop() ends running and waiting requests at their next forward pass.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>

#include "engine/serve/scorer.hpp"

namespace httplib {
class Server;
struct Request;
}  // namespace httplib

namespace moelab {

struct ServeLimits {
  int64_t max_tokens = 0;  // most tokens one completion may ask for; 0: the model's context
  // How long one request may wait for the model and run; past it the request is answered 503.
  std::chrono::milliseconds request_timeout{60000};
};

class RequestWatch;

class CompletionServer {
 public:
  CompletionServer(Scorer& scorer, std::string model_name, ServeLimits limits = {});
  ~CompletionServer();
  int bind(const std::string& host, int port);  // port 0 picks a free one; returns the bound port
  void listen();                                // serves until stop()
  void stop();                                  // also abandons the requests running or waiting for the model
  int64_t max_tokens() const { return max_tokens_; }

 private:
  void routes();
  // Serves method on path with handler's answer (200), or the error object of what it throws.
  void route(const std::string& method, const std::string& path, std::function<nlohmann::json(const httplib::Request&)> handler);
  std::unique_lock<std::timed_mutex> lock_model(const RequestWatch& watch);
  Scorer& scorer_;
  std::string model_name_;
  int64_t max_tokens_;
  std::chrono::milliseconds request_timeout_;
  int64_t created_;  // when the server started: the model object's "created"
  std::atomic<bool> stopping_{false};
  std::timed_mutex model_mutex_;  // one forward pass at a time
  std::map<std::string, std::string> methods_;  // path -> the method it answers, for 405s
  std::unique_ptr<httplib::Server> http_;
};

}  // namespace moelab
