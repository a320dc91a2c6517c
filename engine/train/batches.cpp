#include "engine/train/batches.hpp"

#include <random>

namespace moelab {

BatchSource::BatchSource(const JobConfig& c, const TokenFile& train, const TokenFile& val)
    : config_(c), train_(train), val_(val) {}

Batch BatchSource::gather(const TokenFile& file, const std::vector<size_t>& offsets) const {
  const int64_t B = offsets.size(), T = config_.model.seq_len;
  auto window = torch::empty({B, T + 1}, torch::kInt64);
  for (int64_t b = 0; b < B; ++b) file.read(offsets[b], T + 1, window[b].data_ptr<int64_t>());
  return {window.narrow(1, 0, T).contiguous(), window.narrow(1, 1, T).contiguous()};
}

Batch BatchSource::train_batch(int step, int micro) const {
  std::seed_seq seq{uint64_t(config_.seed), uint64_t(step), uint64_t(micro)};
  std::mt19937_64 rng(seq);
  std::uniform_int_distribution<size_t> offset(0, train_.size() - config_.model.seq_len - 1);
  std::vector<size_t> offsets(config_.train.micro_batch);
  for (auto& o : offsets) o = offset(rng);
  return gather(train_, offsets);
}

Batch BatchSource::val_batch(int index) const {
  const size_t windows = size_t(config_.train.eval_batches) * config_.train.micro_batch;
  const size_t span = val_.size() - config_.model.seq_len - 1;
  std::vector<size_t> offsets(config_.train.micro_batch);
  for (size_t b = 0; b < offsets.size(); ++b) offsets[b] = (index * offsets.size() + b) * span / windows;
  return gather(val_, offsets);
}

}  // namespace moelab
