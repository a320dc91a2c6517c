#include "reports/statistics.hpp"

#include <boost/math/distributions/students_t.hpp>

#include <cmath>
#include <map>
#include <stdexcept>

namespace moelab {

double t_critical_95(int df) {
  if (df < 1) throw std::invalid_argument("t_critical_95: df must be at least 1");
  return boost::math::quantile(boost::math::students_t(df), 0.975);
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
