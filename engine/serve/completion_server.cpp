#include "engine/serve/completion_server.hpp"

#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>

namespace moelab {
namespace {

using nlohmann::json;

constexpr size_t kMaxBodyBytes = 16 << 20;

struct BadRequest : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void reply(httplib::Response& res, int status, const json& body) {
  res.status = status;
  // Token strings can be partial UTF-8 sequences; replace rather than fail.
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

json parse_body(const httplib::Request& req) {
  json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) throw BadRequest("request body is not valid JSON");
  if (!body.is_object()) throw BadRequest("request body must be a JSON object");
  return body;
}

json null_if_nan(double v) { return std::isnan(v) ? json(nullptr) : json(v); }

// Debian's compiled cpp-httplib listens with a backlog of 5, so a burst of clients (lm-eval sends
// many requests at once) has connections dropped. Listening again on the same socket with a larger
// backlog is allowed and changes only the backlog; the socket is found by the port it is bound to.
void widen_listen_backlog(int port) {
  for (int fd = 0; fd < 1024; ++fd) {
    sockaddr_storage address{};
    socklen_t length = sizeof address;
    int accepting = 0;
    socklen_t flag_length = sizeof accepting;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) continue;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &flag_length) != 0 || !accepting) continue;
    int bound = address.ss_family == AF_INET    ? ntohs(reinterpret_cast<sockaddr_in*>(&address)->sin_port)
                : address.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&address)->sin6_port)
                                                : -1;
    if (bound == port) ::listen(fd, SOMAXCONN);
  }
}

}  // namespace

CompletionServer::CompletionServer(Scorer& scorer, std::string model_name)
    : scorer_(scorer), model_name_(std::move(model_name)), http_(std::make_unique<httplib::Server>()) {
  http_->set_payload_max_length(kMaxBodyBytes);
  // Replies go out as headers then body; without TCP_NODELAY, Nagle's algorithm holds the body until
  // the client's delayed ACK (~40 ms), which capped lm-eval's one-request-per-input tokenizing at ~20/s.
  http_->set_tcp_nodelay(true);
  routes();
}

CompletionServer::~CompletionServer() = default;

int CompletionServer::bind(const std::string& host, int port) {
  int bound = port == 0 ? http_->bind_to_any_port(host) : (http_->bind_to_port(host, port) ? port : -1);
  if (bound < 0) throw std::runtime_error("cannot listen on " + host + ":" + std::to_string(port));
  widen_listen_backlog(bound);
  return bound;
}

void CompletionServer::listen() { http_->listen_after_bind(); }
void CompletionServer::stop() { http_->stop(); }

