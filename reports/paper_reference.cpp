#include "reports/paper_reference.hpp"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace moelab {
namespace fs = std::filesystem;

namespace {

// One CSV line; fields may be quoted ("0.9,0.95") with doubled quotes inside.
std::vector<std::string> split_csv_line(const std::string& line) {
  std::vector<std::string> fields(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (c == '"' && quoted && i + 1 < line.size() && line[i + 1] == '"') {
      fields.back() += '"';
      ++i;
    } else if (c == '"') {
      quoted = !quoted;
    } else if (c == ',' && !quoted) {
      fields.emplace_back();
    } else if (c != '\r') {
      fields.back() += c;
    }
  }
  return fields;
}

bool is_number(const std::string& text) {
  char* end = nullptr;
  std::strtod(text.c_str(), &end);
  return !text.empty() && *end == '\0';
}

// Step columns ("5000", ...) of a row, as step -> value, skipping blanks.
template <class Row>
std::map<int64_t, double> step_columns(const std::vector<std::string>& header, const Row& row) {
  std::map<int64_t, double> by_step;
  for (auto& column : header)
    if (is_number(column) && is_number(row.at(column))) by_step[std::stoll(column)] = std::stod(row.at(column));
  return by_step;
}

std::string moe_shape(const PaperKey& k) {
  return k.experts ? std::to_string(k.experts) + "-" + std::to_string(k.top_k) + "-" + std::to_string(k.expert_size)
                   : std::string("dense");
}

bool is_paper_baseline_shape(const PaperKey& k) { return k.experts == 64 && k.top_k == 8 && k.expert_size == 384; }

}  // namespace

std::string PaperKey::describe() const {
  return active_params + " " + dataset + " seq " + std::to_string(seq_len) + " " + moe_shape(*this);
}

std::optional<PaperKey> paper_key(const JobConfig& config) {
  const auto& m = config.model;
  struct Size { int layers, d_model, heads; const char* active; };
  static const Size sizes[] = {{12, 768, 12, "125M"}, {24, 1024, 16, "350M"}, {24, 2048, 16, "1.3B"}};
  if (m.vocab_size != 50257) return std::nullopt;
  for (auto& size : sizes) {
    if (m.layers != size.layers || m.d_model != size.d_model || m.heads != size.heads) continue;
    PaperKey key{.active_params = size.active,
                 .dataset = config.data.train.find("arxiv") != std::string::npos ? "arxiv" : "books3",
                 .seq_len = m.seq_len,
                 .router = m.router_label()};
    if (m.is_moe()) {
      key.experts = m.total_experts();
      key.top_k = m.active_experts();
      key.expert_size = m.expert_hidden();
    }
    return key;
  }
  return std::nullopt;
}

std::string PaperReference::default_dir() {
  if (const char* dir = std::getenv("MOELAB_REFERENCE_DIR")) return dir;
  return std::string(MOELAB_SOURCE_DIR) + "/reports/reference";
}

PaperReference::PaperReference(const std::string& dir) {
  for (const char* stem : {"val_loss_by_step", "router_checkpoints", "sparsity", "seed_variance", "downstream"}) {
    const fs::path path = fs::path(dir) / (std::string(stem) + ".csv");
    std::ifstream in(path);
    if (!in) throw std::runtime_error(path.string() + ": the paper's reference figures are missing");
    Csv csv;
    for (std::string line; std::getline(in, line);) {
      if (line.empty() || line[0] == '#') continue;
      auto fields = split_csv_line(line);
      if (csv.header.empty()) {
        csv.header = fields;
        continue;
      }
      if (fields.size() != csv.header.size())
        throw std::runtime_error(path.string() + ": a row has " + std::to_string(fields.size()) + " fields, the header " +
                                 std::to_string(csv.header.size()) + ": " + line);
      auto& row = csv.rows.emplace_back();
      for (size_t i = 0; i < fields.size(); ++i) row[csv.header[i]] = fields[i];
    }
    files_[stem] = std::move(csv);
  }
}

const PaperReference::Csv& PaperReference::file(const std::string& stem) const { return files_.at(stem); }

std::map<int64_t, double> PaperReference::loss_by_step(const PaperKey& k) const {
  std::map<int64_t, double> loss;  // the first source to give a step wins
  auto take = [&](const std::map<int64_t, double>& more) { loss.insert(more.begin(), more.end()); };
  const bool books3_125m = k.active_params == "125M" && k.dataset == "books3";
  if (books3_125m && k.seq_len == 1024 && k.expert_size == 384) {
    const auto& table = file("val_loss_by_step");
    for (auto& row : table.rows)
      if (row.at("router") == k.router && std::stoi(row.at("total_experts")) == k.experts &&
          std::stoi(row.at("active_experts")) == k.top_k)
        take(step_columns(table.header, row));
  }
  const auto& quoted = file("router_checkpoints");
  for (auto& row : quoted.rows) {
    const bool shape = k.experts ? row.at("experts") == std::to_string(k.experts) && row.at("top_k") == std::to_string(k.top_k) &&
                                       row.at("expert_size") == std::to_string(k.expert_size)
                                 : row.at("experts").empty();
    if (!shape || row.at("router") != k.router || row.at("dataset") != k.dataset ||
        row.at("train_len") != std::to_string(k.seq_len) || row.at("active_params") != k.active_params)
      continue;
    if (is_number(row.at("loss_5k"))) loss.emplace(5000, std::stod(row.at("loss_5k")));
    if (is_number(row.at("loss_50k"))) loss.emplace(50000, std::stod(row.at("loss_50k")));
  }
  if (k.active_params == "125M" && k.seq_len == 512 && k.top_k == 8 && k.expert_size == 384) {
    for (auto& row : file("sparsity").rows) {
      const auto column = std::to_string(k.experts);
      if (row.at("dataset") == k.dataset && row.at("router") == k.router && row.count(column) && is_number(row.at(column)))
        loss.emplace(50000, std::stod(row.at(column)));
    }
  }
  for (auto& [step, stat] : seed_stats(k)) loss.emplace(step, stat.mean);
  return loss;
}

std::map<int64_t, PaperSeedStat> PaperReference::seed_stats(const PaperKey& k) const {
  std::map<int64_t, PaperSeedStat> stats;
  if (k.active_params != "125M" || k.dataset != "books3" || k.seq_len != 512 || (k.experts && !is_paper_baseline_shape(k)))
    return stats;
  const auto& table = file("seed_variance");
  for (auto& row : table.rows) {
    if (row.at("router") != k.router) continue;
    for (auto& [step, value] : step_columns(table.header, row))
      (row.at("stat") == "mean" ? stats[step].mean : stats[step].variance) = value;
  }
  return stats;
}

std::map<std::string, double> PaperReference::downstream(const PaperKey& k) const {
  std::map<std::string, double> accuracy;
  if (k.seq_len != 1024 || (k.experts && (k.experts != 64 || k.top_k != 8))) return accuracy;
  const auto& table = file("downstream");
  for (auto& row : table.rows) {
    if (row.at("router") != k.router || row.at("active_params") != k.active_params) continue;
    for (auto& column : table.header)
      if (is_number(row.at(column)) && column != "total_params" && column != "active_params")
        accuracy[column] = std::stod(row.at(column));
  }
  return accuracy;
}

}  // namespace moelab
