#include "engine/data/token_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "engine/config/hashing.hpp"
#include "engine/tokenizer/tokenizer.hpp"

namespace moelab {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const char* kFormat = "moelab-tokens-v1";
const std::vector<std::string> kBuiltInCorpora = {"austen"};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open corpus");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Where validation starts: just after the paragraph break nearest to the requested share of the text.
size_t validation_start(const std::string& text, double val_fraction) {
  size_t target = size_t(text.size() * (1.0 - val_fraction));
  size_t before = text.rfind("\n\n", target), after = text.find("\n\n", target);
  size_t best = target;
  if (before != std::string::npos) best = before + 2;
  if (after != std::string::npos && (before == std::string::npos || after - target < target - before)) best = after + 2;
  return std::min(best, text.size());
}

// Writes tokens as little-endian integers of `bytes` each, to a temporary renamed into place.
void write_tokens(const fs::path& path, const std::vector<uint32_t>& tokens, int bytes) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (bytes == 2) {
      std::vector<uint16_t> narrow(tokens.begin(), tokens.end());
      out.write(reinterpret_cast<const char*>(narrow.data()), narrow.size() * 2);
    } else {
      out.write(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 4);
    }
    if (!out.flush()) throw std::runtime_error(tmp.string() + ": cannot write");
  }
  fs::rename(tmp, path);
}

// Where a chunk may end without changing the tokens: inside the whitespace after a paragraph break,
// one character before the next word. The pre-tokenizer makes the run minus its last character one
// piece whether or not the text goes on, and the last character starts the next piece either way.
size_t chunk_end(const std::string& text, size_t from) {
  size_t paragraph = text.find("\n\n", from);
  if (paragraph == std::string::npos) return text.size();
  size_t word = text.find_first_not_of(" \t\r\n\v\f", paragraph);
  return word == std::string::npos ? text.size() : word - 1;
}

// Encodes a chunk at a time so that a long corpus shows progress.
std::vector<uint32_t> encode_with_progress(const Tokenizer& tokenizer, const std::string& text, size_t chunk_bytes,
                                           const char* what) {
  std::vector<uint32_t> ids;
  for (size_t start = 0; start < text.size();) {
    size_t end = chunk_end(text, std::min(text.size(), start + chunk_bytes));
    auto part = tokenizer.encode(std::string_view(text).substr(start, end - start));
    ids.insert(ids.end(), part.begin(), part.end());
    // On a terminal the line updates in place; in a log only the final count is written.
    if (isatty(STDERR_FILENO) || end == text.size())
      std::fprintf(stderr, "%s[data] %s: %zu / %zu bytes, %zu tokens%s", isatty(STDERR_FILENO) ? "\r" : "", what, end,
                   text.size(), ids.size(), end == text.size() ? "\n" : "");
    start = end;
  }
  return ids;
}

}  // namespace

std::string resolve_corpus(const std::string& name_or_path) {
  for (auto& name : kBuiltInCorpora)
    if (name_or_path == name) return assets_dir() + "/corpus/" + name + ".txt";
  if (!fs::exists(name_or_path)) {
    std::string names;
    for (auto& name : kBuiltInCorpora) names += (names.empty() ? "" : ", ") + name;
    throw std::runtime_error(name_or_path + ": no such corpus file (built-in corpora: " + names + ")");
  }
  return name_or_path;
}

PrepareSummary prepare_dataset(const PrepareOptions& opts) {
  if (opts.val_fraction <= 0 || opts.val_fraction >= 1)
    throw std::runtime_error("--val-fraction must be in (0, 1), got " + std::to_string(opts.val_fraction));
  auto tokenizer = make_tokenizer(opts.tokenizer);
  const std::string corpus_path = resolve_corpus(opts.corpus);
  if (!fs::exists(corpus_path)) throw std::runtime_error(corpus_path + ": corpus missing; run scripts/setup.sh");
  const std::string text = read_text(corpus_path);
  if (text.empty()) throw std::runtime_error(corpus_path + ": corpus is empty");
  const size_t split = validation_start(text, opts.val_fraction);

  const fs::path out(opts.out_dir);
  fs::create_directories(out);
  const int bytes = tokenizer->vocab_size() <= 65536 ? 2 : 4;
  json files;
  PrepareSummary summary;
  for (auto [name, begin, end] : {std::tuple{"train", size_t(0), split}, std::tuple{"val", split, text.size()}}) {
    auto ids = encode_with_progress(*tokenizer, text.substr(begin, end - begin), opts.chunk_bytes, name);
    const fs::path file = out / (std::string(name) + ".bin");
    write_tokens(file, ids, bytes);
    files[name] = {{"path", file.filename().string()}, {"tokens", ids.size()}, {"sha256", file_sha256(file.string())}};
    (std::string(name) == "train" ? summary.train_tokens : summary.val_tokens) = ids.size();
  }
  json meta{{"format", kFormat},          {"tokenizer", tokenizer->name()},
            {"vocab_size", tokenizer->vocab_size()}, {"dtype", bytes == 2 ? "uint16" : "uint32"},
            {"source", opts.corpus},      {"val_fraction", opts.val_fraction},
            {"files", files}};
  summary.meta_path = (out / "meta.json").string();
  std::ofstream(summary.meta_path + ".tmp") << meta.dump(2) << "\n";
  fs::rename(summary.meta_path + ".tmp", summary.meta_path);
  return summary;
}

