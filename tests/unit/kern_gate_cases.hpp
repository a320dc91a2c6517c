// The cases on which each implementation of KERN's gate (the CPU's one pass, the CUDA kernels) is
// held to ATen's composition on the CPU (kern_gate_composition): with and without ReLU, at widths
// below, at and above a warp (KERN-After k = 5, 64 experts, 320 with granularity), over 1003 rows
// (the last CUDA block and the last CPU task part empty), with an all-negative row (no gate passes
// ReLU) and an all-zero row (uniform through eps). Gates, the scores' gradient and gamma's.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "engine/model/kern_gate.hpp"

namespace moelab::testing {

// kern_gate on `device` against the composition on the CPU; gamma's gradient must also repeat bit for
// bit when run again (the CUDA kernel sums it across blocks, the CPU after its parallel loop).
inline void expect_kern_gate_equals_the_composition(const torch::Device& device) {
  torch::manual_seed(23);
  const int64_t rows = 1003;
  for (bool relu : {true, false})
    for (int64_t n : {5, 64, 320}) {
      auto scores = torch::randn({rows, n});
      scores[1] = -scores[1].abs() - 0.1;
      scores[2] = 0;
      auto upstream = torch::randn({rows, n});
      auto run = [&](bool ours) {  // leaves of their own: to(kCPU) alone would return scores itself
        const torch::Device where = ours ? device : torch::Device(torch::kCPU);
        auto v = scores.to(where).clone().requires_grad_(true), g = torch::full({}, 1.7, where).requires_grad_(true);
        auto gate = ours ? kern_gate(v, g, relu) : kern_gate_composition(v, g, relu);
        (gate * upstream.to(where)).sum().backward();
        return std::vector<torch::Tensor>{gate.detach().cpu(), v.grad().cpu(), g.grad().cpu()};
      };
      auto ours = run(true), theirs = run(false);
      const std::string where = (relu ? "relu, n " : "no relu, n ") + std::to_string(n);
      EXPECT_TRUE(torch::allclose(ours[0], theirs[0], 1e-6, 1e-7)) << where << ": gates";
      // The all-zero row's norm is eps * sqrt(n), so its score gradient is of order 1e7 and cancels in
      // fp32: that row is held to its own norm, every other row element by element (a norm over all
      // rows would let that one row hide errors in the others).
      auto others = torch::cat({torch::arange(2), torch::arange(3, rows)});
      EXPECT_TRUE(torch::allclose(ours[1].index_select(0, others), theirs[1].index_select(0, others), 1e-5, 1e-6))
          << where << ": score gradient";
      EXPECT_LT(((ours[1][2] - theirs[1][2]).norm() / theirs[1][2].norm()).item<double>(), 1e-5)
          << where << ": the all-zero row's score gradient";
      EXPECT_NEAR(ours[2].item<double>(), theirs[2].item<double>(), 1e-5 * std::abs(theirs[2].item<double>()))
          << where << ": gamma gradient";
      if (relu) EXPECT_TRUE(ours[0][1].eq(0).all().item<bool>()) << where << ": an all-negative row";
      EXPECT_EQ(run(true)[2].item<float>(), ours[2].item<float>()) << where << ": gamma's gradient again, bit for bit";
    }
}

}  // namespace moelab::testing
