// The start-up self-checks of moelab's CUDA kernels (engine/train/kernel_self_check.hpp) on the CPU:
// stand-ins for the kernels' paths, right and deliberately wrong, go through the real comparisons,
// the real switch (engine/kernels/switch.hpp) and a real store. On a GPU, test_cuda_path runs the
// real checks (Cuda.OwnKernelsPassTheirSelfChecks).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "db/store.hpp"
#include "engine/kernels/switch.hpp"
#include "engine/model/cross_entropy.hpp"
#include "engine/model/kern_gate.hpp"
#include "engine/train/kernel_self_check.hpp"

using namespace moelab;

namespace {

// MOELAB_ATEN_ONLY is read once, at the first kernel choice: set before main, it turns cross_entropy
// off for this whole process, whose tests then see that such a kernel is not checked.
const bool aten_only_cross_entropy = setenv("MOELAB_ATEN_ONLY", "cross_entropy", 1) == 0;

const torch::Device cpu(torch::kCPU);

// Small cases; the self-checks' own sizes are theirs, the CUDA tests' larger.
constexpr CrossEntropyCase kCrossEntropy{.rows = 9, .vocab = 1001, .padded = 1008};
constexpr int64_t kKernGateRows = 19;
constexpr GatedGeluCase kGatedGelu{.rows = 11, .width = 392};
constexpr SlotRowsCase kSlotRows{.tokens = 13, .k = 4, .experts = 8, .width = 776};

// Right stand-ins: what the kernels compute, from ATen's ops on the CPU.
torch::Tensor gelu_in_fp32(const torch::Tensor& hidden, const torch::Tensor& gate) {
  return (torch::gelu(hidden.to(torch::kFloat)) * gate.unsqueeze(1)).to(hidden.scalar_type());
}
SlotRowPaths aten_slot_rows() {
  return {.gather = [](const torch::Tensor& x, const SlotLayout& layout) { return x.index_select(0, layout.token_of_position); },
          .sum = [](const torch::Tensor& rows, const SlotLayout& layout) {
            namespace F = torch::nn::functional;
            return F::embedding_bag(layout.position_of_slot.view({-1, layout.k}), rows.to(torch::kFloat),
                                    F::EmbeddingBagFuncOptions().mode(torch::kSum))
                .to(rows.scalar_type());
          }};
}

// Wrong ones: 1% off forward, or only backward (the same values, a gradient 1% off).
torch::Tensor one_percent_off(const torch::Tensor& t) { return t * 1.01; }
torch::Tensor gradient_one_percent_off(const torch::Tensor& t) { return t + 0.01 * (t - t.detach()); }

std::string error_of(const Disagreement& d) { return d.value_or("(none)"); }

// Checks that stand in for the real ones: gated_gelu wrong, kern_gate right, slot_rows throwing as a
// kernel that faults would, and cross_entropy (off by MOELAB_ATEN_ONLY here) counting its calls.
std::vector<OwnKernelCheck> stand_ins(int& cross_entropy_checks) {
  return {{"cross_entropy",
           [&](const torch::Device&, torch::ScalarType) -> Disagreement {
             ++cross_entropy_checks;
             return "checked although MOELAB_ATEN_ONLY turns it off";
           }},
          {"gated_gelu",
           [](const torch::Device& d, torch::ScalarType) {
             return gated_gelu_disagreement(d, kGatedGelu, [](auto& h, auto& g) { return one_percent_off(gelu_in_fp32(h, g)); });
           }},
          {"kern_gate", [](const torch::Device& d, torch::ScalarType) { return kern_gate_disagreement(d, kKernGateRows, kern_gate); }},
          {"slot_rows", [](const torch::Device&, torch::ScalarType) -> Disagreement {
             TORCH_CHECK(false, "CUDA error: an illegal memory access was encountered");
           }}};
}

std::vector<OwnKernelCheck> right_stand_ins() {
  return {{"gated_gelu", [](const torch::Device& d, torch::ScalarType) { return gated_gelu_disagreement(d, kGatedGelu, gelu_in_fp32); }},
          {"slot_rows", [](const torch::Device& d, torch::ScalarType t) {
             return slot_rows_disagreement(d, kSlotRows, t, aten_slot_rows());
           }}};
}

bool enabled(const char* kernel) { return kernels::own_kernel_enabled(kernel); }

}  // namespace

// One check per kernel file's name, so that a new kernel cannot go unchecked.
TEST(KernelSelfCheck, EveryKernelHasACheck) {
  std::vector<std::string> checked, names(kernels::kKernelNames.begin(), kernels::kKernelNames.end());
  for (const auto& c : own_kernel_checks()) checked.push_back(c.kernel);
  EXPECT_EQ(checked, names);
}

