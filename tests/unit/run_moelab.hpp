// Runs the real `moelab` binary from a test: its exit code and what it printed (stdout + stderr).
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace moelab::testing {

struct CliResult {
  int code;
  std::string output;
};

// `args` is a shell fragment appended to the binary's path.
inline CliResult run_moelab(const std::string& args) {
  FILE* pipe = popen((std::string(MOELAB_BIN) + " " + args + " 2>&1").c_str(), "r");
  std::string output;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof buffer, pipe)) output.append(buffer, n);
  int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), output};
}

// Token files of the first `bytes` of the embedded Austen corpus in <dir>/data, made by
// `moelab data prepare` as a user would. The result says why when it failed.
inline CliResult prepare_corpus_slice(const std::filesystem::path& dir, size_t bytes, const std::string& tokenizer = "bytes") {
  std::ifstream corpus(std::string(MOELAB_ASSETS_DIR) + "/corpus/austen.txt");
  if (!corpus) return {1, "the Austen corpus is missing from " MOELAB_ASSETS_DIR "/corpus: run scripts/setup.sh"};
  std::string text(bytes, '\0');
  corpus.read(text.data(), text.size());
  text.resize(corpus.gcount());
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "slice.txt") << text;
  return run_moelab("data prepare --corpus " + (dir / "slice.txt").string() + " --tokenizer " + tokenizer + " --out " +
                    (dir / "data").string());
}

}  // namespace moelab::testing
