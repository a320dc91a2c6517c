// The step profile's summary by kind of work, on rows labelled as a CUDA profile labels them (names
// from the 125M model's profile on an H200): which operators count as matmuls, attention and the
// optimizer, and the FLOP rates printed from them.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "engine/train/step_profile.hpp"

using namespace moelab;

namespace {

// Two steps; GPU time under the operator that launched it. The kernel table (ops) is what the busy
// time sums; the kinds come from by_operator, which holds the same time.
StepProfile two_cuda_steps() {
  StepProfile p;
  p.device = "cuda";
  p.steps = 2;
  p.by_operator = {
      {"GroupedMmBackward0 > aten::_grouped_mm", 96, 8.0},
      {"aten::_grouped_mm", 48, 2.0},
      {"AddmmBackward0 > aten::mm", 40, 1.0},
      {"aten::linear > aten::addmm", 2, 1.0},
      {"aten::_scaled_dot_product_cudnn_attention_backward > aten::_cudnn_attention_backward", 48, 3.0},
      {"aten::_scaled_dot_product_cudnn_attention > aten::_cudnn_attention_forward", 24, 1.0},
      {"aten::_fused_adamw_", 28, 4.0},
      {"aten::_foreach_norm", 27, 0.5},
      {"aten::_foreach_mul_", 26, 0.5},
      {"aten::_to_copy > aten::copy_", 371, 6.0},
      {"GeluBackward0 > aten::gelu_backward", 12, 2.0},
      {"MulBackward0 > aten::mul", 24, 0.5},
      {"(no operator)", 1, 0.5},
  };
  for (const auto& row : p.by_operator) p.busy_ms += row.total_ms;
  p.ops = {{"one kernel for all of it", 1, p.busy_ms}};
  p.wall_ms = p.busy_ms;
  return p;
}

}  // namespace

TEST(StepProfileKinds, SortsLaunchingOperatorsIntoMatmulsAttentionOptimizerAndTheRest) {
  const auto t = time_by_kind(two_cuda_steps());
  EXPECT_DOUBLE_EQ(t.matmul_ms, (8.0 + 2.0 + 1.0 + 1.0) / 2);
  EXPECT_DOUBLE_EQ(t.attention_ms, (3.0 + 1.0) / 2);
  EXPECT_DOUBLE_EQ(t.optimizer_ms, (4.0 + 0.5 + 0.5) / 2);
  EXPECT_DOUBLE_EQ(t.other_ms, (6.0 + 2.0 + 0.5 + 0.5) / 2);
}

// 15 ms of busy time per step of which 8 in matmuls and attention, for 3 TFLOP per step: 200 TFLOP/s
// over the busy time, 375 were only the matmuls and attention to take time; against 989 TFLOP/s,
// 20.2% and 37.9%.
TEST(StepProfileKinds, PrintsTheRateOverTheBusyTimeAndTheMatmulsAlone) {
  char* text = nullptr;
  size_t size = 0;
  std::FILE* out = open_memstream(&text, &size);
  print_time_by_kind(two_cuda_steps(), 3e12, out);
  std::fclose(out);
  const std::string printed(text, size);
  std::free(text);
  EXPECT_NE(printed.find("by kind, ms per step: matmuls 6.000 (40.0%), attention 2.000 (13.3%), optimizer 2.500 (16.7%), "
                         "other 4.500 (30.0%)"),
            std::string::npos)
      << printed;
  EXPECT_NE(printed.find("over the busy time: 200 TFLOP/s, 20.2% of 989"), std::string::npos) << printed;
  EXPECT_NE(printed.find("were matmuls and attention all that took time: 375 TFLOP/s, 37.9% of 989"),
            std::string::npos)
      << printed;
}
