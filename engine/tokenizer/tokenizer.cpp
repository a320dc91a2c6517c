#include "engine/tokenizer/tokenizer.hpp"

#include <cstdlib>
#include <fstream>
#include <limits>
#include <stdexcept>
#include <unordered_map>

#include "engine/tokenizer/pretokenize.hpp"

namespace moelab {
namespace {

class ByteTokenizer final : public Tokenizer {
 public:
  std::string name() const override { return "bytes"; }
  uint32_t vocab_size() const override { return 256; }
  uint32_t end_of_text() const override { return 0; }
  std::vector<uint32_t> encode(std::string_view text) const override {
    return std::vector<uint32_t>(reinterpret_cast<const unsigned char*>(text.data()),
                                 reinterpret_cast<const unsigned char*>(text.data()) + text.size());
  }
  std::string decode(std::span<const uint32_t> ids) const override {
    std::string out;
    out.reserve(ids.size());
    for (auto id : ids) {
      if (id > 255) throw std::out_of_range("bytes tokenizer: id " + std::to_string(id) + " is not a byte");
      out += char(id);
    }
    return out;
  }
};

std::string base64_decode(std::string_view in) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  unsigned bits = 0;
  int count = 0;
  for (char c : in) {
    if (c == '=') break;
    int v = value(c);
    if (v < 0) throw std::invalid_argument("bad base64 character");
    bits = (bits << 6) | unsigned(v), count += 6;
    if (count >= 8) count -= 8, out += char((bits >> count) & 0xFF);
  }
  return out;
}

// GPT-2's byte-level BPE as tiktoken's "gpt2" encoding applies it: split text with GPT-2's
// pre-tokenizer pattern, then merge each piece's bytes by rank, lowest rank first.
class Gpt2Tokenizer final : public Tokenizer {
 public:
  explicit Gpt2Tokenizer(const std::string& ranks_path) {
    std::ifstream in(ranks_path);
    if (!in) throw std::runtime_error(ranks_path + ": GPT-2 BPE ranks not found; run scripts/setup.sh");
    std::string token;
    uint32_t rank;
    while (in >> token >> rank) {
      auto bytes = base64_decode(token);
      if (rank != bytes_of_.size()) throw std::runtime_error(ranks_path + ": ranks are not consecutive at " + token);
      rank_of_.emplace(bytes, rank);
      bytes_of_.push_back(std::move(bytes));
    }
    if (bytes_of_.size() != kEndOfText)
      throw std::runtime_error(ranks_path + ": expected " + std::to_string(kEndOfText) + " ranks, found " +
                               std::to_string(bytes_of_.size()));
  }

  std::string name() const override { return "gpt2"; }
  uint32_t vocab_size() const override { return kEndOfText + 1; }
  uint32_t end_of_text() const override { return kEndOfText; }

  std::vector<uint32_t> encode(std::string_view text) const override {
    std::vector<uint32_t> ids;
    for (auto piece : gpt2_pieces(text)) {
      auto cached = cache_.find(std::string(piece));
      if (cached == cache_.end()) cached = cache_.emplace(std::string(piece), merge(piece)).first;
      ids.insert(ids.end(), cached->second.begin(), cached->second.end());
    }
    return ids;
  }

  std::string decode(std::span<const uint32_t> ids) const override {
    std::string out;
    for (auto id : ids) {
      if (id == kEndOfText)
        out += "<|endoftext|>";
      else if (id < bytes_of_.size())
        out += bytes_of_[id];
      else
        throw std::out_of_range("gpt2 tokenizer: id " + std::to_string(id) + " is outside the vocabulary");
    }
    return out;
  }

 private:
  static constexpr uint32_t kEndOfText = 50256;
  static constexpr uint32_t kNoRank = std::numeric_limits<uint32_t>::max();

  uint32_t rank(std::string_view bytes) const {
    auto it = rank_of_.find(std::string(bytes));
    return it == rank_of_.end() ? kNoRank : it->second;
  }

  // Starts of the current parts; repeatedly join the adjacent pair whose bytes have the lowest rank.
  std::vector<uint32_t> merge(std::string_view piece) const {
    if (auto whole = rank(piece); whole != kNoRank) return {whole};
    std::vector<size_t> starts(piece.size() + 1);
    for (size_t i = 0; i <= piece.size(); ++i) starts[i] = i;
    while (starts.size() > 2) {
      uint32_t best = kNoRank;
      size_t best_at = 0;
      for (size_t i = 0; i + 2 < starts.size(); ++i) {
        uint32_t r = rank(piece.substr(starts[i], starts[i + 2] - starts[i]));
        if (r < best) best = r, best_at = i;
      }
      if (best == kNoRank) break;
      starts.erase(starts.begin() + best_at + 1);
    }
    std::vector<uint32_t> ids;
    for (size_t i = 0; i + 1 < starts.size(); ++i) ids.push_back(rank(piece.substr(starts[i], starts[i + 1] - starts[i])));
    return ids;
  }

  std::unordered_map<std::string, uint32_t> rank_of_;
  std::vector<std::string> bytes_of_;
  mutable std::unordered_map<std::string, std::vector<uint32_t>> cache_;
};

}  // namespace

std::string assets_dir() {
  if (const char* env = std::getenv("MOELAB_ASSETS"); env && *env) return env;
  return MOELAB_ASSETS_DIR;
}

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name) {
  if (name == "bytes") return std::make_unique<ByteTokenizer>();
  if (name == "gpt2") return std::make_unique<Gpt2Tokenizer>(assets_dir() + "/gpt2.tiktoken");
  throw std::invalid_argument("unknown tokenizer \"" + name + "\" (expected gpt2 or bytes)");
}

}  // namespace moelab
