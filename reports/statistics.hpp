// Summary statistics for the seed study (paper Table 4): mean, sample variance, standard deviation,
// a 95% confidence interval from Student's t, and the paired difference of two routers across seeds.
#pragma once

#include <optional>
#include <vector>

namespace moelab {

struct Summary {
  int n = 0;
  double mean = 0;
  std::optional<double> variance;  // sample variance (n - 1 in the denominator); none below 2 values
  std::optional<double> stddev;
  std::optional<double> ci_low, ci_high;  // mean -/+ t(0.975, n-1) * stddev / sqrt(n)
};

// values must not be empty.
Summary summarize(const std::vector<double>& values);

// Two-sided 95% critical value of Student's t with `df` degrees of freedom (df >= 1): the 0.975
// quantile, from Boost.Math.
double t_critical_95(int df);

// Pairs the values that share a seed and summarises (a - b) per seed. Returns nothing when no seed
// is in both.
struct SeedValue {
  long long seed;
  double value;
};
std::optional<Summary> paired_difference(const std::vector<SeedValue>& a, const std::vector<SeedValue>& b);

}  // namespace moelab
