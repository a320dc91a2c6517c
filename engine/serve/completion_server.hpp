// `moelab serve`: a checkpoint behind the OpenAI completions protocol, as lm-evaluation-harness's
// `local-completions` model speaks it, plus lm-eval's remote tokenizer endpoints:
//   POST /v1/completions   prompt (string, token ids, or a batch of either), echo, logprobs, max_tokens, stop
//   GET  /tokenizer_info   POST /tokenize {"prompt"}   POST /detokenize {"tokens"}   GET /health
// Bad requests get a 4xx with {"error": {"message": ...}} and the server keeps serving.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include "engine/serve/scorer.hpp"

namespace httplib {
class Server;
}

namespace moelab {

class CompletionServer {
 public:
  CompletionServer(Scorer& scorer, std::string model_name);
  ~CompletionServer();
  int bind(const std::string& host, int port);  // port 0 picks a free one; returns the bound port
  void listen();                                // serves until stop()
  void stop();

 private:
  void routes();
  Scorer& scorer_;
  std::string model_name_;
  std::mutex model_mutex_;  // one forward pass at a time
  std::unique_ptr<httplib::Server> http_;
};

}  // namespace moelab
