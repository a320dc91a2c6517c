#include "engine/serve/completion_server.hpp"

#include <arpa/inet.h>
#include <httplib.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <chrono>
#include <cmath>
#include <filesystem>

namespace moelab {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr size_t kMaxBodyBytes = 16 << 20;
// How often a request waiting for the model looks at its deadline, its client and a shutdown.
constexpr std::chrono::milliseconds kWaitSlice{50};

// An answer in the protocol's error object; status says whose fault it is.
struct ApiError : std::runtime_error {
  ApiError(int status, const std::string& message, std::string type, json param = nullptr, json code = nullptr)
      : std::runtime_error(message), status(status), type(std::move(type)), param(std::move(param)), code(std::move(code)) {}
  int status;
  std::string type;
  json param, code;
};

// What the client sent wrong; param names the field when one is at fault.
ApiError bad_request(const std::string& message, json param = nullptr) {
  return ApiError(400, message, "invalid_request_error", std::move(param));
}

json error_object(const std::string& message, const std::string& type, const json& param, const json& code) {
  return {{"error", {{"message", message}, {"type", type}, {"param", param}, {"code", code}}}};
}

void reply(httplib::Response& res, int status, const json& body) {
  res.status = status;
  // Token strings can be partial UTF-8 sequences; replace rather than fail.
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

json parse_body(const httplib::Request& req) {
  json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) throw bad_request("request body is not valid JSON");
  if (!body.is_object()) throw bad_request("request body must be a JSON object");
  return body;
}

json null_if_nan(double v) { return std::isnan(v) ? json(nullptr) : json(v); }

int64_t unix_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string seconds_text(std::chrono::milliseconds duration) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", duration.count() / 1000.0);
  return text;
}

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

// An address as cpp-httplib's Request writes it (numeric host, port).
std::pair<std::string, int> numeric_address(const sockaddr_storage& address, socklen_t length) {
  char host[NI_MAXHOST], port[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&address), length, host, sizeof host, port, sizeof port,
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return {"", -1};
  return {host, std::atoi(port)};
}

// The socket a request came in on. cpp-httplib 0.11 does not hand it to handlers, but the request
// names both ends of its connection, and exactly one open socket has those two ends. -1 if none.
int connection_socket(const httplib::Request& req) {
  std::error_code error;
  for (auto& entry : std::filesystem::directory_iterator("/proc/self/fd", error)) {
    const int fd = std::atoi(entry.path().filename().c_str());
    sockaddr_storage local{}, peer{};
    socklen_t local_length = sizeof local, peer_length = sizeof peer;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_length) != 0) continue;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_length) != 0) continue;
    if (numeric_address(local, local_length) == std::pair(req.local_addr, req.local_port) &&
        numeric_address(peer, peer_length) == std::pair(req.remote_addr, req.remote_port))
      return fd;
  }
  return -1;
}

// Whether the client closed its end: the kernel reports a hang-up, or end of input with nothing left to read.
bool client_gone(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

}  // namespace

// Why one request's work should stop, asked between forward passes and while it waits for the model.
class RequestWatch {
 public:
  RequestWatch(const httplib::Request& req, std::chrono::milliseconds timeout, const std::atomic<bool>& stopping)
      : req_(req), timeout_(timeout), deadline_(Clock::now() + timeout), stopping_(stopping) {}
  void check() const {
    if (stopping_) throw ApiError(503, "the server is shutting down", "server_error", nullptr, "shutting_down");
    if (Clock::now() > deadline_)
      throw ApiError(503, "the request ran past the server's deadline of " + seconds_text(timeout_) +
                              " s per request (moelab serve --request-timeout)",
                     "server_error", nullptr, "timeout");
    if (socket_ == kUnknown) socket_ = connection_socket(req_);  // looked up once, by the first request that runs the model
    if (client_gone(socket_)) throw ApiError(499, "the client closed the connection", "invalid_request_error", nullptr, "client_closed");
  }

 private:
  static constexpr int kUnknown = -2;
  const httplib::Request& req_;
  std::chrono::milliseconds timeout_;
  Clock::time_point deadline_;
  const std::atomic<bool>& stopping_;
  mutable int socket_ = kUnknown;
};