void CompletionServer::routes() {
  const Tokenizer& tokenizer = scorer_.tokenizer();
  const std::string eos = tokenizer.name() == "gpt2" ? "<|endoftext|>" : "";

  // Text to ids; the end-of-text marker is its special id, as lm-eval asks for the eos token's id.
  auto encode = [&tokenizer, eos](const std::string& text) {
    std::vector<uint32_t> ids;
    size_t start = 0;
    for (size_t at; !eos.empty() && (at = text.find(eos, start)) != std::string::npos; start = at + eos.size()) {
      auto part = tokenizer.encode(std::string_view(text).substr(start, at - start));
      ids.insert(ids.end(), part.begin(), part.end());
      ids.push_back(tokenizer.end_of_text());
    }
    auto rest = tokenizer.encode(std::string_view(text).substr(start));
    ids.insert(ids.end(), rest.begin(), rest.end());
    return ids;
  };
  auto token_ids = [&tokenizer](const json& v, const char* what) {
    std::vector<uint32_t> ids;
    for (auto& t : v) {
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= tokenizer.vocab_size())
        throw BadRequest(std::string(what) + ": token ids must be integers in [0, " + std::to_string(tokenizer.vocab_size()) +
                         "), got " + t.dump());
      ids.push_back(t.get<uint32_t>());
    }
    return ids;
  };
  auto token_text = [&tokenizer](uint32_t id) { return tokenizer.decode(std::span(&id, 1)); };

  // Every handler answers 400 for what the client sent wrong and 500 for what went wrong here.
  auto guarded = [](auto handler) {
    return [handler](const httplib::Request& req, httplib::Response& res) {
      try {
        handler(req, res);
      } catch (const BadRequest& e) {
        reply(res, 400, {{"error", {{"message", e.what()}, {"type", "invalid_request_error"}}}});
      } catch (const std::exception& e) {
        reply(res, 500, {{"error", {{"message", e.what()}, {"type", "server_error"}}}});
      }
    };
  };

  http_->Get("/health", guarded([this](const httplib::Request&, httplib::Response& res) {
               reply(res, 200, {{"status", "ok"}, {"model", model_name_}, {"step", scorer_.step()}});
             }));
  http_->Get("/tokenizer_info", guarded([this, &tokenizer, eos](const httplib::Request&, httplib::Response& res) {
               reply(res, 200, {{"eos_token", eos.empty() ? json(nullptr) : json(eos)}, {"bos_token", nullptr},
                                {"pad_token", nullptr}, {"name", tokenizer.name()}, {"vocab_size", tokenizer.vocab_size()},
                                {"model_max_length", scorer_.context()}});
             }));
  http_->Post("/tokenize", guarded([encode](const httplib::Request& req, httplib::Response& res) {
                auto body = parse_body(req);
                if (!body.contains("prompt") || !body["prompt"].is_string()) throw BadRequest("tokenize: \"prompt\" must be a string");
                reply(res, 200, {{"tokens", encode(body["prompt"].get<std::string>())}});
              }));
  http_->Post("/detokenize", guarded([&tokenizer, token_ids](const httplib::Request& req, httplib::Response& res) {
                auto body = parse_body(req);
                if (!body.contains("tokens") || !body["tokens"].is_array()) throw BadRequest("detokenize: \"tokens\" must be a list of ids");
                auto ids = token_ids(body["tokens"], "detokenize");
                reply(res, 200, {{"prompt", tokenizer.decode(ids)}});
              }));

  http_->Post("/v1/completions", guarded([this, encode, token_ids, token_text, &tokenizer](const httplib::Request& req,
                                                                                          httplib::Response& res) {
    auto body = parse_body(req);
    // Prompts: a string, a list of ids, or a batch (list) of either.
    if (!body.contains("prompt")) throw BadRequest("completions: \"prompt\" is required");
    const json& prompt = body["prompt"];
    std::vector<std::vector<uint32_t>> prompts;
    auto one_prompt = [&](const json& p) {
      if (p.is_string()) return encode(p.get<std::string>());
      if (p.is_array()) return token_ids(p, "prompt");
      throw BadRequest("prompt: expected a string, a list of token ids, or a list of those");
    };
    if (prompt.is_array() && !prompt.empty() && (prompt[0].is_string() || prompt[0].is_array()))
      for (auto& p : prompt) prompts.push_back(one_prompt(p));
    else
      prompts.push_back(one_prompt(prompt));

    const json max_tokens_field = body.value("max_tokens", json(16));
    if (!max_tokens_field.is_number_integer() || max_tokens_field.get<int>() < 0)
      throw BadRequest("max_tokens: expected an integer >= 0, got " + max_tokens_field.dump());
    const int max_tokens = max_tokens_field.get<int>();
    if (body.contains("echo") && !body["echo"].is_boolean()) throw BadRequest("echo: expected a boolean");
    const bool echo = body.value("echo", false);
    const json logprobs_field = body.value("logprobs", json(nullptr));
    if (!logprobs_field.is_null() && !logprobs_field.is_number_integer()) throw BadRequest("logprobs: expected an integer or null");
    const bool want_logprobs = logprobs_field.is_number_integer();
    if (body.contains("temperature") && body["temperature"].is_number() && body["temperature"].get<double>() > 0)
      throw BadRequest("temperature: only greedy decoding (temperature 0) is served");
    std::vector<std::string> stop;
    if (body.contains("stop") && body["stop"].is_string()) stop.push_back(body["stop"]);
    else if (body.contains("stop") && body["stop"].is_array())
      for (auto& s : body["stop"])
        if (s.is_string()) stop.push_back(s);

    json choices = json::array();
    size_t prompt_tokens = 0, completion_tokens = 0;
    for (size_t i = 0; i < prompts.size(); ++i) {
      const auto& ids = prompts[i];
      if (ids.empty()) throw BadRequest("prompt " + std::to_string(i) + " is empty");
      std::vector<uint32_t> generated;
      TokenScores scores;
      {
        std::lock_guard lock(model_mutex_);
        if (max_tokens == 1 || (max_tokens == 0 && echo)) {
          scores = scorer_.score(ids);
          if (max_tokens == 1) generated.push_back(scores.next_token);
        } else {
          generated = scorer_.generate(ids, max_tokens, stop);
          std::vector<uint32_t> all = ids;
          all.insert(all.end(), generated.begin(), generated.end());
          if (want_logprobs) scores = scorer_.score(all);
        }
      }
      std::string text = tokenizer.decode(generated);
      json choice{{"index", i}, {"text", echo ? tokenizer.decode(ids) + text : text},
                  {"finish_reason", int(generated.size()) < max_tokens ? "stop" : "length"}, {"logprobs", nullptr}};
      if (want_logprobs && !scores.logprob.empty()) {
        // Entries for the echoed prompt (the first has no context: null), then the generated tokens.
        json tokens = json::array(), token_logprobs = json::array(), top_logprobs = json::array(), offsets = json::array();
        size_t offset = 0;
        auto add = [&](uint32_t id, double lp, uint32_t top_id, double top_lp) {
          tokens.push_back(token_text(id));
          token_logprobs.push_back(null_if_nan(lp));
          top_logprobs.push_back(std::isnan(top_lp) ? json(nullptr) : json{{token_text(top_id), top_lp}});
          offsets.push_back(offset);
          offset += token_text(id).size();
        };
        const size_t first = echo ? 0 : ids.size();
        for (size_t t = first; t < scores.logprob.size(); ++t) add((t < ids.size() ? ids[t] : generated[t - ids.size()]), scores.logprob[t], scores.top_token[t], scores.top_logprob[t]);
        if (max_tokens == 1) add(scores.next_token, scores.next_logprob, scores.next_token, scores.next_logprob);
        choice["logprobs"] = {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top_logprobs},
                              {"text_offset", offsets}};
      }
      choices.push_back(choice);
      prompt_tokens += ids.size(), completion_tokens += generated.size();
    }
    const auto created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    reply(res, 200, {{"id", "cmpl-moelab-" + std::to_string(created)}, {"object", "text_completion"}, {"created", created},
                     {"model", model_name_}, {"choices", choices},
                     {"usage", {{"prompt_tokens", prompt_tokens}, {"completion_tokens", completion_tokens},
                                {"total_tokens", prompt_tokens + completion_tokens}}}});
  }));
}

}  // namespace moelab
