// KERN (DESIGN.md "Routers"): g = gamma * ReLU(s / (||s||_2 + eps)) with a learnable scale gamma,
// then top-k; without ReLU (kern.relu false), or over the k kept scores only (kern.after_topk).
#pragma once

#include <cstdint>

#include "engine/model/router.hpp"

namespace moelab {

// KERN's Monte-Carlo gamma (appendix I/L): E[1 / ||g(y)||_2] with g the KERN gate rule at gamma 1
// and y ~ N(0, I_E), estimated from `samples` draws of a generator seeded with `seed`.
double kern_monte_carlo_scale(int experts, const GateRule& rule, int samples, uint64_t seed);

}  // namespace moelab
