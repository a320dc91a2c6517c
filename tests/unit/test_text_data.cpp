// `data prepare` and memory-mapped token files on real files: contents, split, checksums, and the
// errors for missing, unlisted and truncated files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/config/hashing.hpp"
#include "engine/data/token_file.hpp"
#include "engine/tokenizer/tokenizer.hpp"

namespace fs = std::filesystem;
using namespace moelab;

namespace {

class PreparedData : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("moelab_data_" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    // A few paragraphs of the real corpus, so the split falls on a paragraph break.
    std::ifstream corpus(resolve_corpus("austen"));
    ASSERT_TRUE(corpus) << "run scripts/setup.sh";
    text_.resize(60000);
    corpus.read(text_.data(), text_.size());
    std::ofstream(dir_ / "corpus.txt") << text_;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::vector<uint32_t> read_all(const TokenFile& f) {
    std::vector<int64_t> wide(f.size());
    f.read(0, wide.size(), wide.data());
    return {wide.begin(), wide.end()};
  }

  PrepareSummary prepare(const std::string& tokenizer, const std::string& out) {
    // Small chunks, so that encoding chunk by chunk is tested against encoding in one go.
    return prepare_dataset(PrepareOptions{(dir_ / "corpus.txt").string(), tokenizer, (dir_ / out).string(), 0.2, 2000});
  }

  fs::path dir_;
  std::string text_;
};

TEST_F(PreparedData, TrainAndValidationTogetherDecodeToTheCorpus) {
  for (std::string name : {"gpt2", "bytes"}) {
    auto summary = prepare(name, name);
    TokenFile train((dir_ / name / "train.bin").string()), val((dir_ / name / "val.bin").string());
    auto tokenizer = make_tokenizer(name);
    auto train_ids = read_all(train), val_ids = read_all(val);
    const std::string train_text = tokenizer->decode(train_ids), val_text = tokenizer->decode(val_ids);
    EXPECT_EQ(train_text + val_text, text_) << name;
    EXPECT_TRUE(train_text.ends_with("\n\n")) << name << ": the split is at a paragraph break";
    EXPECT_NEAR(double(val_text.size()) / text_.size(), 0.2, 0.05) << name;
    EXPECT_EQ(train_ids, tokenizer->encode(train_text)) << name << ": chunked encoding equals one-shot encoding";
    EXPECT_EQ(train.size(), summary.train_tokens);
    EXPECT_EQ(val.size(), summary.val_tokens);
    EXPECT_EQ(train.tokenizer(), name);
    EXPECT_EQ(train.vocab_size(), tokenizer->vocab_size());
    EXPECT_EQ(fs::file_size(dir_ / name / "train.bin"), train.size() * 2) << "uint16 tokens";
    auto meta = nlohmann::json::parse(std::ifstream(dir_ / name / "meta.json"));
    EXPECT_EQ(meta["files"]["train"]["sha256"], train.checksum());
    EXPECT_EQ(meta["files"]["val"]["sha256"], file_sha256((dir_ / name / "val.bin").string()));
  }
}

TEST_F(PreparedData, DamagedOrMissingFilesAreRefusedNamingThem) {
  prepare("bytes", "d");
  const std::string val = (dir_ / "d/val.bin").string();
  fs::resize_file(val, fs::file_size(val) - 1);
  try {
    TokenFile f(val);
    FAIL() << "accepted a truncated file";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(val + ": truncated"), std::string::npos) << e.what();
  }
  const std::string missing = (dir_ / "d/test.bin").string();
  std::ofstream(missing) << "xx";
  EXPECT_THROW(TokenFile{missing}, std::runtime_error);  // not listed in meta.json
  fs::remove(dir_ / "d/meta.json");
  try {
    TokenFile f((dir_ / "d/train.bin").string());
    FAIL() << "accepted a file without meta.json";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("meta.json"), std::string::npos) << e.what();
  }
  try {
    TokenFile f((dir_ / "nowhere/train.bin").string());
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find((dir_ / "nowhere/train.bin").string()), std::string::npos);
  }
}

// One id beyond the vocabulary anywhere in the file is found when the file is opened, named with its
// position; the key that named the file leads the message when given.
TEST_F(PreparedData, AnIdOutsideTheVocabularyIsRefusedWhenOpened) {
  prepare("bytes", "ids");
  const std::string train = (dir_ / "ids/train.bin").string();
  {
    TokenFile intact(train);
    auto ids = read_all(intact);
    EXPECT_EQ(intact.max_token(), *std::max_element(ids.begin(), ids.end()));
  }
  const size_t position = fs::file_size(train) / 2 - 7;  // a token in the middle, not at a boundary
  {
    std::fstream f(train, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(position * 2);
    f.put('\x2c'), f.put('\x01');  // 0x012c = 300, little-endian
  }
  const std::string expected = train + ": token 300 at position " + std::to_string(position) + " is outside the vocabulary of 256";
  try {
    TokenFile f(train, "data.train");
    FAIL() << "accepted an id outside the vocabulary";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()).find("data.train: " + expected), 0u) << e.what();
  }
  auto checks = verify_dataset((dir_ / "ids").string());
  ASSERT_EQ(checks.size(), 2u);
  for (auto& check : checks)
    EXPECT_EQ(check.problem.find(expected) == 0, check.split == "train") << check.split << ": " << check.problem;
}

TEST_F(PreparedData, UnknownCorpusNamesTheBuiltIns) {
  try {
    prepare_dataset(PrepareOptions{"shakespeare", "bytes", (dir_ / "x").string()});
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("shakespeare: no such corpus file (built-in corpora: austen)"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(dir_ / "x/meta.json"));
}

}  // namespace
