// Mixed precision on CUDA: autocast around the forward pass (router math casts itself to fp32, see
// engine/model/router.cpp). The CPU always computes in fp32, so the scope does nothing there.
#pragma once

#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include <string>

namespace moelab {

// What a GPU's matmuls give under train.precision: fp32 (no autocast), bf16 or fp16.
inline torch::ScalarType autocast_dtype(const std::string& precision) {
  return precision == "fp32" ? torch::kFloat : precision == "bf16" ? torch::kBFloat16 : torch::kHalf;
}

class AutocastScope {
 public:
  // precision: fp32 (no autocast), bf16 or fp16.
  AutocastScope(torch::Device device, const std::string& precision) : enabled_(device.is_cuda() && precision != "fp32") {
    if (!enabled_) return;
    at::autocast::set_autocast_dtype(at::kCUDA, autocast_dtype(precision));
    at::autocast::set_autocast_enabled(at::kCUDA, true);
    at::autocast::increment_nesting();
  }
  ~AutocastScope() {
    if (!enabled_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(at::kCUDA, false);
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool enabled_;
};

}  // namespace moelab