TokenFile::TokenFile(const std::string& bin_path, const std::string& key) try : path_(bin_path) {
  const fs::path bin(bin_path);
  if (!fs::exists(bin)) throw std::runtime_error(bin_path + ": token file not found (make it with `moelab data prepare`)");
  const fs::path meta_path = bin.parent_path() / "meta.json";
  if (!fs::exists(meta_path)) throw std::runtime_error(bin_path + ": no meta.json beside it (" + meta_path.string() + ")");
  json meta;
  try {
    meta = json::parse(std::ifstream(meta_path));
  } catch (const std::exception& e) {
    throw std::runtime_error(meta_path.string() + ": unreadable: " + e.what());
  }
  const std::string name = bin.filename().string();
  const json files = meta.value("files", json::object());
  const json* entry = nullptr;
  for (auto& [split, file] : files.items())
    if (file.value("path", "") == name) entry = &file;
  if (meta.value("format", "") != kFormat || !entry)
    throw std::runtime_error(bin_path + ": not listed in " + meta_path.string());
  tokenizer_ = meta.value("tokenizer", "");
  vocab_size_ = meta.value("vocab_size", 0u);
  bytes_per_token_ = meta.value("dtype", "") == "uint16" ? 2 : 4;
  tokens_ = entry->value("tokens", size_t(0));
  const size_t expected = tokens_ * bytes_per_token_, actual = fs::file_size(bin);
  if (actual != expected)
    throw std::runtime_error(bin_path + ": truncated or altered: " + std::to_string(actual) + " bytes, meta.json records " +
                             std::to_string(tokens_) + " tokens (" + std::to_string(expected) + " bytes)");
  if (expected == 0) return;
  int fd = ::open(bin_path.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error(bin_path + ": cannot open: " + std::strerror(errno));
  void* map = ::mmap(nullptr, expected, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) throw std::runtime_error(bin_path + ": cannot map: " + std::strerror(errno));
  data_ = {static_cast<const unsigned char*>(map), Unmap{expected}};
  check_ids_in_vocabulary();
} catch (const std::runtime_error& e) {
  if (key.empty()) throw;
  throw std::runtime_error(key + ": " + e.what());
}

void TokenFile::Unmap::operator()(const unsigned char* data) const { ::munmap(const_cast<unsigned char*>(data), bytes); }

uint32_t TokenFile::token_at(size_t i) const {
  const unsigned char* p = data_.get() + i * bytes_per_token_;
  uint32_t v = p[0] | (p[1] << 8);
  if (bytes_per_token_ == 4) v |= (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
  return v;
}

// One branch-free pass for the largest id (vectorised; about as fast as the file can be read), and
// a second pass for where the first bad id is only when there is one.
void TokenFile::check_ids_in_vocabulary() {
  uint32_t largest = 0;
  for (size_t i = 0; i < tokens_; ++i) largest = std::max(largest, token_at(i));
  max_token_ = largest;
  if (largest < vocab_size_) return;
  size_t at = 0;
  while (token_at(at) < vocab_size_) ++at;
  throw std::runtime_error(path_ + ": token " + std::to_string(token_at(at)) + " at position " + std::to_string(at) +
                           " is outside the vocabulary of " + std::to_string(vocab_size_) +
                           " that meta.json records: the file is damaged or is not this dataset's (check it with "
                           "`moelab data verify " + fs::path(path_).parent_path().string() + "`)");
}

void TokenFile::read(size_t start, size_t n, int64_t* out) const {
  if (start + n > tokens_)
    throw std::out_of_range(path_ + ": read of tokens [" + std::to_string(start) + ", " + std::to_string(start + n) +
                            ") past the end (" + std::to_string(tokens_) + ")");
  for (size_t i = 0; i < n; ++i) out[i] = token_at(start + i);
}

std::string TokenFile::checksum() const { return file_sha256(path_); }

std::vector<FileCheck> verify_dataset(const std::string& dir) {
  const fs::path meta_path = fs::path(dir) / "meta.json";
  if (!fs::exists(meta_path)) throw std::runtime_error(meta_path.string() + ": not found (is " + dir + " a prepared dataset?)");
  json meta;
  try {
    meta = json::parse(std::ifstream(meta_path));
  } catch (const std::exception& e) {
    throw std::runtime_error(meta_path.string() + ": unreadable: " + e.what());
  }
  if (meta.value("format", "") != kFormat || !meta.contains("files") || !meta["files"].is_object())
    throw std::runtime_error(meta_path.string() + ": not a moelab dataset record (format " + kFormat + ")");
  std::vector<FileCheck> checks;
  for (auto& [split, entry] : meta["files"].items()) {
    FileCheck check{split, (fs::path(dir) / entry.value("path", "")).string()};
    try {
      TokenFile file(check.path);  // presence, size and ids
      check.tokens = file.size();
      const std::string recorded = entry.value("sha256", "");
      if (const std::string actual = file.checksum(); actual != recorded)
        check.problem = "SHA-256 " + actual + " differs from meta.json's " + recorded;
    } catch (const std::exception& e) {
      check.problem = e.what();
    }
    checks.push_back(check);
  }
  return checks;
}

}  // namespace moelab
