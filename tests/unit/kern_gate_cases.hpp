// KERN's gate held to ATen's composition on the CPU by kern_gate_disagreement
// (engine/train/kernel_self_check.hpp), over 1003 rows (the last CUDA block and the last CPU task
// part empty): the CPU's one pass (test_routers) and the CUDA kernels (test_cuda_path).
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "engine/model/kern_gate.hpp"
#include "engine/train/kernel_self_check.hpp"

namespace moelab::testing {

inline void expect_kern_gate_equals_the_composition(const torch::Device& device, const KernGatePath& path = kern_gate) {
  EXPECT_EQ(kern_gate_disagreement(device, 1003, path), std::nullopt);
}

}  // namespace moelab::testing
