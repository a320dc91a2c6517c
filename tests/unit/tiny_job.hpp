// The tests' tiny KERN job: 2 layers of width 32, 4 experts with top-2, on bytes-tokenized token
// files in data_dir (train.bin, val.bin). Each test gives its own name, seed and train section.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>

namespace moelab::testing {

inline nlohmann::json tiny_kern_job(const std::filesystem::path& data_dir, const std::string& name, int seed,
                                    nlohmann::json train) {
  return nlohmann::json{{"name", name},
                        {"seed", seed},
                        {"model",
                         {{"vocab_size", 256}, {"seq_len", 32}, {"layers", 2}, {"d_model", 32}, {"heads", 4},
                          {"router", "kern"}, {"experts", 4}, {"top_k", 2}, {"expert_size", 32}}},
                        {"train", std::move(train)},
                        {"data",
                         {{"train", (data_dir / "train.bin").string()}, {"val", (data_dir / "val.bin").string()},
                          {"tokenizer", "bytes"}}}};
}

}  // namespace moelab::testing
