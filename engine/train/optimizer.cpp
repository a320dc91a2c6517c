#include "engine/train/optimizer.hpp"

#include <cmath>

namespace moelab {

torch::optim::AdamWParamState& FusedAdamW::state_of(const torch::Tensor& parameter) {
  auto& slot = state_[parameter.unsafeGetTensorImpl()];
  if (!slot) {
    auto state = std::make_unique<torch::optim::AdamWParamState>();
    state->step(0);
    state->exp_avg(torch::zeros_like(parameter, torch::MemoryFormat::Preserve));
    state->exp_avg_sq(torch::zeros_like(parameter, torch::MemoryFormat::Preserve));
    slot = std::move(state);
  }
  return static_cast<torch::optim::AdamWParamState&>(*slot);
}

torch::Tensor FusedAdamW::step(LossClosure closure) {
  TORCH_CHECK(!closure, "FusedAdamW: closures are not supported");
  torch::NoGradGuard no_grad;
  for (auto& group : param_groups()) {
    const auto& options = static_cast<const torch::optim::AdamWOptions&>(group.options());
    TORCH_CHECK(!options.amsgrad(), "FusedAdamW: amsgrad is not supported");
    std::vector<torch::Tensor> parameters, gradients, exp_avgs, exp_avg_sqs, steps;
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      auto& state = state_of(p);
      auto [it, created] = step_tensors_.try_emplace(p.unsafeGetTensorImpl());
      if (created) it->second = torch::full({}, double(state.step()), p.options().dtype(torch::kFloat));
      state.step(state.step() + 1);
      parameters.push_back(p);
      gradients.push_back(p.grad());
      exp_avgs.push_back(state.exp_avg());
      exp_avg_sqs.push_back(state.exp_avg_sq());
      steps.push_back(it->second);
    }
    if (parameters.empty()) continue;
    torch::_foreach_add_(steps, 1);  // the kernel expects the count including this step
    const auto [beta1, beta2] = options.betas();
    at::_fused_adamw_(parameters, gradients, exp_avgs, exp_avg_sqs, /*max_exp_avg_sqs=*/{}, steps, options.lr(), beta1,
                      beta2, options.weight_decay(), options.eps(), /*amsgrad=*/false, /*maximize=*/false);
  }
  return {};
}

void FusedAdamW::load(torch::serialize::InputArchive& archive) {
  torch::optim::AdamW::load(archive);
  step_tensors_.clear();  // rebuilt from the loaded counts at the next step
}

torch::Tensor clip_gradient_norm(const std::vector<torch::Tensor>& parameters, double max_norm) {
  std::vector<torch::Tensor> gradients;
  for (const auto& p : parameters)
    if (p.grad().defined()) gradients.push_back(p.grad());
  if (gradients.empty()) return torch::zeros({});
  torch::NoGradGuard no_grad;
  auto total = torch::linalg_vector_norm(torch::stack(torch::_foreach_norm(gradients, 2)), 2);
  if (std::isfinite(max_norm)) torch::_foreach_mul_(gradients, torch::clamp_max(max_norm / (total + 1e-6), 1.0));
  return total;
}

}  // namespace moelab