CompletionServer::CompletionServer(Scorer& scorer, std::string model_name, ServeLimits limits)
    : scorer_(scorer),
      model_name_(std::move(model_name)),
      max_tokens_(limits.max_tokens > 0 ? limits.max_tokens : scorer.context()),
      request_timeout_(limits.request_timeout),
      created_(unix_seconds()),
      http_(std::make_unique<httplib::Server>()) {
  if (request_timeout_.count() <= 0) throw std::runtime_error("serve: the request timeout must be > 0");
  http_->set_payload_max_length(kMaxBodyBytes);
  // Replies go out as headers then body; without TCP_NODELAY, Nagle's algorithm holds the body until
  // the client's delayed ACK, which throttles lm-eval's tokenizing (one request per input).
  http_->set_tcp_nodelay(true);
  // An idle keep-alive connection holds a worker this long, and stop() waits for every worker.
  http_->set_keep_alive_timeout(1);
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

void CompletionServer::stop() {
  stopping_ = true;
  http_->stop();
}

std::unique_lock<std::timed_mutex> CompletionServer::lock_model(const RequestWatch& watch) {
  std::unique_lock lock(model_mutex_, std::defer_lock);
  while (!lock.try_lock_for(kWaitSlice)) watch.check();
  return lock;
}

void CompletionServer::route(const std::string& method, const std::string& path,
                             std::function<json(const httplib::Request&)> handler) {
  methods_[path] = method;
  auto answer = [handler](const httplib::Request& req, httplib::Response& res) {
    try {
      reply(res, 200, handler(req));
    } catch (const ApiError& e) {
      reply(res, e.status, error_object(e.what(), e.type, e.param, e.code));
    } catch (const std::exception& e) {
      reply(res, 500, error_object(e.what(), "server_error", nullptr, nullptr));
    }
  };
  if (method == "GET") http_->Get(path, answer);
  else http_->Post(path, answer);
}

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
        throw bad_request(std::string(what) + ": token ids must be integers in [0, " + std::to_string(tokenizer.vocab_size()) +
                              "), got " + t.dump(),
                          what);
      ids.push_back(t.get<uint32_t>());
    }
    return ids;
  };
  auto token_text = [&tokenizer](uint32_t id) { return tokenizer.decode(std::span(&id, 1)); };
  auto model_object = [this] { return json{{"id", model_name_}, {"object", "model"}, {"created", created_}, {"owned_by", "moelab"}}; };

  route("GET", "/health", [this](const httplib::Request&) { return json{{"status", "ok"}, {"model", model_name_}, {"step", scorer_.step()}}; });
  route("GET", "/v1/models", [model_object](const httplib::Request&) { return json{{"object", "list"}, {"data", {model_object()}}}; });
  route("GET", R"(/v1/models/(.+))", [this, model_object](const httplib::Request& req) {
    if (req.matches[1] != model_name_)
      throw ApiError(404, "the model '" + std::string(req.matches[1]) + "' does not exist; this server serves '" + model_name_ + "'",
                     "invalid_request_error", "model", "model_not_found");
    return model_object();
  });
  route("GET", "/tokenizer_info", [this, &tokenizer, eos](const httplib::Request&) {
    return json{{"eos_token", eos.empty() ? json(nullptr) : json(eos)}, {"bos_token", nullptr}, {"pad_token", nullptr},
                {"name", tokenizer.name()}, {"vocab_size", tokenizer.vocab_size()}, {"model_max_length", scorer_.context()}};
  });
  route("POST", "/tokenize", [encode](const httplib::Request& req) {
    auto body = parse_body(req);
    if (!body.contains("prompt") || !body["prompt"].is_string()) throw bad_request("tokenize: \"prompt\" must be a string", "prompt");
    return json{{"tokens", encode(body["prompt"].get<std::string>())}};
  });
  route("POST", "/detokenize", [&tokenizer, token_ids](const httplib::Request& req) {
    auto body = parse_body(req);
    if (!body.contains("tokens") || !body["tokens"].is_array()) throw bad_request("detokenize: \"tokens\" must be a list of ids", "tokens");
    return json{{"prompt", tokenizer.decode(token_ids(body["tokens"], "tokens"))}};
  });

  route("POST", "/v1/completions", [this, encode, token_ids, token_text, &tokenizer](const httplib::Request& req) {
    const RequestWatch watch(req, request_timeout_, stopping_);
    auto body = parse_body(req);
    // Prompts: a string, a list of ids, or a batch (list) of either.
    if (!body.contains("prompt")) throw bad_request("completions: \"prompt\" is required", "prompt");
    const json& prompt = body["prompt"];
    std::vector<std::vector<uint32_t>> prompts;
    auto one_prompt = [&](const json& p) {
      if (p.is_string()) return encode(p.get<std::string>());
      if (p.is_array()) return token_ids(p, "prompt");
      throw bad_request("prompt: expected a string, a list of token ids, or a list of those", "prompt");
    };
    if (prompt.is_array() && !prompt.empty() && (prompt[0].is_string() || prompt[0].is_array()))
      for (auto& p : prompt) prompts.push_back(one_prompt(p));
    else
      prompts.push_back(one_prompt(prompt));

    const json max_tokens_field = body.value("max_tokens", json(16));
    if (!max_tokens_field.is_number_integer() || max_tokens_field.get<int64_t>() < 0)
      throw bad_request("max_tokens: expected an integer >= 0, got " + max_tokens_field.dump(), "max_tokens");
    const int64_t max_tokens = max_tokens_field.get<int64_t>();
    // The generator slides its window over the context, so the prompt's length does not bound this;
    // the cap keeps one request from holding the model (the deadline stops the rest).
    if (max_tokens > max_tokens_)
      throw bad_request("max_tokens: " + std::to_string(max_tokens) + " is more than the " + std::to_string(max_tokens_) +
                            " tokens this server generates per completion (moelab serve --max-tokens)",
                        "max_tokens");
    if (body.contains("echo") && !body["echo"].is_boolean()) throw bad_request("echo: expected a boolean", "echo");
    const bool echo = body.value("echo", false);
    const json logprobs_field = body.value("logprobs", json(nullptr));
    if (!logprobs_field.is_null() && !logprobs_field.is_number_integer()) throw bad_request("logprobs: expected an integer or null", "logprobs");
    const bool want_logprobs = logprobs_field.is_number_integer();
    if (body.contains("temperature") && body["temperature"].is_number() && body["temperature"].get<double>() > 0)
      throw bad_request("temperature: only greedy decoding (temperature 0) is served", "temperature");
    std::vector<std::string> stop;
    if (body.contains("stop") && body["stop"].is_string()) stop.push_back(body["stop"]);
    else if (body.contains("stop") && body["stop"].is_array())
      for (auto& s : body["stop"])
        if (s.is_string()) stop.push_back(s);
    for (size_t i = 0; i < prompts.size(); ++i)
      if (prompts[i].empty()) throw bad_request("prompt " + std::to_string(i) + " is empty", "prompt");

    const BetweenPasses between_passes = [&watch] { watch.check(); };
    json choices = json::array();
    size_t prompt_tokens = 0, completion_tokens = 0;
    for (size_t i = 0; i < prompts.size(); ++i) {
      const auto& ids = prompts[i];
      std::vector<uint32_t> generated;
      TokenScores scores;
      {
        auto lock = lock_model(watch);
        if (max_tokens == 1 || (max_tokens == 0 && echo)) {
          scores = scorer_.score(ids, between_passes);
          if (max_tokens == 1) generated.push_back(scores.next_token);
        } else {
          generated = scorer_.generate(ids, max_tokens, stop, between_passes);
          std::vector<uint32_t> all = ids;
          all.insert(all.end(), generated.begin(), generated.end());
          if (want_logprobs) scores = scorer_.score(all, between_passes);
        }
      }
      std::string text = tokenizer.decode(generated);
      json choice{{"index", i}, {"text", echo ? tokenizer.decode(ids) + text : text},
                  {"finish_reason", int64_t(generated.size()) < max_tokens ? "stop" : "length"}, {"logprobs", nullptr}};
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
    const int64_t created = unix_seconds();
    return json{{"id", "cmpl-moelab-" + std::to_string(created)}, {"object", "text_completion"}, {"created", created},
                {"model", model_name_}, {"choices", choices},
                {"usage", {{"prompt_tokens", prompt_tokens}, {"completion_tokens", completion_tokens},
                           {"total_tokens", prompt_tokens + completion_tokens}}}};
  });

  // What cpp-httplib answers itself (no such route, a body over the limit, a malformed request)
  // gets the error object too; answers that already carry one are left alone.
  http_->set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    auto known = methods_.find(req.path);
    if (res.status == 404 && known != methods_.end()) {
      res.set_header("Allow", known->second);
      reply(res, 405, error_object(req.method + " " + req.path + ": method not allowed (use " + known->second + ")",
                                   "invalid_request_error", nullptr, "method_not_allowed"));
    } else if (res.status == 404) {
      reply(res, 404, error_object("unknown path: " + req.method + " " + req.path, "invalid_request_error", nullptr, "unknown_url"));
    } else if (res.status == 413) {
      reply(res, 413, error_object("the request body is larger than the " + std::to_string(kMaxBodyBytes >> 20) +
                                       " MiB this server accepts",
                                   "invalid_request_error", nullptr, "request_too_large"));
    } else {
      reply(res, res.status, error_object("HTTP " + std::to_string(res.status) + " for " + req.method + " " + req.path,
                                          res.status < 500 ? "invalid_request_error" : "server_error", nullptr, nullptr));
    }
    return httplib::Server::HandlerResponse::Handled;
  }));
}

}  // namespace moelab
