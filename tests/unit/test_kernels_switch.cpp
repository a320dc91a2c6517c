// MOELAB_ATEN_ONLY's values: which of moelab's CUDA kernels each turns off (engine/kernels/switch.hpp),
// and the run's own switch beside it, which a failed start-up self-check sets.
#include <gtest/gtest.h>

#include <filesystem>

#include "engine/kernels/switch.hpp"

using moelab::kernels::kernels_turned_off;
using Names = std::set<std::string>;

TEST(AtenOnly, UnsetEmptyOrZeroLeavesEveryKernelOn) {
  EXPECT_EQ(kernels_turned_off(nullptr), Names{});
  EXPECT_EQ(kernels_turned_off(""), Names{});
  EXPECT_EQ(kernels_turned_off("0"), Names{});
}

TEST(AtenOnly, OneOrAllTurnsEveryKernelOff) {
  const Names every = {"cross_entropy", "gated_gelu", "kern_gate", "slot_rows"};
  EXPECT_EQ(kernels_turned_off("1"), every);
  EXPECT_EQ(kernels_turned_off("all"), every);
}

TEST(AtenOnly, AListTurnsOffOnlyTheKernelsItNames) {
  EXPECT_EQ(kernels_turned_off("gated_gelu"), Names{"gated_gelu"});
  EXPECT_EQ(kernels_turned_off("cross_entropy,slot_rows"), (Names{"cross_entropy", "slot_rows"}));
}

TEST(AtenOnly, AnUnknownNameIsAnErrorNamingTheChoices) {
  try {
    kernels_turned_off("gated_gelu,layer_norm");
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("'layer_norm' is not one of moelab's kernels"), std::string::npos) << message;
    EXPECT_NE(message.find("cross_entropy, gated_gelu, kern_gate, slot_rows"), std::string::npos) << message;
  }
}

// One name per kernel file, so that a new kernel cannot be left out of the switch.
TEST(AtenOnly, EveryKernelFileHasAName) {
  Names files;
  for (const auto& entry : std::filesystem::directory_iterator(std::filesystem::path(MOELAB_SOURCE_DIR) / "engine/kernels"))
    if (entry.path().extension() == ".cu") files.insert(entry.path().stem().string());
  EXPECT_EQ(files, Names(moelab::kernels::kKernelNames.begin(), moelab::kernels::kKernelNames.end()));
}

// A failed self-check turns off exactly the kernels it names, for the run: the next run's checks
// set the list afresh. A name that is no kernel's is an error, not a kernel left on.
TEST(RunSwitch, TurnsOffExactlyTheKernelsNamed) {
  if (std::getenv("MOELAB_ATEN_ONLY")) GTEST_SKIP() << "MOELAB_ATEN_ONLY is set";
  using moelab::kernels::own_kernel_enabled;
  moelab::kernels::turn_off_for_this_run({"gated_gelu", "slot_rows"});
  EXPECT_FALSE(own_kernel_enabled("gated_gelu"));
  EXPECT_FALSE(own_kernel_enabled("slot_rows"));
  EXPECT_TRUE(own_kernel_enabled("cross_entropy"));
  EXPECT_TRUE(own_kernel_enabled("kern_gate"));
  moelab::kernels::turn_off_for_this_run({});
  for (auto name : moelab::kernels::kKernelNames) EXPECT_TRUE(own_kernel_enabled(name)) << name;
  EXPECT_THROW(own_kernel_enabled("layer_norm"), std::invalid_argument);
  EXPECT_THROW(moelab::kernels::turn_off_for_this_run({"layer_norm"}), std::invalid_argument);
}
