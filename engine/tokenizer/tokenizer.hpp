// Tokenizers: GPT-2 byte-level BPE (the paper's) and a plain byte-level one. Torch-free.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moelab {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string name() const = 0;              // "gpt2" | "bytes"
  virtual uint32_t vocab_size() const = 0;           // gpt2: 50257 (50256 ranks + <|endoftext|>); bytes: 256
  virtual uint32_t end_of_text() const = 0;          // gpt2: 50256; bytes: none, returns 0 (NUL)
  virtual std::vector<uint32_t> encode(std::string_view text) const = 0;  // ordinary text, no special tokens
  // Arbitrary bytes must round-trip: decode(encode(s)) == s for any byte string s (valid UTF-8 or not).
  virtual std::string decode(std::span<const uint32_t> ids) const = 0;
};

// Directory holding fetched assets (gpt2.tiktoken, corpus/): $MOELAB_ASSETS, else the build-time default.
std::string assets_dir();

// "gpt2" reads <assets_dir()>/gpt2.tiktoken; "bytes" needs nothing. Unknown name or a missing or
// malformed ranks file throws std::runtime_error naming it.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name);

}  // namespace moelab
