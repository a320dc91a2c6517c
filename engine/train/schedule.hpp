// Learning-rate schedule: linear warmup to lr, then cosine decay to min_lr at the last step.
#pragma once

#include <algorithm>
#include <cmath>

#include "engine/config/job_config.hpp"

namespace moelab {

// Learning rate for 1-based `step`.
inline double learning_rate(const TrainConfig& t, int step) {
  if (step <= t.warmup) return t.lr * step / std::max(1, t.warmup);
  const double progress = double(step - t.warmup) / std::max(1, t.steps - t.warmup);
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, progress)));
  return t.min_lr + cosine * (t.lr - t.min_lr);
}

}  // namespace moelab
