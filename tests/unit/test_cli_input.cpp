// The `moelab` command line and what it is given: --help from every command and subcommand (the
// commands found from `moelab --help`'s own listing, so a command added without help fails here),
// and configs, specs and option values refused with exit code 2, a message naming the file (or
// option) and the key, and nothing written: no store, no run directory.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/config/config_schema.hpp"
#include "run_moelab.hpp"
#include "runner/cli.hpp"

namespace fs = std::filesystem;
using moelab::testing::run_moelab;
using nlohmann::json;

namespace {

struct Answer {
  int code;
  std::string out;  // what it wrote to std::cout
};

// `moelab <args>` in this process: run_cli is all that main does, and the help of ~30 commands is
// read in milliseconds rather than a process start each.
Answer cli(const std::vector<std::string>& args) {
  std::ostringstream out;
  auto* saved = std::cout.rdbuf(out.rdbuf());
  const int code = moelab::run_cli(args);
  std::cout.rdbuf(saved);
  return {code, out.str()};
}

// The names a "commands:" listing gives, one per "  NAME  summary" line up to the blank line after it.
std::vector<std::string> listed_commands(const std::string& help) {
  std::vector<std::string> names;
  std::istringstream lines(help);
  std::string line;
  bool in_list = false;
  while (std::getline(lines, line)) {
    if (line == "commands:") in_list = true;
    else if (in_list && line.empty()) break;
    else if (in_list) names.push_back(line.substr(2, line.find(' ', 2) - 2));
  }
  return names;
}

}  // namespace

// Commands come from `moelab --help` and subcommands from each command's --help, so a command added
// later without help fails here.
TEST(CliHelp, EveryCommandAndSubcommandAnswersHelpWithItsUsageAndExitZero) {
  auto top = cli({"--help"});
  ASSERT_EQ(top.code, 0) << top.out;
  EXPECT_EQ(cli({"-h"}).out, top.out);
  auto commands = listed_commands(top.out);
  ASSERT_GE(commands.size(), 8u) << top.out;
  std::map<std::string, std::vector<std::string>> groups;
  for (auto& command : commands) {
    for (std::string flag : {"--help", "-h"}) {
      auto r = cli({command, flag});
      EXPECT_EQ(r.code, 0) << command << " " << flag << ": " << r.out;
      EXPECT_TRUE(r.out.starts_with("usage: moelab " + command)) << command << " " << flag << ": " << r.out;
      groups[command] = listed_commands(r.out);
      for (auto& sub : groups[command]) {
        auto s = cli({command, sub, flag});
        EXPECT_EQ(s.code, 0) << command << " " << sub << " " << flag << ": " << s.out;
        EXPECT_TRUE(s.out.starts_with("usage: moelab " + command + " " + sub)) << command << " " << sub << ": " << s.out;
        EXPECT_NE(s.out.find("-h [ --help ]"), std::string::npos) << command << " " << sub << ": " << s.out;
      }
    }
  }
  // The groups list their subcommands in their help, as `moelab --help` lists the commands.
  EXPECT_EQ(groups["sweep"], (std::vector<std::string>{"plan", "run", "status", "cancel"}));
  EXPECT_EQ(groups["data"], (std::vector<std::string>{"prepare", "verify"}));
  EXPECT_EQ(groups["db"], (std::vector<std::string>{"query"}));
  EXPECT_EQ(groups["config"], (std::vector<std::string>{"reference"}));
}

// The binary: help on stdout (the trailing '#' comments out run_moelab's "2>&1"), errors on stderr.
TEST(CliHelp, TheBinaryAnswersHelpOnStdoutAndAnUnknownCommandWithTheCommandsThereAre) {
  for (auto args : {"sweep --help", "data -h"}) {
    auto r = run_moelab(std::string(args) + " 2>/dev/null #");
    EXPECT_EQ(r.code, 0) << args << ": " << r.output;
    EXPECT_TRUE(r.output.starts_with("usage: moelab " + std::string(args).substr(0, 5))) << args << ": " << r.output;
  }
  auto none = run_moelab("sweep");
  EXPECT_EQ(none.code, 2);
  EXPECT_NE(none.output.find("error: moelab sweep: expected a command (plan, run, status, cancel; see --help)"), std::string::npos)
      << none.output;
  auto unknown = run_moelab("sweep frobnicate");
  EXPECT_EQ(unknown.code, 2);
  EXPECT_NE(unknown.output.find("error: unknown sweep command \"frobnicate\" (expected one of: plan, run, status, cancel)"),
            std::string::npos)
      << unknown.output;
}

TEST(CliConfig, ReferencePrintsTheFieldTable) {
  auto r = cli({"config", "reference"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out, moelab::job_config_schema().reference());
}

namespace {

class CliRefusal : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("moelab_cli_input_" + std::to_string(getpid()));
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  // A tiny job config that would train (but for its data files, which a refusal comes before).
  static json config() {
    return json{{"model", {{"vocab_size", 256}, {"seq_len", 32}, {"layers", 2}, {"d_model", 32}, {"heads", 4},
                           {"experts", 4}, {"top_k", 2}, {"expert_size", 32}}},
                {"train", {{"steps", 4}, {"batch_size", 4}, {"micro_batch", 4}, {"device", "cpu"}}},
                {"data", {{"tokenizer", "bytes"}}}};
  }

  // `j` written to root/name; 123456.5 is written as `number` (1e999 has no json value to dump).
  std::string write(const json& j, const std::string& name, const std::string& number = "123456.5") {
    std::string text = j.dump(2);
    if (auto at = text.find("123456.5"); at != std::string::npos) text.replace(at, 8, number);
    std::ofstream(root_ / name) << text;
    return (root_ / name).string();
  }

  // Runs `args` (where {db} and {dir} stand for a store and a directory under root) and checks that
  // it is refused with `message` and leaves neither behind.
  void expect_refused(const std::string& name, std::string args, const std::string& message) {
    const fs::path db = root_ / (name + ".db"), dir = root_ / name;
    for (auto [placeholder, path] : {std::pair{std::string("{db}"), db}, {"{dir}", dir}})
      if (auto at = args.find(placeholder); at != std::string::npos) args.replace(at, placeholder.size(), path.string());
    auto r = run_moelab(args);
    EXPECT_EQ(r.code, 2) << name << ": " << r.output;
    EXPECT_NE(r.output.find(message), std::string::npos) << name << ": expected \"" << message << "\" in " << r.output;
    EXPECT_FALSE(fs::exists(db)) << name << " wrote a store";
    EXPECT_FALSE(fs::exists(dir)) << name << " wrote a directory";
  }

  fs::path root_;
};

}  // namespace

