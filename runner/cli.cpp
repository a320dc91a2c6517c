#include "runner/cli.hpp"

#include <boost/program_options.hpp>
#include <atomic>
#include <chrono>
#include <csignal>
#include <thread>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>

#include "db/default_paths.hpp"
#include "engine/config/config_schema.hpp"
#include "engine/config/job_config.hpp"
#include "engine/data/token_file.hpp"
#include "engine/model/gpt.hpp"
#include "engine/serve/completion_server.hpp"
#include "eval/lm_eval_driver.hpp"
#include "reports/report.hpp"
#include "engine/train/error_message.hpp"
#include "engine/train/trainer.hpp"
#include "runner/command_line.hpp"
#include "runner/sweep_commands.hpp"

namespace moelab {
namespace po = boost::program_options;

namespace {

int data_prepare(const std::vector<std::string>& args) {
  PrepareOptions opts;
  po::options_description options("moelab data prepare");
  options.add_options()
      ("corpus", po::value(&opts.corpus)->required(), "built-in corpus name (austen) or a UTF-8 text file")
      ("tokenizer", po::value(&opts.tokenizer)->default_value("gpt2"), "gpt2 | bytes")
      ("out", po::value(&opts.out_dir)->required(), "output directory for train.bin, val.bin, meta.json")
      ("val-fraction", po::value(&opts.val_fraction)->default_value(0.1)->notifier(in_range("--val-fraction", 0.0, 1.0, /*open=*/true)),
       "share of the text held out for validation, in (0, 1)");
  po::variables_map vm;
  if (!parse_options(args, "data prepare --corpus NAME|PATH --out DIR [--tokenizer gpt2|bytes]", options, vm)) return 0;
  auto summary = prepare_dataset(opts);
  std::printf("wrote %s: %llu train tokens, %llu val tokens\n", summary.meta_path.c_str(),
              (unsigned long long)summary.train_tokens, (unsigned long long)summary.val_tokens);
  return 0;
}

// Exit 0 when every file matches its record, 1 when one does not (each problem printed), as sha256sum -c does.
int data_verify(const std::vector<std::string>& args) {
  std::string dir;
  po::options_description options("moelab data verify");
  options.add_options()("dir", po::value(&dir)->required(), "a prepared dataset directory (with meta.json)");
  po::positional_options_description positional;
  positional.add("dir", 1);
  po::variables_map vm;
  if (!parse_options(args, "data verify DIR", options, vm, positional)) return 0;
  int damaged = 0;
  for (auto& check : verify_dataset(dir)) {
    if (check.problem.empty())
      std::printf("%s %s: ok (%llu tokens)\n", check.split.c_str(), check.path.c_str(), (unsigned long long)check.tokens);
    else
      std::printf("%s %s: DAMAGED: %s\n", check.split.c_str(), check.path.c_str(), check.problem.c_str()), ++damaged;
  }
  return damaged ? 1 : 0;
}

int params(const std::vector<std::string>& args) {
  std::string config_path;
  po::options_description options("moelab params");
  options.add_options()("config", po::value(&config_path)->required(), "job config JSON")("json", "print JSON");
  po::variables_map vm;
  if (!parse_options(args, "params --config FILE [--json]", options, vm)) return 0;
  auto config = load_job_config(config_path);
  auto size = model_size(config.model);
  nlohmann::json out{{"total_params", size.total_params},
                     {"active_params", size.active_params},
                     {"flops_per_token", size.flops_per_token}};
  if (vm.count("json")) {
    std::cout << out.dump() << "\n";
  } else {
    std::printf("%s (%s): %.1fM total, %.1fM active parameters, %.2f GFLOP per training token\n", config.name.c_str(),
                config.model.router_label().c_str(), size.total_params / 1e6, size.active_params / 1e6,
                size.flops_per_token / 1e9);
  }
  return 0;
}

int train(const std::vector<std::string>& args) {
  std::string config_path;
  std::vector<std::string> overrides;
  TrainOptions opts;
  po::options_description options("moelab train");
  options.add_options()
      ("config", po::value(&config_path)->required(), "job config JSON")
      ("set", po::value(&overrides)->composing(), "PATH=VALUE: override a config field, e.g. model.router=softmax")
      ("db", po::value(&opts.db_path)->default_value(opts.db_path), "SQLite store")
      ("run-dir", po::value(&opts.run_dir), ("checkpoint directory (default " + default_job_run_dir("<job id>") + ")").c_str())
      ("resume", po::bool_switch(&opts.resume), "continue from the newest checkpoint in --run-dir, if any")
      ("stop-after", po::value(&opts.stop_after)->default_value(0)->notifier(in_range("--stop-after", 0)),
       "checkpoint and stop after this step, as if interrupted")
      ("profile-steps", po::value(&opts.profile_steps)->default_value(0)->notifier(in_range("--profile-steps", 0)),
       "profile this many steps after 2 warm-up steps instead of training: time per GPU kernel (CPU operator), "
       "Chrome trace and CSV in <run-dir>/profile; nothing is stored")
      ("quiet", "no progress line");
  po::variables_map vm;
  if (!parse_options(args, "train --config FILE [--db FILE] [--run-dir DIR] [--resume]", options, vm)) return 0;
  opts.progress = !vm.count("quiet");
  auto config = load_job_config(config_path, overrides);
  install_stop_handlers();
  return train_job(config, opts);
}

std::atomic<bool> serve_stop{false};
// How long `moelab serve` waits for its connections to close after SIGTERM/SIGINT before it exits anyway.
constexpr std::chrono::milliseconds kServeStopGrace{1000};

int serve(const std::vector<std::string>& args) {
  std::string checkpoint, host;
  int port = 0;
  ServeLimits limits;
  double request_timeout = std::chrono::duration<double>(limits.request_timeout).count();
  po::options_description options("moelab serve");
  options.add_options()
      ("checkpoint", po::value(&checkpoint)->required(), "a checkpoint's .pt file")
      ("host", po::value(&host)->default_value("127.0.0.1"), "address to listen on (loopback unless told otherwise)")
      ("port", po::value(&port)->default_value(8000)->notifier(in_range("--port", 0, 65535)), "port; 0 picks a free one")
      ("max-tokens", po::value(&limits.max_tokens)->default_value(limits.max_tokens),
       "most tokens one completion may ask for (more: 400); 0: the model's context")
      ("request-timeout", po::value(&request_timeout)->default_value(request_timeout),
       "seconds one request may wait for the model and run (then 503)");
  po::variables_map vm;
  if (!parse_options(args, "serve --checkpoint PATH [--host 127.0.0.1] [--port N] [--max-tokens N] [--request-timeout S]", options,
                     vm))
    return 0;
  if (limits.max_tokens < 0) throw std::runtime_error("--max-tokens " + std::to_string(limits.max_tokens) + ": give 0 or more");
  if (!(request_timeout > 0)) throw std::runtime_error("--request-timeout " + std::to_string(request_timeout) + ": give seconds > 0");
  limits.request_timeout = std::chrono::milliseconds(int64_t(request_timeout * 1000));
  Scorer scorer(checkpoint);
  CompletionServer server(scorer, scorer.config().name, limits);
  const int bound = server.bind(host, port);
  std::printf("serving %s (step %d) at http://%s:%d/v1/completions (max_tokens <= %lld, %g s per request)\n",
              scorer.config().name.c_str(), scorer.step(), host.c_str(), bound, (long long)server.max_tokens(), request_timeout);
  std::fflush(stdout);
  // A signal only raises a flag; this thread turns it into an orderly stop of the server.
  auto request_stop = [](int) { serve_stop = true; };
  std::signal(SIGINT, request_stop);
  std::signal(SIGTERM, request_stop);
  std::atomic<bool> stopped{false};
  std::thread watcher([&] {
    while (!serve_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    server.stop();  // running and waiting requests end at their next forward pass
    // A client still sending its request holds a worker that stop() cannot reach, so the workers
    // get only so long. Then the process ends without libtorch's teardown (about a second on a busy
    // machine): a server has nothing to save, and SIGTERM's promise is to be gone within 2 s.
    const auto give_up = std::chrono::steady_clock::now() + kServeStopGrace;
    while (!stopped && std::chrono::steady_clock::now() < give_up) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (!stopped)
      std::fprintf(stderr, "moelab serve: a connection still open %g s after the stop; exiting\n",
                   std::chrono::duration<double>(kServeStopGrace).count());
    std::fflush(nullptr);
    std::_Exit(0);
  });
  server.listen();
  stopped = true;
  serve_stop = true;
  watcher.join();  // does not return: the watcher ends the process
  return 0;
}

int eval(const std::vector<std::string>& args) {
  EvalOptions opts;
  std::string tasks;
  po::options_description options("moelab eval");
  options.add_options()
      ("job", po::value(&opts.job_id), "evaluate this job's newest checkpoint")
      ("checkpoint", po::value(&opts.checkpoint), "or this checkpoint (.pt)")
      ("tasks", po::value(&tasks), ("comma-separated (default: " + eval_task_list(",") + ")").c_str())
      ("limit", po::value(&opts.limit)->default_value(0)->notifier(in_range("--limit", 0)), "documents per task (0: all); for testing only")
      ("every", po::value(&opts.every)->default_value(0)->notifier(in_range("--every", 0)),
       "with --job: every kept checkpoint at a multiple of this step, and the newest")
      ("db", po::value(&opts.db_path)->default_value(opts.db_path), "SQLite store")
      ("output", po::value(&opts.output_dir), "where lm-eval writes its results and samples (default: beside the checkpoint)");
  po::variables_map vm;
  if (!parse_options(args, "eval (--job ID | --checkpoint PATH) [--tasks LIST] [--limit N] [--db FILE]", options, vm)) return 0;
  if (opts.job_id.empty() == opts.checkpoint.empty()) throw std::runtime_error("eval: give exactly one of --job and --checkpoint");
  if (!tasks.empty()) opts.tasks = split_list(tasks);
  if (opts.every > 0 && opts.job_id.empty()) throw std::runtime_error("eval: --every needs --job");
  std::printf("%-9s %-14s %-9s %8s %8s %8s  %s\n", "ckpt", "task", "metric", "value", "stderr", "samples", "data");
  run_eval(opts, [](const std::string& checkpoint, const std::vector<TaskResult>& results) {
    for (auto& r : results)
      std::printf("%-9s %-14s %-9s %8.4f %8s %8lld  %s\n", std::filesystem::path(checkpoint.empty() ? "newest" : checkpoint).stem().c_str(),
                  r.task.c_str(), r.metric.c_str(), r.value,
                  r.stderr_value ? std::to_string(*r.stderr_value).substr(0, 6).c_str() : "-", (long long)r.samples,
                  r.source.c_str());
    std::fflush(stdout);
  });
  return 0;
}

int report(const std::vector<std::string>& args) {
  ReportOptions opts;
  std::string studies, formats;
  po::options_description options("moelab report");
  options.add_options()
      ("sweep", po::value(&opts.sweep)->required(), "the sweep's name")
      ("study", po::value(&studies)->default_value("all"), "routers,seeds,sparsity,granularity,downstream,routing or all")
      ("format", po::value(&formats)->default_value("md,csv,png,svg"), "any of md,csv,png,svg")
      ("out", po::value(&opts.out_dir), "output directory (default: <db dir>/reports/<sweep>)")
      ("paper", po::bool_switch(&opts.paper), "put the paper's figures beside ours where a configuration matches")
      ("db", po::value(&opts.db_path)->default_value(opts.db_path), "SQLite store");
  po::positional_options_description positional;
  positional.add("sweep", 1);
  po::variables_map vm;
  if (!parse_options(args, "report SWEEP [--study LIST] [--format LIST] [--out DIR] [--paper] [--db FILE]", options, vm,
                     positional))
    return 0;
  for (auto& name : split_list(studies))
    if (name != "all") opts.studies.push_back(parse_study(name));
  opts.formats = split_list(formats);
  for (auto& file : write_report(opts)) std::printf("wrote %s\n", file.c_str());
  return 0;
}

int config_reference(const std::vector<std::string>& args) {
  po::options_description options("moelab config reference");
  po::variables_map vm;
  if (!parse_options(args, "config reference", options, vm)) return 0;
  std::cout << job_config_schema().reference();
  return 0;
}

// Every command of `moelab`, groups with their subcommands: the one table that dispatch and --help read.
const Commands& commands() {
  static const Commands table = {
      {"data", "tokenize a corpus into token files", {},
       {{"prepare", "tokenize a corpus into train.bin, val.bin and meta.json", data_prepare},
        {"verify", "check token files against meta.json (size, SHA-256, ids within the vocabulary)", data_verify}}},
      {"config", "the job config's fields", {},
       {{"reference", "every job config field: values, default, part in the job's id, meaning (the README's table)",
         config_reference}}},
      {"params", "parameter counts and FLOPs of a config", params},
      {"train", "train one job", train},
      {"eval", "score a checkpoint with lm-evaluation-harness (six zero-shot tasks)", eval},
      {"serve", "serve a checkpoint over the OpenAI completions protocol (for lm-eval)", serve},
      {"sweep", "expand a sweep spec into jobs, run them and follow them", {},
       {{"plan", "list the jobs a sweep spec expands to, with their status in the store", sweep_plan},
        {"run", "run the spec's unfinished jobs (local processes or a Slurm array)", sweep_run},
        {"status", "progress, losses and ETA of a sweep's jobs", sweep_status},
        {"cancel", "stop a sweep's running jobs (they checkpoint) and cancel the rest", sweep_cancel}}},
      {"report", "the paper's tables and plots for a sweep (markdown, CSV, PNG, SVG)", report},
      {"db", "read-only SQL questions to the store", {},
       {{"query", "a read-only SQL statement against the store, as a table", db_query}}},
  };
  return table;
}

}  // namespace

int run_cli(const std::vector<std::string>& args) {
  if (args.empty()) {
    print_commands("", commands(), std::cout);
    return kExitBadInput;
  }
  try {
    return dispatch("", commands(), args);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", error_message(e).c_str());
    return kExitBadInput;
  }
}

}  // namespace moelab

