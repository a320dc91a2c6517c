// GPT-2 BPE against ids that tiktoken computed from the same ranks file (tests/fixtures/gpt2_ids.json,
// made by scripts/make_gpt2_fixture.py), and byte round trips of arbitrary strings.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "engine/tokenizer/pretokenize.hpp"
#include "engine/tokenizer/tokenizer.hpp"

using namespace moelab;

TEST(Gpt2Tokenizer, MatchesTiktokenOnFixedStrings) {
  auto tokenizer = make_tokenizer("gpt2");
  std::ifstream in(std::string(MOELAB_SOURCE_DIR) + "/tests/fixtures/gpt2_ids.json");
  ASSERT_TRUE(in);
  auto fixture = nlohmann::json::parse(in);
  ASSERT_GE(fixture["cases"].size(), 25u);
  for (auto& c : fixture["cases"]) {
    auto text = c["text"].get<std::string>();
    auto expected = c["ids"].get<std::vector<uint32_t>>();
    EXPECT_EQ(tokenizer->encode(text), expected) << "text: " << text;
    EXPECT_EQ(tokenizer->decode(expected), text);
  }
}

TEST(Gpt2Tokenizer, KnownIdsAndVocabulary) {
  auto tokenizer = make_tokenizer("gpt2");
  EXPECT_EQ(tokenizer->vocab_size(), 50257u);
  EXPECT_EQ(tokenizer->end_of_text(), 50256u);
  // "Hello world" is [15496, 995] in GPT-2 (well known from the GPT-2 release).
  EXPECT_EQ(tokenizer->encode("Hello world"), (std::vector<uint32_t>{15496, 995}));
  uint32_t eot = 50256;
  EXPECT_EQ(tokenizer->decode(std::span(&eot, 1)), "<|endoftext|>");
}

TEST(Pretokenizer, SplitsLikeGpt2sPattern) {
  auto pieces = gpt2_pieces("Hello  world's 42!!\n\n x");
  std::vector<std::string> got(pieces.begin(), pieces.end());
  EXPECT_EQ(got, (std::vector<std::string>{"Hello", " ", " world", "'s", " 42", "!!", "\n\n", " x"}));
}

TEST(Tokenizers, ArbitraryBytesRoundTrip) {
  std::mt19937 rng(2026);
  std::uniform_int_distribution<int> byte(0, 255), length(0, 200);
  for (auto name : {"gpt2", "bytes"}) {
    auto tokenizer = make_tokenizer(name);
    for (int i = 0; i < 300; ++i) {
      std::string s(length(rng), '\0');
      for (auto& ch : s) ch = char(byte(rng));
      auto ids = tokenizer->encode(s);
      for (auto id : ids) ASSERT_LT(id, tokenizer->vocab_size());
      ASSERT_EQ(tokenizer->decode(ids), s) << name << " case " << i;
    }
  }
}

TEST(Tokenizers, UnknownNameAndMissingRanksAreClearErrors) {
  EXPECT_THROW(make_tokenizer("sentencepiece"), std::invalid_argument);
  setenv("MOELAB_ASSETS", "/nonexistent-assets", 1);
  try {
    make_tokenizer("gpt2");
    FAIL() << "loaded ranks from nowhere";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent-assets/gpt2.tiktoken"), std::string::npos) << e.what();
  }
  unsetenv("MOELAB_ASSETS");
}
