// The KERN paper's published figures (reports/reference/*.csv, copied from its tables and text) and
// the lookups that put them beside a sweep's numbers. A job matches a paper figure only when its
// model is one of the paper's (125M, 350M or 1.3B active), with the same sequence length, experts,
// top-k and expert size; the dataset is read from the data path (arxiv, else the paper's Books3).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "engine/config/job_config.hpp"

namespace moelab {

struct PaperKey {
  std::string active_params;  // "125M" | "350M" | "1.3B"
  std::string dataset;        // "books3" | "arxiv"
  int seq_len = 0;
  std::string router;         // router_label()
  int experts = 0, top_k = 0, expert_size = 0;  // after granularity; 0 for dense

  std::string describe() const;  // e.g. "125M books3 seq 512 64-8-384"
};

// None when the job's model is not one of the paper's.
std::optional<PaperKey> paper_key(const JobConfig& config);

struct PaperSeedStat {
  double mean = 0, variance = 0;
};

class PaperReference {
 public:
  // Reads every CSV in dir; throws naming the file when one is missing or malformed.
  explicit PaperReference(const std::string& dir = default_dir());
  static std::string default_dir();  // <source>/reports/reference, or $MOELAB_REFERENCE_DIR

  // Validation loss by training step (Table 3, the 5K/50K figures of the text, Figure 5, Table 4's means).
  std::map<int64_t, double> loss_by_step(const PaperKey& key) const;
  // Table 4: mean and variance over three seeds at each step.
  std::map<int64_t, PaperSeedStat> seed_stats(const PaperKey& key) const;
  // Table 1: zero-shot accuracy in percent per task, and "avg".
  std::map<std::string, double> downstream(const PaperKey& key) const;

 private:
  struct Csv {
    std::vector<std::string> header;
    std::vector<std::map<std::string, std::string>> rows;  // column -> cell
  };
  std::map<std::string, Csv> files_;  // by file stem
  const Csv& file(const std::string& stem) const;
};

}  // namespace moelab
