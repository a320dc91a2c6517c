// MOELAB_ATEN_ONLY's values: which of moelab's CUDA kernels each turns off (engine/kernels/switch.hpp).
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
