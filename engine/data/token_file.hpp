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
#include <memory>
#include <string>
#include <vector>

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
// for it, when its size disagrees with the recorded token count ("truncated"), or when it holds an
// id outside the recorded vocabulary (found by one pass over the file: a damaged file of the right
// size would otherwise fail inside the model's embedding, steps later, naming neither). `key`, when
// given, is the config field that named the file ("data.train"); the errors then start with it.
class TokenFile {
 public:
  explicit TokenFile(const std::string& bin_path, const std::string& key = "");
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  size_t size() const { return tokens_; }
  uint32_t vocab_size() const { return vocab_size_; }
  uint32_t max_token() const { return max_token_; }  // the largest id in the file (0 when empty)
  const std::string& tokenizer() const { return tokenizer_; }
  const std::string& path() const { return path_; }
  // Copies tokens [start, start + n) widened to int64 (the dtype embedding lookups take).
  void read(size_t start, size_t n, int64_t* out) const;
  // SHA-256 of the file's bytes; equals meta.json's entry unless the file was altered.
  std::string checksum() const;

 private:
  uint32_t token_at(size_t i) const;
  void check_ids_in_vocabulary();
  std::string path_, tokenizer_;
  size_t tokens_ = 0;
  uint32_t vocab_size_ = 0, max_token_ = 0;
  int bytes_per_token_ = 2;
  // The mapping is unmapped by its deleter, also when the constructor refuses the file after mapping it.
  struct Unmap {
    size_t bytes;
    void operator()(const unsigned char* data) const;
  };
  std::unique_ptr<const unsigned char, Unmap> data_;
};

// `moelab data verify DIR`: every file meta.json lists, checked against its record (presence, size,
// SHA-256, ids within the vocabulary). One entry per file; `problem` is empty when it is intact.
struct FileCheck {
  std::string split, path, problem;
  uint64_t tokens = 0;
};
std::vector<FileCheck> verify_dataset(const std::string& dir);

}  // namespace moelab
