// The task table (eval/tasks.json): the one list of evaluation tasks that `moelab eval`, sweep specs,
// reports and eval/prepare_tasks.py all read.
#include <gtest/gtest.h>

#include <cstdio>
#include <stdexcept>
#include <string>

#include "eval/tasks.hpp"
#include "run_moelab.hpp"

using namespace moelab;

TEST(EvalTasks, TheTableIsThePapersSixTasksWithTheirMetrics) {
  EXPECT_EQ(eval_task_names(),
            (std::vector<std::string>{"arc_easy", "arc_challenge", "hellaswag", "piqa", "sciq", "winogrande"}));
  EXPECT_EQ(eval_task("arc_easy").metric, "acc");
  EXPECT_EQ(eval_task("arc_challenge").metric, "acc_norm");
  EXPECT_EQ(eval_task("hellaswag").metric, "acc_norm");
  EXPECT_EQ(eval_task("piqa").metric, "acc_norm");
  EXPECT_EQ(eval_task("sciq").metric, "acc");
  EXPECT_EQ(eval_task("winogrande").metric, "acc");
  EXPECT_EQ(eval_task_list(","), "arc_easy,arc_challenge,hellaswag,piqa,sciq,winogrande");
  try {
    eval_task("mmlu");
    ADD_FAILURE() << "mmlu is not a task";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()), "unknown task \"mmlu\" (known: arc_easy, arc_challenge, hellaswag, piqa, sciq, winogrande)");
  }
}

// prepare_tasks.py prepares exactly the tasks the binary knows, in the same order, from the same file.
TEST(EvalTasks, PrepareTasksReadsTheSameTable) {
  const std::string command = std::string(MOELAB_PYTHON) + " -c \"import sys; sys.path.insert(0, '" MOELAB_SOURCE_DIR
                              "/eval'); import prepare_tasks; print(','.join(t['name'] for t in prepare_tasks.TASKS))\" 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  std::string output;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof buffer, pipe)) output.append(buffer, n);
  ASSERT_EQ(pclose(pipe), 0) << output;
  EXPECT_EQ(output, eval_task_list(",") + "\n");
}

// `moelab eval --help` names the default tasks from the table.
TEST(EvalTasks, EvalHelpShowsTheTablesTasksAsTheDefault) {
  auto help = moelab::testing::run_moelab("eval --help");
  EXPECT_EQ(help.code, 0) << help.output;
  std::string unwrapped = help.output;  // Boost wraps long help lines, even inside a word
  std::erase_if(unwrapped, [](char c) { return c == ' ' || c == '\n'; });
  EXPECT_NE(unwrapped.find("(default:" + eval_task_list(",") + ")"), std::string::npos) << help.output;
}
