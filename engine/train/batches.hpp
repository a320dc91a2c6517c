// Training and validation batches from memory-mapped token files.
// Training windows are drawn at random offsets from a generator seeded by (seed, step, micro-batch),
// so the data position of any step is a pure function of the step: resuming needs no reader state.
// Validation uses fixed, evenly spaced windows so every evaluation sees the same tokens.
#pragma once

#include <torch/torch.h>

#include "engine/config/job_config.hpp"
#include "engine/data/token_file.hpp"

namespace moelab {

struct Batch {
  torch::Tensor inputs, targets;  // [B, T] int64
};

class BatchSource {
 public:
  BatchSource(const JobConfig& c, const TokenFile& train, const TokenFile& val);
  Batch train_batch(int step, int micro) const;
  Batch val_batch(int index) const;  // index in [0, eval_batches)

 private:
  Batch gather(const TokenFile& file, const std::vector<size_t>& offsets) const;
  const JobConfig& config_;
  const TokenFile &train_, &val_;
};

}  // namespace moelab