// The issue's examples: values that used to wrap or pass and train to "done".
TEST_F(CliRefusal, BadConfigValuesAreRefusedNamingFileAndKeyAndWriteNothing) {
  const std::string train = "train --quiet --db {db} --run-dir {dir} --config ";
  const std::string good = write(config(), "good.json");
  expect_refused("steps", train + good + " --set train.steps=4294967297",
                 "error: --set train.steps=4294967297: train.steps: expected an integer in [1, 2147483647], got 4294967297");
  expect_refused("lr_set", train + good + " --set train.lr=1e999",
                 "error: --set train.lr=1e999: train.lr: the number 1e999 is out of range: it must fit a double");

  auto edited = [&](const std::string& name, auto edit) {
    json c = config();
    edit(c);
    return write(c, name + ".json");
  };
  auto d_model = edited("d_model", [](json& c) { c["model"]["d_model"] = 4294967328; });
  expect_refused("d_model", train + d_model,
                 "error: " + d_model + ": model.d_model: expected an integer in [1, 2147483647], got 4294967328");
  auto betas = edited("betas", [](json& c) { c["train"]["betas"] = {1.5, 0.95}; });
  expect_refused("betas", train + betas, "error: " + betas + ": train.betas[0]: expected a number in [0, 1), got 1.5");
  auto decay = edited("decay", [](json& c) { c["train"]["weight_decay"] = -0.1; });
  expect_refused("decay", train + decay, "error: " + decay + ": train.weight_decay: expected a number >= 0, got -0.1");
  auto bias = edited("bias", [](json& c) { c["model"]["bias_update_rate"] = -1; });
  expect_refused("bias", train + bias, "error: " + bias + ": model.bias_update_rate: expected a number >= 0, got -1");

  json c = config();
  c["train"]["lr"] = 123456.5;
  auto huge = write(c, "huge.json", "1e999");
  expect_refused("huge", train + huge, "error: " + huge + ": train.lr: the number 1e999 is out of range: it must fit a double (line 18, column 11)");
}

// Each value a spec owns is checked in test_runner_sweep's malformed specs (through `sweep run` too);
// here, that the errors name the spec file.
TEST_F(CliRefusal, BadSpecValuesAreRefusedNamingFileAndKeyAndWriteNothing) {
  auto spec = [&](const std::string& name, auto edit, const std::string& number = "123456.5") {
    json s{{"name", "refused"}, {"base", config()}, {"axes", {{"seed", {0, 1}}}}};
    edit(s);
    return write(s, name + ".json", number);
  };
  const std::string run = "sweep run --db {db} --workdir {dir} ";
  auto steps = spec("steps", [](json& s) { s["axes"]["train.steps"] = {10, 4294967297}; });
  expect_refused("steps", run + steps, "error: " + steps + ": axes.train.steps[1]: expected an integer in [1, 2147483647], got 4294967297");
  auto huge = spec("huge", [](json& s) { s["base"]["train"]["lr"] = 123456.5; }, "-1e999");
  expect_refused("huge", run + huge, "error: " + huge + ": base.train.lr: the number -1e999 is out of range");
  // Checks across fields come with each job, which names the file too.
  auto min_lr = spec("min_lr", [](json& s) { s["axes"]["train.min_lr"] = {1.0}; });
  expect_refused("min_lr", run + min_lr, "error: " + min_lr + ": job {\"seed\":0,\"train.min_lr\":1.0}: train.min_lr: expected a number in [0, lr]");
}

TEST_F(CliRefusal, OptionValuesOutOfRangeAreRefusedNamingTheOption) {
  const std::string good = write(config(), "good.json");
  const std::string spec = write(json{{"name", "options"}, {"base", config()}}, "spec.json");
  expect_refused("jobs", "sweep run " + spec + " --jobs=-1 --db {db} --workdir {dir}", "error: --jobs -1: expected a value >= 0");
  expect_refused("stop", "train --config " + good + " --stop-after=-1 --db {db} --run-dir {dir}",
                 "error: --stop-after -1: expected a value >= 0");
  expect_refused("profile", "train --config " + good + " --profile-steps=-2 --db {db} --run-dir {dir}",
                 "error: --profile-steps -2: expected a value >= 0");
  expect_refused("fraction", "data prepare --corpus austen --val-fraction nan --out {dir} --tokenizer bytes",
                 "error: --val-fraction nan: expected a value in (0, 1)");
  expect_refused("limit", "eval --checkpoint {dir}/x.pt --limit=-1 --db {db}", "error: --limit -1: expected a value >= 0");
  expect_refused("every", "eval --job x --every=-5 --db {db}", "error: --every -5: expected a value >= 0");
  expect_refused("port", "serve --checkpoint {dir}/x.pt --port 65536", "error: --port 65536: expected a value in [0, 65535]");
}
