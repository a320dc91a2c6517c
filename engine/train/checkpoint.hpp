// Checkpoints: model, optimizer, RNG and progress in one LibTorch archive, written to a temporary
// file and renamed so a crash never leaves a half-written checkpoint under the final name.
// Beside each archive `step_NNNNNNNN.json` records its step, SHA-256 and the config hash, so a resume
// can refuse a corrupt file or one written for another config before touching anything.
#pragma once

#include <torch/torch.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "engine/config/job_config.hpp"

namespace moelab {

struct CheckpointError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Progress {
  int step = 0;              // steps completed
  double wall_time = 0;      // seconds trained before this checkpoint, over all attempts
};

struct SavedCheckpoint {
  std::string path, sha256;
  int step = 0;
};

// Writes run_dir/step_<step>.pt and its .json sidecar; deletes all but the newest
// train.keep_checkpoints and those at multiples of train.keep_every.
SavedCheckpoint save_checkpoint(const std::string& run_dir, const JobConfig& config, torch::nn::Module& model,
                                torch::optim::Optimizer& optimizer, const Progress& progress);

// The newest checkpoint in run_dir, verified against its checksum and `config`; nullopt if none.
// Throws CheckpointError naming the file when the checksum or config hash does not match.
std::optional<SavedCheckpoint> find_checkpoint(const std::string& run_dir, const JobConfig& config);

// A checkpoint named by its .pt path (serving, evaluation), verified against the checksum in its
// .json record; throws CheckpointError naming the file when either is missing or they disagree.
SavedCheckpoint open_checkpoint(const std::string& pt_path);
// The config a checkpoint was trained with (stored inside it).
JobConfig checkpoint_config(const SavedCheckpoint& checkpoint);

// Loads a verified checkpoint into model and optimizer (optimizer may be null: serving, evaluation).
Progress load_checkpoint(const SavedCheckpoint& checkpoint, torch::nn::Module& model,
                         torch::optim::Optimizer* optimizer);

}  // namespace moelab
