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

void FusedAdamW::set_learning_rate(double lr) {
  for (size_t i = 0; i < param_groups().size(); ++i) {
    static_cast<torch::optim::AdamWOptions&>(param_groups()[i].options()).lr(lr);
    learning_rate_on_device(i);
  }
}

// Written only when it changes: while a step is being captured it has been written already, so the
// capture records no write of a fixed value.
const torch::Tensor& FusedAdamW::learning_rate_on_device(size_t group) {
  const auto& params = param_groups()[group].params();
  static const torch::Tensor none;
  if (params.empty() || !params.front().is_cuda()) return none;
  if (device_learning_rates_.size() <= group) device_learning_rates_.resize(group + 1);
  auto& [written, on_device] = device_learning_rates_[group];
  const double lr = static_cast<const torch::optim::AdamWOptions&>(param_groups()[group].options()).lr();
  if (!on_device.defined()) on_device = torch::empty({}, params.front().options().dtype(torch::kFloat));
  else if (written == lr) return on_device;
  on_device.fill_(lr);
  written = lr;
  return on_device;
}

// The fused kernel walks each tensor's memory in order, and on the CPU it does not check that a
// gradient and the moments lie in memory as their parameter does (w_in lies transposed): one laid out
// otherwise would silently update the wrong elements. Dimensions of size 1 may have any stride.
static void check_laid_out_alike(const torch::Tensor& p, torch::optim::AdamWParamState& state) {
  auto alike = [&](const torch::Tensor& t) {
    if (t.sizes() != p.sizes()) return false;
    for (int64_t i = 0; i < p.dim(); ++i)
      if (p.size(i) > 1 && t.stride(i) != p.stride(i)) return false;
    return true;
  };
  TORCH_CHECK(alike(p.grad()) && alike(state.exp_avg()) && alike(state.exp_avg_sq()), "FusedAdamW: a parameter of shape ",
              p.sizes(), " and strides ", p.strides(), " has a gradient of strides ", p.grad().strides(),
              " and moments of strides ", state.exp_avg().strides(), " and ", state.exp_avg_sq().strides(),
              "; they must lie in memory alike");
}

torch::Tensor FusedAdamW::step(LossClosure closure) {
  TORCH_CHECK(!closure, "FusedAdamW: closures are not supported");
  torch::NoGradGuard no_grad;
  for (auto& group : param_groups())  // all before anything moves
    for (auto& p : group.params())
      if (p.grad().defined()) check_laid_out_alike(p, state_of(p));
  for (size_t group_index = 0; group_index < param_groups().size(); ++group_index) {
    auto& group = param_groups()[group_index];
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
    // With found_inf set the kernel leaves parameters and moments alone; the step does not count.
    std::optional<torch::Tensor> found_inf;
    if (found_inf_.defined()) found_inf = found_inf_;
    auto update = [&](const auto& lr) {
      at::_fused_adamw_(parameters, gradients, exp_avgs, exp_avg_sqs, /*max_exp_avg_sqs=*/{}, steps, lr, beta1, beta2,
                        options.weight_decay(), options.eps(), /*amsgrad=*/false, /*maximize=*/false,
                        /*grad_scale=*/std::nullopt, found_inf);
    };
    const auto& lr_on_device = learning_rate_on_device(group_index);
    lr_on_device.defined() ? update(lr_on_device) : update(options.lr());
    if (found_inf) torch::_foreach_sub_(steps, std::vector<torch::Tensor>(steps.size(), *found_inf));
  }
  if (scale_.defined()) {
    at::_amp_update_scale_(scale_, growth_tracker_, found_inf_, /*growth=*/2.0, /*backoff=*/0.5, /*interval=*/2000);
    found_inf_.zero_();
  }
  return {};
}

// Skipped steps are known on the device only: the integer counts a checkpoint stores are brought
// up to date from the step tensors first (a checkpoint may read the device).
void FusedAdamW::save(torch::serialize::OutputArchive& archive) const {
  for (const auto& [impl, steps] : step_tensors_)
    static_cast<torch::optim::AdamWParamState&>(*state_.at(impl)).step(int64_t(steps.item<double>()));
  torch::optim::AdamW::save(archive);
  if (scale_.defined()) {
    archive.write("loss_scale", scale_, /*is_buffer=*/true);
    archive.write("loss_scale_growth_tracker", growth_tracker_, /*is_buffer=*/true);
  }
}

void FusedAdamW::load(torch::serialize::InputArchive& archive) {
  torch::optim::AdamW::load(archive);
  step_tensors_.clear();  // rebuilt from the loaded counts at the next step
  if (scale_.defined()) {
    torch::Tensor scale, growth_tracker;
    if (archive.try_read("loss_scale", scale, true) && archive.try_read("loss_scale_growth_tracker", growth_tracker, true))
      scale_.copy_(scale), growth_tracker_.copy_(growth_tracker);
  }
}

void FusedAdamW::enable_loss_scaling(torch::Device device, double initial_scale) {
  scale_ = torch::full({}, initial_scale, torch::TensorOptions().dtype(torch::kFloat).device(device));
  growth_tracker_ = torch::zeros({}, torch::TensorOptions().dtype(torch::kInt).device(device));
  found_inf_ = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat).device(device));
}

torch::Tensor FusedAdamW::scale_loss(const torch::Tensor& loss) const {
  return scale_.defined() ? loss * scale_ : loss;
}

std::vector<torch::Tensor> FusedAdamW::gradients() const {
  std::vector<torch::Tensor> out;
  for (const auto& group : param_groups())
    for (const auto& p : group.params())
      if (p.grad().defined()) out.push_back(p.grad());
  return out;
}

void FusedAdamW::unscale_gradients() {
  if (!scale_.defined()) return;
  auto grads = gradients();
  if (grads.empty()) return;
  torch::NoGradGuard no_grad;
  at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf_, scale_.reciprocal());
}

double FusedAdamW::loss_scale() const { return scale_.defined() ? scale_.item<double>() : 1.0; }

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
