// moelab's own CUDA kernels (engine/kernels) check themselves at the start of a run on a GPU, before
// the first step: each kernel that is on runs through the path the model takes and is compared with
// ATen's composition on small inputs of the run's dtype, forward and backward, by the comparisons
// and tolerances of its CUDA test (tests/unit/test_cuda_path.cpp runs the same comparisons on larger
// cases). A kernel that disagrees, or throws, is turned off for the run (engine/kernels/switch.hpp)
// and ATen's ops run instead; the run says so on stderr and in the store.
#pragma once

#include <torch/torch.h>

#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "engine/model/slot_dispatch.hpp"

namespace moelab {

class Store;

// What a comparison finds: nothing where the two sides agree, else each difference, by how much.
using Disagreement = std::optional<std::string>;

// ||got - want|| / ||want||, in fp64 on the CPU.
double relative_error(const torch::Tensor& got, const torch::Tensor& want);

// Cross-entropy of bf16 logits [rows, padded] whose last padded - vocab columns are -inf (as GPT-2's
// padded output projection gives), with a target in the last real column and an upstream gradient
// of 2.5, against ATen's fp32 cross-entropy of the same logits: the loss to fp32 accuracy, the
// logits' gradient to bf16 rounding, and no gradient in the padding.
struct CrossEntropyCase {
  int64_t rows, vocab, padded;
};
using CrossEntropyPath = std::function<torch::Tensor(const torch::Tensor& logits, const torch::Tensor& targets)>;
Disagreement cross_entropy_disagreement(const torch::Device& device, const CrossEntropyCase& size,
                                        const CrossEntropyPath& ours);

// KERN's gate on `device` against the composition on the CPU (kern_gate_composition): with and
// without ReLU, at widths below, at and above a warp (KERN-After k = 5, 64 experts, 320 with
// granularity), with an all-negative row (no gate passes ReLU) and an all-zero row (uniform through
// eps). The gates, the scores' gradient and gamma's, which must also repeat bit for bit when run
// again (the CUDA kernel sums it across blocks, the CPU after its parallel loop). Rows that are not
// a multiple of 8 leave the last CUDA block part empty.
using KernGatePath = std::function<torch::Tensor(const torch::Tensor& v, const torch::Tensor& gamma, bool relu)>;
Disagreement kern_gate_disagreement(const torch::Device& device, int64_t rows, const KernGatePath& ours);

// GELU(h) * gate of bf16 hidden units [rows, width] against the fp32 composition of the same units:
// the output and the hidden units' gradient to bf16 rounding, the gates' gradient (a row sum in fp32
// over the same products) to fp32 accumulation order. A zero gate gives exact zeros, a negative one
// flips the sign. Rows that are not a multiple of 8 leave the last block part empty; a width of 392
// makes some lanes of a row's warp take two 16-byte vectors and others one.
struct GatedGeluCase {
  int64_t rows, width;
};
using GatedGeluPath = std::function<torch::Tensor(const torch::Tensor& hidden, const torch::Tensor& gate)>;
Disagreement gated_gelu_disagreement(const torch::Device& device, const GatedGeluCase& size, const GatedGeluPath& ours);

// The dispatch's row movements against ATen's index_select and embedding bag: gathering token rows
// of `dtype` to their slots bit for bit, and for bf16 rows also summing each token's k slot rows in
// fp32 before rounding once to bf16. A width of 776 is 97 vectors of 16 bytes in bf16, so some lanes
// of a warp take one more.
struct SlotRowsCase {
  int64_t tokens, k, experts, width;
};
struct SlotRowPaths {
  std::function<torch::Tensor(const torch::Tensor& x, const SlotLayout& layout)> gather;
  std::function<torch::Tensor(const torch::Tensor& rows, const SlotLayout& layout)> sum;
};
Disagreement slot_rows_disagreement(const torch::Device& device, const SlotRowsCase& size, torch::ScalarType dtype,
                                    const SlotRowPaths& ours);

// The model's own paths (fp32_cross_entropy, kern_gate, gated_gelu, gather_slots and sum_slots),
// each refusing (std::logic_error) inputs that its kernel does not take: compared through ATen's
// path instead, a kernel would pass whatever it computes.
torch::Tensor cross_entropy_by_kernel(const torch::Tensor& logits, const torch::Tensor& targets);
torch::Tensor kern_gate_by_kernel(const torch::Tensor& v, const torch::Tensor& gamma, bool relu);
torch::Tensor gated_gelu_by_kernel(const torch::Tensor& hidden, const torch::Tensor& gate);
SlotRowPaths slot_rows_by_kernel();

// One kernel's self-check: its comparison on `device` in the dtype that a run whose activations are
// `activations` (autocast_dtype) gives the kernel; nothing where such a run never takes the kernel.
using SelfCheck = std::function<Disagreement(const torch::Device& device, torch::ScalarType activations)>;
struct OwnKernelCheck {
  std::string kernel;  // its name in kKernelNames
  SelfCheck check;
};

// One per kernel, in kKernelNames' order, each through its path above.
const std::vector<OwnKernelCheck>& own_kernel_checks();

struct KernelTurnedOff {
  std::string kernel, error;
  // The warning the run prints and records.
  std::string message() const;
};

// Runs each check whose kernel MOELAB_ATEN_ONLY leaves on, then turns off for this run exactly the
// kernels whose check disagreed or threw (every other kernel back on). Returns those, in order.
std::vector<KernelTurnedOff> turn_off_failing_kernels(const std::vector<OwnKernelCheck>& checks,
                                                      const torch::Device& device, torch::ScalarType activations);

// At the start of a run: own_kernel_checks() where the kernels run on `device` (own_kernels_run_on),
// elsewhere (the CPU, a build without them, a GPU older than sm80) nothing.
std::vector<KernelTurnedOff> check_own_kernels(const torch::Device& device, torch::ScalarType activations);

// A warning line on `out` for each kernel turned off, and with a store an event (level "warning")
// for the job.
void report_kernels_turned_off(const std::vector<KernelTurnedOff>& turned_off, std::FILE* out, Store* store,
                               const std::string& job_id);

}  // namespace moelab