// Each comparison passes a path that computes what the kernel should, and names what a wrong one
// gets wrong, forward or only backward.
TEST(KernelSelfCheck, EachComparisonPassesARightPathAndCatchesAWrongOne) {
  EXPECT_EQ(cross_entropy_disagreement(cpu, kCrossEntropy, fp32_cross_entropy), std::nullopt);
  auto ce_off = cross_entropy_disagreement(cpu, kCrossEntropy, [](auto& l, auto& t) { return one_percent_off(fp32_cross_entropy(l, t)); });
  EXPECT_NE(error_of(ce_off).find("loss: relative error"), std::string::npos) << error_of(ce_off);
  EXPECT_NE(error_of(ce_off).find("logits' gradient: relative error"), std::string::npos) << error_of(ce_off);

  EXPECT_EQ(kern_gate_disagreement(cpu, kKernGateRows, kern_gate), std::nullopt);
  auto gate_off = kern_gate_disagreement(cpu, kKernGateRows, [](auto& v, auto& g, bool relu) {
    return gradient_one_percent_off(kern_gate(v, g, relu));
  });
  EXPECT_EQ(error_of(gate_off).find(": gates"), std::string::npos) << "the forward is right: " << error_of(gate_off);
  EXPECT_NE(error_of(gate_off).find("relu, n 64: score gradient"), std::string::npos) << error_of(gate_off);
  EXPECT_NE(error_of(gate_off).find("gamma's gradient: relative error"), std::string::npos) << error_of(gate_off);

  EXPECT_EQ(gated_gelu_disagreement(cpu, kGatedGelu, gelu_in_fp32), std::nullopt);
  auto gelu_off = gated_gelu_disagreement(cpu, kGatedGelu, [](auto& h, auto& g) { return gradient_one_percent_off(gelu_in_fp32(h, g)); });
  EXPECT_EQ(error_of(gelu_off).find("output"), std::string::npos) << "the forward is right: " << error_of(gelu_off);
  EXPECT_NE(error_of(gelu_off).find("gates' gradient: relative error"), std::string::npos) << error_of(gelu_off);

  for (auto dtype : {torch::kBFloat16, torch::kFloat, torch::kHalf})
    EXPECT_EQ(slot_rows_disagreement(cpu, kSlotRows, dtype, aten_slot_rows()), std::nullopt) << dtype;
  auto rows_off = aten_slot_rows();
  rows_off.gather = [](const torch::Tensor& x, const SlotLayout& layout) { return x.index_select(0, layout.token_of_position.flip(0)); };
  rows_off.sum = [sum = rows_off.sum](auto& rows, auto& layout) { return one_percent_off(sum(rows, layout)); };
  auto slots_off = slot_rows_disagreement(cpu, kSlotRows, torch::kBFloat16, rows_off);
  EXPECT_NE(error_of(slots_off).find("gathered BFloat16 rows differ"), std::string::npos) << error_of(slots_off);
  EXPECT_NE(error_of(slots_off).find("token sums: relative error"), std::string::npos) << error_of(slots_off);
}

// A kernel whose check disagrees or throws is turned off for the run, naming the error; the others
// stay on, a kernel MOELAB_ATEN_ONLY turns off is not checked, and the next run decides afresh.
TEST(KernelSelfCheck, AFailingKernelIsTurnedOffForTheRunAndTheOthersStayOn) {
  ASSERT_TRUE(aten_only_cross_entropy);
  int cross_entropy_checks = 0;
  auto off = turn_off_failing_kernels(stand_ins(cross_entropy_checks), cpu, torch::kBFloat16);
  EXPECT_EQ(cross_entropy_checks, 0);
  ASSERT_EQ(off.size(), 2u);
  EXPECT_EQ(off[0].kernel, "gated_gelu");
  EXPECT_EQ(off[0].error.rfind("output: relative error", 0), 0u) << off[0].error;
  EXPECT_EQ(off[1].kernel, "slot_rows");
  EXPECT_EQ(off[1].error, "threw: CUDA error: an illegal memory access was encountered") << "no backtrace either";
  EXPECT_FALSE(enabled("gated_gelu"));
  EXPECT_FALSE(enabled("slot_rows"));
  EXPECT_TRUE(enabled("kern_gate"));
  EXPECT_FALSE(enabled("cross_entropy")) << "MOELAB_ATEN_ONLY";

  EXPECT_TRUE(turn_off_failing_kernels(right_stand_ins(), cpu, torch::kBFloat16).empty());
  EXPECT_TRUE(enabled("gated_gelu"));
  EXPECT_TRUE(enabled("slot_rows"));
  EXPECT_FALSE(enabled("cross_entropy"));
}

// Each kernel turned off gives one warning line and one event in the job's store (level warning),
// both naming the kernel and the error.
TEST(KernelSelfCheck, ATurnedOffKernelIsWarnedOfAndRecorded) {
  namespace fs = std::filesystem;
  const auto root = fs::temp_directory_path() / ("moelab_kernel_self_check_" + std::to_string(getpid()));
  fs::create_directories(root);
  int cross_entropy_checks = 0;
  const auto off = turn_off_failing_kernels(stand_ins(cross_entropy_checks), cpu, torch::kBFloat16);
  ASSERT_EQ(off.size(), 2u);
  {
    Store store((root / "moelab.db").string());
    store.upsert_job(JobRow{"job1", "tiny", "", "{}", "{}", 10});
    std::FILE* out = std::fopen((root / "stderr.txt").c_str(), "w");
    report_kernels_turned_off(off, out, &store, "job1");
    std::fclose(out);
    auto events = store.query("SELECT level, message FROM events WHERE job_id = 'job1' ORDER BY id");
    ASSERT_EQ(events.size(), 2u);
    for (size_t i = 0; i < 2; ++i) {
      EXPECT_EQ(events[i][0], "warning");
      EXPECT_EQ(events[i][1], off[i].message());
    }
  }
  std::stringstream printed;
  printed << std::ifstream(root / "stderr.txt").rdbuf();
  EXPECT_EQ(printed.str(), "warning: " + off[0].message() + "\nwarning: " + off[1].message() + "\n");
  for (const auto& k : off) {
    EXPECT_NE(k.message().find("moelab's " + k.kernel + " kernel failed its self-check"), std::string::npos);
    EXPECT_NE(k.message().find(k.error), std::string::npos) << k.message();
  }
  fs::remove_all(root);
  turn_off_failing_kernels({}, cpu, torch::kBFloat16);  // every kernel back on for the tests after
}

// On the CPU the kernels never run, so nothing is checked (the real checks would refuse its inputs).
TEST(KernelSelfCheck, NothingIsCheckedOnTheCpu) {
  EXPECT_TRUE(check_own_kernels(cpu, torch::kBFloat16).empty());
}
