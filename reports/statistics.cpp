#include "reports/statistics.hpp"

#include <array>
#include <cmath>
#include <map>
#include <stdexcept>

namespace moelab {

double t_critical_95(int df) {
  if (df < 1) throw std::invalid_argument("t_critical_95: df must be at least 1");
  // Exact table values up to 30 degrees of freedom, where the expansion below is too coarse.
  static constexpr std::array<double, 30> table = {12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
                                                   2.201,  2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
                                                   2.080,  2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042};
  if (df <= 30) return table[df - 1];
  // Cornish-Fisher expansion of t around the normal quantile; error below 1e-4 for df > 30.
  const double z = 1.959964, n = df;
  return z + (z * z * z + z) / (4 * n) + (5 * std::pow(z, 5) + 16 * z * z * z + 3 * z) / (96 * n * n);
}

Summary summarize(const std::vector<double>& values) {
  if (values.empty()) throw std::invalid_argument("summarize: no values");
  Summary s;
  s.n = static_cast<int>(values.size());
  for (double v : values) s.mean += v;
  s.mean /= s.n;
  if (s.n < 2) return s;
  double squares = 0;
  for (double v : values) squares += (v - s.mean) * (v - s.mean);
  s.variance = squares / (s.n - 1);
  s.stddev = std::sqrt(*s.variance);
  const double half_width = t_critical_95(s.n - 1) * *s.stddev / std::sqrt(double(s.n));
  s.ci_low = s.mean - half_width;
  s.ci_high = s.mean + half_width;
  return s;
}

std::optional<Summary> paired_difference(const std::vector<SeedValue>& a, const std::vector<SeedValue>& b) {
  std::map<long long, double> by_seed;
  for (auto& [seed, value] : b) by_seed[seed] = value;
  std::vector<double> differences;
  for (auto& [seed, value] : a)
    if (auto it = by_seed.find(seed); it != by_seed.end()) differences.push_back(value - it->second);
  if (differences.empty()) return std::nullopt;
  return summarize(differences);
}

}  // namespace moelab
