// Memory-mapped token files and the `moelab data prepare` step that writes them. Torch-free.
//
// A prepared dataset directory holds train.bin and val.bin (little-endian uint16 tokens when the
// vocabulary fits, else uint32) and meta.json:
//   {"format": "moelab-tokens-v1", "tokenizer": "gpt2", "vocab_size": 50257, "dtype": "uint16",
//    "source": "<corpus name or path>", "val_fraction": 0.1,
//    "files": {"train": {"path": "train.bin", "tokens": N, "sha256": "..."}, "val": {...}}}
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace moelab {

struct PrepareOptions {
  std::string corpus;          // a built-in corpus name ("austen") or a path to a UTF-8 text file
  std::string tokenizer = "gpt2";
  std::string out_dir;
  double val_fraction = 0.1;   // the last fraction of the text (split at a paragraph boundary) is validation
  size_t chunk_bytes = 1 << 20;  // text encoded per progress update; chunking never changes the tokens
};

struct PrepareSummary {
  uint64_t train_tokens = 0, val_tokens = 0;
  std::string meta_path;
};

// Tokenizes the corpus and writes train.bin, val.bin, meta.json into out_dir (created if needed).
// Files are written to temporaries and renamed. Throws std::runtime_error naming the missing file
// or unknown corpus.
PrepareSummary prepare_dataset(const PrepareOptions& opts);

// Path of a built-in corpus ("austen" -> <assets_dir()>/corpus/austen.txt), or the argument itself
// if it is not a built-in name.
std::string resolve_corpus(const std::string& name_or_path);

// A read-only memory map of one token file. The constructor reads meta.json in the same directory
// and throws std::runtime_error naming the file when it is missing, when meta.json lacks an entry
// for it, or when its size disagrees with the recorded token count ("truncated").
class TokenFile {
 public:
  explicit TokenFile(const std::string& bin_path);
  ~TokenFile();
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  size_t size() const { return tokens_; }
  uint32_t vocab_size() const { return vocab_size_; }
  const std::string& tokenizer() const { return tokenizer_; }
  const std::string& path() const { return path_; }
  // Copies tokens [start, start + n) widened to int64 (the dtype embedding lookups take).
  void read(size_t start, size_t n, int64_t* out) const;
  // SHA-256 of the file's bytes; equals meta.json's entry unless the file was altered.
  std::string checksum() const;

 private:
  std::string path_, tokenizer_;
  size_t tokens_ = 0;
  uint32_t vocab_size_ = 0;
  int bytes_per_token_ = 2;
  const unsigned char* data_ = nullptr;
  size_t mapped_bytes_ = 0;
};

}  // namespace moelab
