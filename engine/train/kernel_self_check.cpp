#include "engine/train/kernel_self_check.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <set>
#include <sstream>
#include <stdexcept>

#include "db/store.hpp"
#include "engine/kernels/switch.hpp"
#include "engine/model/cross_entropy.hpp"
#include "engine/model/gated_gelu.hpp"
#include "engine/model/kern_gate.hpp"
#include "engine/model/own_kernels.hpp"

namespace moelab {
namespace {

// The self-checks' cases: the CUDA tests' shapes at a few dozen rows (a few hundred thousand
// elements at most), so that all four take milliseconds. The rows are not multiples of 8 (a
// warp-per-row kernel's block); the cross-entropy's padded vocabulary is more than one pass of its
// 512 threads' 16-byte loads, with 7 padded columns.
constexpr CrossEntropyCase kCrossEntropyCheck{.rows = 37, .vocab = 5001, .padded = 5008};
constexpr int64_t kKernGateCheckRows = 67;
constexpr GatedGeluCase kGatedGeluCheck{.rows = 35, .width = 392};
constexpr SlotRowsCase kSlotRowsCheck{.tokens = 35, .k = 8, .experts = 64, .width = 776};

// The comparisons draw their inputs from a generator of their own on the CPU: the same inputs on
// every device, and LibTorch's default generators left as they were, whether a run checks or not.
at::Generator seeded(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

std::string number(double x) {
  std::ostringstream out;
  out.precision(3);
  out << x;
  return out.str();
}

// The differences one comparison finds, each named.
class Findings {
 public:
  // ||got - want|| / ||want|| below `tolerance` (NaN is not).
  void relative(const std::string& what, const torch::Tensor& got, const torch::Tensor& want, double tolerance) {
    const double error = relative_error(got, want);
    if (!(error < tolerance)) found_.push_back(what + ": relative error " + number(error) + ", above " + number(tolerance));
  }
  // Element by element, as torch::allclose.
  void close(const std::string& what, const torch::Tensor& got, const torch::Tensor& want, double rtol, double atol) {
    if (!torch::allclose(got, want, rtol, atol))
      found_.push_back(what + ": off by up to " + number((got - want).abs().max().item<double>()) + " (rtol " +
                       number(rtol) + ", atol " + number(atol) + ")");
  }
  void require(bool holds, const std::string& otherwise) {
    if (!holds) found_.push_back(otherwise);
  }
  Disagreement result() const {
    if (found_.empty()) return std::nullopt;
    std::string all = found_[0];
    for (size_t i = 1; i < found_.size(); ++i) all += "; " + found_[i];
    return all;
  }

 private:
  std::vector<std::string> found_;
};

bool all_zero(const torch::Tensor& t) { return t.eq(0).all().item<bool>(); }

// Refuses inputs that `kernel` does not take.
void require_kernel(bool takes, const std::string& kernel) {
  if (!takes) throw std::logic_error("the inputs do not take the " + kernel + " kernel");
}

Disagreement check_cross_entropy(const torch::Device& device, torch::ScalarType activations) {
  if (activations != torch::kBFloat16) return std::nullopt;  // only bf16 logits take the kernel
  return cross_entropy_disagreement(device, kCrossEntropyCheck, cross_entropy_by_kernel);
}

// The router computes in fp32 whatever the run's precision, so the gate's scores are always fp32.
Disagreement check_kern_gate(const torch::Device& device, torch::ScalarType) {
  return kern_gate_disagreement(device, kKernGateCheckRows, kern_gate_by_kernel);
}

Disagreement check_gated_gelu(const torch::Device& device, torch::ScalarType activations) {
  if (activations != torch::kBFloat16) return std::nullopt;  // only bf16 hidden units take the kernel
  return gated_gelu_disagreement(device, kGatedGeluCheck, gated_gelu_by_kernel);
}

// Gathers move rows of the run's dtype; sums take the kernel for bf16 rows only.
Disagreement check_slot_rows(const torch::Device& device, torch::ScalarType activations) {
  return slot_rows_disagreement(device, kSlotRowsCheck, activations, slot_rows_by_kernel());
}

// What a check threw, without LibTorch's backtrace.
std::string what_was_thrown(const std::exception& e) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
  return std::string("threw: ") + (c10_error ? c10_error->what_without_backtrace() : e.what());
}

}  // namespace

double relative_error(const torch::Tensor& got, const torch::Tensor& want) {
  auto g = got.to(torch::kCPU, torch::kDouble), w = want.to(torch::kCPU, torch::kDouble);
  return ((g - w).norm() / w.norm()).item<double>();
}

Disagreement cross_entropy_disagreement(const torch::Device& device, const CrossEntropyCase& size,
                                        const CrossEntropyPath& ours) {
  auto random = seeded(21);
  auto logits = (3 * torch::randn({size.rows, size.padded}, random)).to(device, torch::kBFloat16);
  logits.narrow(1, size.vocab, size.padded - size.vocab).fill_(-INFINITY);
  auto targets = torch::randint(size.vocab, {size.rows}, random, torch::kLong);
  targets[0] = size.vocab - 1;
  targets = targets.to(device);
  auto our_input = logits.clone().requires_grad_(true), aten_input = logits.clone().requires_grad_(true);
  auto loss = ours(our_input, targets);
  auto aten = torch::cross_entropy_loss(aten_input.to(torch::kFloat), targets);
  (2.5 * loss).backward();
  (2.5 * aten).backward();
  Findings findings;
  findings.relative("loss", loss, aten, 1e-5);
  findings.relative("logits' gradient", our_input.grad(), aten_input.grad(), 4e-3);
  findings.require(all_zero(our_input.grad().narrow(1, size.vocab, size.padded - size.vocab)),
                   "gradient in the padded (-inf) columns");
  return findings.result();
}

Disagreement kern_gate_disagreement(const torch::Device& device, int64_t rows, const KernGatePath& ours) {
  auto random = seeded(23);
  Findings findings;
  for (bool relu : {true, false})
    for (int64_t n : {5, 64, 320}) {
      auto scores = torch::randn({rows, n}, random);
      scores[1] = -scores[1].abs() - 0.1;
      scores[2] = 0;
      auto upstream = torch::randn({rows, n}, random);
      auto run = [&](bool on_device) {  // leaves of their own: to(kCPU) alone would return scores itself
        const torch::Device where = on_device ? device : torch::Device(torch::kCPU);
        auto v = scores.to(where).clone().requires_grad_(true), g = torch::full({}, 1.7, where).requires_grad_(true);
        auto gate = on_device ? ours(v, g, relu) : kern_gate_composition(v, g, relu);
        (gate * upstream.to(where)).sum().backward();
        return std::vector<torch::Tensor>{gate.detach().cpu(), v.grad().cpu(), g.grad().cpu()};
      };
      auto our = run(true), theirs = run(false);
      const std::string where = (relu ? "relu, n " : "no relu, n ") + std::to_string(n);
      findings.close(where + ": gates", our[0], theirs[0], 1e-6, 1e-7);
      // The all-zero row's norm is eps * sqrt(n), so its score gradient is of order 1e7 and cancels in
      // fp32: that row is held to its own norm, every other row element by element (a norm over all
      // rows would let that one row hide errors in the others).
      auto others = torch::cat({torch::arange(2), torch::arange(3, rows)});
      findings.close(where + ": score gradient", our[1].index_select(0, others), theirs[1].index_select(0, others), 1e-5,
                     1e-6);
      findings.relative(where + ": the all-zero row's score gradient", our[1][2], theirs[1][2], 1e-5);
      findings.relative(where + ": gamma's gradient", our[2], theirs[2], 1e-5);
      if (relu) findings.require(all_zero(our[0][1]), where + ": a gate of the all-negative row passed ReLU");
      findings.require(run(true)[2].item<float>() == our[2].item<float>(),
                       where + ": gamma's gradient changed when run again");
    }
  return findings.result();
}

Disagreement gated_gelu_disagreement(const torch::Device& device, const GatedGeluCase& size, const GatedGeluPath& ours) {
  auto random = seeded(31);
  auto hidden = (torch::randn({size.rows, size.width}, random) * 2).to(device, torch::kBFloat16);
  auto gate = torch::rand({size.rows}, random).to(device);
  gate.narrow(0, 0, 1).fill_(0.0);
  gate.narrow(0, 1, 1).fill_(-0.5);
  auto upstream = torch::randn({size.rows, size.width}, random).to(device, torch::kBFloat16);
  auto gradients = [&](const torch::Tensor& h, const torch::Tensor& g, const torch::Tensor& out) {
    return torch::autograd::grad({(out.to(torch::kFloat) * upstream.to(torch::kFloat)).sum()}, {h, g});
  };
  auto h = hidden.clone().requires_grad_(), g = gate.clone().requires_grad_();
  auto out = ours(h, g);
  auto out_grads = gradients(h, g, out);
  auto h32 = hidden.to(torch::kFloat).requires_grad_(), g32 = gate.clone().requires_grad_();
  auto reference = torch::gelu(h32) * g32.unsqueeze(1);
  auto reference_grads = gradients(h32, g32, reference);
  Findings findings;
  findings.require(out.scalar_type() == torch::kBFloat16,
                   std::string("output in ") + c10::toString(out.scalar_type()) + ", not the hidden units' bf16");
  findings.relative("output", out, reference, 4e-3);
  findings.relative("hidden units' gradient", out_grads[0], reference_grads[0], 4e-3);
  findings.relative("gates' gradient", out_grads[1], reference_grads[1], 1e-5);
  findings.require(all_zero(out[0]), "a zero gate's row is not zero");
  findings.require(all_zero(out_grads[0][0]), "a zero gate's row has a gradient");
  findings.relative("the negative gate's row", out[1], reference[1], 4e-3);
  return findings.result();
}

Disagreement slot_rows_disagreement(const torch::Device& device, const SlotRowsCase& size, torch::ScalarType dtype,
                                    const SlotRowPaths& ours) {
  auto random = seeded(29);
  auto layout = sort_slots_by_expert(torch::randint(size.experts, {size.tokens, size.k}, random).to(device), size.experts);
  auto x = torch::randn({size.tokens, size.width}, random).to(device, dtype);
  Findings findings;
  findings.require(torch::equal(ours.gather(x, layout), x.index_select(0, layout.token_of_position)),
                   std::string("gathered ") + c10::toString(dtype) + " rows differ from index_select's");
  if (dtype == torch::kBFloat16) {
    auto rows = torch::randn({size.tokens * size.k, size.width}, random).to(device, torch::kBFloat16);
    namespace F = torch::nn::functional;
    auto in_fp32 = F::embedding_bag(layout.position_of_slot.view({-1, size.k}), rows.to(torch::kFloat),
                                    F::EmbeddingBagFuncOptions().mode(torch::kSum));
    auto sums = ours.sum(rows, layout);
    findings.relative("token sums", sums, in_fp32, 2e-3);
    findings.relative("token sums against fp32's rounded once", sums, in_fp32.to(torch::kBFloat16), 2e-4);
  }
  return findings.result();
}

torch::Tensor cross_entropy_by_kernel(const torch::Tensor& logits, const torch::Tensor& targets) {
  require_kernel(fused_cross_entropy_applies(logits), "cross_entropy");
  return fp32_cross_entropy(logits, targets);
}

torch::Tensor kern_gate_by_kernel(const torch::Tensor& v, const torch::Tensor& gamma, bool relu) {
  require_kernel(fused_kern_gate_applies(v, gamma), "kern_gate");
  return kern_gate(v, gamma, relu);
}

torch::Tensor gated_gelu_by_kernel(const torch::Tensor& hidden, const torch::Tensor& gate) {
  require_kernel(fused_gated_gelu_applies(hidden, gate), "gated_gelu");
  return gated_gelu(hidden, gate);
}

SlotRowPaths slot_rows_by_kernel() {
  return {.gather = [](const torch::Tensor& x, const SlotLayout& layout) {
            require_kernel(slot_row_kernels_apply(x), "slot_rows");
            return gather_slots(x, layout);
          },
          .sum = [](const torch::Tensor& rows, const SlotLayout& layout) {
            require_kernel(slot_row_kernels_apply(rows) && rows.scalar_type() == torch::kBFloat16, "slot_rows");
            return sum_slots(rows, layout);
          }};
}

const std::vector<OwnKernelCheck>& own_kernel_checks() {
  static const std::vector<OwnKernelCheck> checks = {{"cross_entropy", check_cross_entropy},
                                                     {"gated_gelu", check_gated_gelu},
                                                     {"kern_gate", check_kern_gate},
                                                     {"slot_rows", check_slot_rows}};
  return checks;
}

std::string KernelTurnedOff::message() const {
  return "moelab's " + kernel + " kernel failed its self-check against ATen's composition and is turned off for this run "
         "(ATen's ops run instead): " + error;
}

std::vector<KernelTurnedOff> turn_off_failing_kernels(const std::vector<OwnKernelCheck>& checks,
                                                      const torch::Device& device, torch::ScalarType activations) {
  kernels::turn_off_for_this_run({});  // each run decides afresh, every kernel on while checked
  const torch::AutoGradMode with_gradients(true);  // the checks compare gradients too
  std::vector<KernelTurnedOff> failed;
  for (const auto& [kernel, check] : checks) {
    if (!kernels::enabled_by_environment(kernel)) continue;
    Disagreement error;
    try {
      error = check(device, activations);
    } catch (const std::exception& e) {
      error = what_was_thrown(e);
    }
    if (error) failed.push_back({kernel, *error});
  }
  std::set<std::string> off;
  for (const auto& f : failed) off.insert(f.kernel);
  kernels::turn_off_for_this_run(off);
  return failed;
}

std::vector<KernelTurnedOff> check_own_kernels(const torch::Device& device, torch::ScalarType activations) {
  if (!own_kernels_run_on(device)) return {};
  return turn_off_failing_kernels(own_kernel_checks(), device, activations);
}

void report_kernels_turned_off(const std::vector<KernelTurnedOff>& turned_off, std::FILE* out, Store* store,
                               const std::string& job_id) {
  for (const auto& k : turned_off) {
    std::fprintf(out, "warning: %s\n", k.message().c_str());
    if (store) store->log_event(job_id, "warning", k.message());
  }
  std::fflush(out);
}

}  // namespace moelab
