#include "engine/train/checkpoint.hpp"

#include "engine/config/hashing.hpp"
#include "engine/train/error_message.hpp"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

namespace moelab {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string checkpoint_stem(const std::string& run_dir, int step) {
  char name[32];
  std::snprintf(name, sizeof name, "step_%08d", step);
  return (fs::path(run_dir) / name).string();
}

void write_file_atomically(const std::string& path, const std::string& contents) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << contents;
    if (!out.flush()) throw CheckpointError(tmp + ": cannot write");
  }
  fs::rename(tmp, path);
}

// Sidecars in run_dir by step, newest last.
std::map<int, fs::path> sidecars(const std::string& run_dir) {
  std::map<int, fs::path> found;
  if (!fs::is_directory(run_dir)) return found;
  for (auto& entry : fs::directory_iterator(run_dir)) {
    auto name = entry.path().filename().string();
    if (name.starts_with("step_") && name.ends_with(".json")) found[std::stoi(name.substr(5, 8))] = entry.path();
  }
  return found;
}

// Keeps the newest `keep` checkpoints and every one at a multiple of `keep_every`.
void prune(const std::string& run_dir, int keep, int keep_every) {
  auto all = sidecars(run_dir);
  std::erase_if(all, [&](auto& entry) { return keep_every > 0 && entry.first % keep_every == 0; });
  int excess = int(all.size()) - keep;
  for (auto it = all.begin(); excess > 0; ++it, --excess) {
    fs::remove(checkpoint_stem(run_dir, it->first) + ".pt");
    fs::remove(it->second);
  }
}

}  // namespace

SavedCheckpoint save_checkpoint(const std::string& run_dir, const JobConfig& config, torch::nn::Module& model,
                                torch::optim::Optimizer& optimizer, const Progress& progress) {
  fs::create_directories(run_dir);
  torch::serialize::OutputArchive archive, model_archive, optimizer_archive;
  model.save(model_archive);
  optimizer.save(optimizer_archive);
  archive.write("model", model_archive);
  archive.write("optimizer", optimizer_archive);
  archive.write("cpu_rng", at::detail::getDefaultCPUGenerator().get_state());
  archive.write("step", c10::IValue(int64_t(progress.step)));
  archive.write("wall_time", c10::IValue(progress.wall_time));
  archive.write("config", c10::IValue(config.to_json().dump()));

  const std::string stem = checkpoint_stem(run_dir, progress.step);
  SavedCheckpoint saved{stem + ".pt", "", progress.step};
  const std::string tmp = saved.path + ".tmp";
  try {
    archive.save_to(tmp);
  } catch (const std::exception& e) {  // LibTorch's message names neither the file nor the step
    throw CheckpointError(tmp + ": cannot write the checkpoint: " + error_message(e));
  }
  fs::rename(tmp, saved.path);
  saved.sha256 = file_sha256(saved.path);
  json sidecar{{"step", progress.step}, {"file", fs::path(saved.path).filename().string()},
               {"sha256", saved.sha256}, {"config_hash", config.hash()}};
  write_file_atomically(stem + ".json", sidecar.dump(2));
  prune(run_dir, config.train.keep_checkpoints, config.train.keep_every);
  return saved;
}

// Reads a checkpoint's .json record and checks the archive it names against its checksum.
static std::pair<SavedCheckpoint, json> verified(const fs::path& sidecar_path) {
  json sidecar;
  try {
    sidecar = json::parse(std::ifstream(sidecar_path));
  } catch (const std::exception& e) {
    throw CheckpointError(sidecar_path.string() + ": unreadable checkpoint record: " + e.what());
  }
  SavedCheckpoint found{(sidecar_path.parent_path() / sidecar.value("file", "")).string(), sidecar.value("sha256", ""),
                        sidecar.value("step", 0)};
  if (!fs::exists(found.path)) throw CheckpointError(found.path + ": checkpoint file missing (recorded in " + sidecar_path.string() + ")");
  if (auto actual = file_sha256(found.path); actual != found.sha256)
    throw CheckpointError(found.path + ": checksum mismatch (file has " + actual + ", recorded " + found.sha256 +
                          "); the checkpoint is corrupt");
  return {found, sidecar};
}

std::optional<SavedCheckpoint> find_checkpoint(const std::string& run_dir, const JobConfig& config) {
  auto all = sidecars(run_dir);
  if (all.empty()) return std::nullopt;
  auto [found, sidecar] = verified(all.rbegin()->second);
  if (auto recorded = sidecar.value("config_hash", ""); recorded != config.hash())
    throw CheckpointError(found.path + ": written for another config (config hash " + recorded + ", this job is " +
                          config.hash() + ")");
  return found;
}

SavedCheckpoint open_checkpoint(const std::string& pt_path) {
  if (!fs::exists(pt_path)) throw CheckpointError(pt_path + ": no such checkpoint");
  fs::path sidecar = fs::path(pt_path).replace_extension(".json");
  if (!fs::exists(sidecar)) throw CheckpointError(pt_path + ": no checkpoint record " + sidecar.string() + " beside it");
  return verified(sidecar).first;
}

JobConfig checkpoint_config(const SavedCheckpoint& checkpoint) {
  torch::serialize::InputArchive archive;
  c10::IValue config;
  try {
    archive.load_from(checkpoint.path);
    archive.read("config", config);
  } catch (const c10::Error& e) {
    throw CheckpointError(checkpoint.path + ": cannot read its config: " + e.what_without_backtrace());
  }
  return parse_job_config(json::parse(config.toStringRef()));
}

Progress load_checkpoint(const SavedCheckpoint& checkpoint, torch::nn::Module& model, torch::optim::Optimizer* optimizer) {
  torch::serialize::InputArchive archive, model_archive;
  try {
    archive.load_from(checkpoint.path);
    archive.read("model", model_archive);
    model.load(model_archive);
    if (optimizer) {
      torch::serialize::InputArchive optimizer_archive;
      archive.read("optimizer", optimizer_archive);
      optimizer->load(optimizer_archive);
    }
  } catch (const c10::Error& e) {
    throw CheckpointError(checkpoint.path + ": cannot load: " + e.what_without_backtrace());
  }
  torch::Tensor rng;
  archive.read("cpu_rng", rng);
  auto generator = at::detail::getDefaultCPUGenerator();
  generator.set_state(rng);
  c10::IValue step, wall_time;
  archive.read("step", step);
  archive.read("wall_time", wall_time);
  return Progress{int(step.toInt()), wall_time.toDouble()};
}

}  // namespace moelab
