#include "engine/train/step_profile.hpp"

#include <kineto/ActivityType.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <stdexcept>
#include <string_view>
#include <unordered_map>

namespace moelab {
namespace {

namespace profiler = torch::autograd::profiler;
using torch::profiler::impl::ActivityType;
using KinetoActivity = libkineto::ActivityType;

bool is_activity(const profiler::KinetoEvent& e, KinetoActivity type) { return e.activityType() == uint8_t(type); }

// What the device itself ran: kernels, copies and fills (not the host's launch calls).
bool is_device_work(const profiler::KinetoEvent& e) {
  return is_activity(e, KinetoActivity::CONCURRENT_KERNEL) || is_activity(e, KinetoActivity::GPU_MEMCPY) ||
         is_activity(e, KinetoActivity::GPU_MEMSET);
}

void wait_for(torch::Device device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

struct Span {
  std::string label;  // what the span is summed under
  double ms;
};

// The host's operators, nested per thread: each one's self time (its span minus the spans of the
// operators it called, so that aten::linear calling aten::addmm counts the matmul once) and, by
// correlation id, "caller > operator", the name the device's work is attributed to.
struct Operators {
  std::vector<Span> self_times;
  std::unordered_map<uint64_t, std::string> launcher;
};

Operators nest_operators(const std::vector<profiler::KinetoEvent>& events) {
  std::map<uint64_t, std::vector<const profiler::KinetoEvent*>> by_thread;
  for (const auto& e : events)
    if (is_activity(e, KinetoActivity::CPU_OP)) by_thread[e.startThreadId()].push_back(&e);
  Operators out;
  for (auto& [thread, ops] : by_thread) {
    // Callers before the operators they call: earlier start first, and the longer of two that start together.
    std::sort(ops.begin(), ops.end(), [](auto* a, auto* b) {
      return a->startNs() != b->startNs() ? a->startNs() < b->startNs() : a->endNs() > b->endNs();
    });
    std::vector<std::pair<const profiler::KinetoEvent*, size_t>> open;  // enclosing operators, their spans
    for (auto* op : ops) {
      while (!open.empty() && open.back().first->endNs() <= op->startNs()) open.pop_back();
      const double ms = op->durationNs() / 1e6;
      if (!open.empty()) out.self_times[open.back().second].ms -= ms;
      out.launcher[op->correlationId()] = open.empty() ? op->name() : open.back().first->name() + " > " + op->name();
      open.emplace_back(op, out.self_times.size());
      out.self_times.push_back({op->name(), ms});
    }
  }
  return out;
}

// The device's kernels, copies and fills, each under its own name or under the operator that launched it.
std::vector<Span> device_spans(const std::vector<profiler::KinetoEvent>& events, const Operators* by_launcher) {
  std::vector<Span> spans;
  for (const auto& e : events) {
    if (!is_device_work(e)) continue;
    std::string label = e.name();
    if (by_launcher) {
      auto found = by_launcher->launcher.find(e.linkedCorrelationId());
      label = found == by_launcher->launcher.end() ? "(no operator)" : found->second;
    }
    spans.push_back({std::move(label), e.durationNs() / 1e6});
  }
  return spans;
}

std::vector<ProfiledOp> sum_by_label(const std::vector<Span>& spans) {
  std::unordered_map<std::string, ProfiledOp> by_label;
  for (const auto& s : spans) {
    auto& op = by_label[s.label];
    op.name = s.label;
    op.calls += 1;
    op.total_ms += s.ms;
  }
  std::vector<ProfiledOp> ops;
  for (auto& [label, op] : by_label) ops.push_back(std::move(op));
  std::sort(ops.begin(), ops.end(), [](const auto& a, const auto& b) { return a.total_ms > b.total_ms; });
  return ops;
}

std::string csv_field(const std::string& s) {
  std::string quoted = "\"";
  for (char c : s) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

}  // namespace

StepProfiler::StepProfiler(torch::Device device) : device_(device) {
  // Without a GPU, Kineto logs its failed device query as an error; quiet it unless the user set a level.
  if (!device.is_cuda()) setenv("KINETO_LOG_LEVEL", "5", /*overwrite=*/0);
  const profiler::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
  std::set<ActivityType> activities{ActivityType::CPU};
  if (device.is_cuda()) activities.insert(ActivityType::CUDA);
  profiler::prepareProfiler(config, activities);
  wait_for(device_);  // the window starts with no earlier step still running on the device
  profiler::enableProfiler(config, activities);
  recording_ = true;
  started_ = std::chrono::steady_clock::now();
}

StepProfiler::~StepProfiler() {
  if (recording_) profiler::disableProfiler();
}

StepProfile StepProfiler::finish(int steps, const std::string& trace_path) {
  wait_for(device_);
  StepProfile profile;
  profile.wall_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started_).count();
  auto result = profiler::disableProfiler();
  recording_ = false;
  result->save(trace_path);
  profile.device = device_.is_cuda() ? "cuda" : "cpu";
  profile.steps = steps;
  const auto& events = result->events();
  const auto operators = nest_operators(events);
  if (device_.is_cuda()) {
    profile.ops = sum_by_label(device_spans(events, nullptr));
    profile.by_operator = sum_by_label(device_spans(events, &operators));
  } else {
    profile.ops = sum_by_label(operators.self_times);
  }
  for (const auto& op : profile.ops) profile.busy_ms += op.total_ms;
  return profile;
}

namespace {

void print_table(const StepProfile& p, const std::vector<ProfiledOp>& rows, const char* heading, size_t top,
                 std::FILE* out) {
  std::fprintf(out, "%10s %7s %11s  %s\n", "ms/step", "share", "calls/step", heading);
  for (size_t i = 0; i < std::min(top, rows.size()); ++i) {
    const auto& op = rows[i];
    std::fprintf(out, "%10.3f %6.1f%% %11.1f  %.110s\n", p.per_step(op.total_ms), 100 * op.total_ms / p.busy_ms,
                 double(op.calls) / p.steps, op.name.c_str());
  }
}

}  // namespace

void print_step_profile(const StepProfile& p, std::FILE* out, size_t top) {
  int64_t calls = 0;
  for (const auto& op : p.ops) calls += op.calls;
  const bool cuda = p.device == "cuda";
  std::fprintf(out, "profile of %d steps on %s: %.2f ms per step; %s %.2f ms (%.1f%%); %.0f %s per step\n", p.steps,
               p.device.c_str(), p.per_step(p.wall_ms), cuda ? "GPU busy" : "in operators", p.per_step(p.busy_ms),
               100 * p.busy_ms / p.wall_ms, double(calls) / p.steps, cuda ? "kernels" : "operator calls");
  print_table(p, p.ops, cuda ? "kernel" : "operator (self time)", top, out);
  if (p.by_operator.empty()) return;
  std::fprintf(out, "GPU time by the operator that launched it:\n");
  print_table(p, p.by_operator, "caller > operator", top, out);
}

namespace {

// The operator of a "caller > operator" label (by_operator's rows), or the label itself (ops' rows).
std::string_view operator_of(std::string_view label) {
  const auto split = label.rfind(" > ");
  return split == std::string_view::npos ? label : label.substr(split + 3);
}

bool is_matmul(std::string_view op) {
  static const std::set<std::string_view> matmuls = {"aten::mm",  "aten::addmm",  "aten::bmm",    "aten::baddbmm",
                                                     "aten::_grouped_mm", "aten::mv", "aten::addmv", "aten::matmul",
                                                     "aten::linear"};
  return matmuls.count(op) > 0;
}

bool is_optimizer(std::string_view op) { return op.starts_with("aten::_fused_adam") || op.starts_with("aten::_foreach_"); }

}  // namespace

TimeByKind time_by_kind(const StepProfile& p) {
  TimeByKind t;
  for (const auto& row : p.by_operator.empty() ? p.ops : p.by_operator) {
    const auto op = operator_of(row.name);
    double& kind = is_matmul(op)                                 ? t.matmul_ms
                   : op.find("attention") != std::string::npos ? t.attention_ms
                   : is_optimizer(op)                            ? t.optimizer_ms
                                                                 : t.other_ms;
    kind += p.per_step(row.total_ms);
  }
  return t;
}

void print_time_by_kind(const StepProfile& p, double flops_per_step, std::FILE* out) {
  const auto t = time_by_kind(p);
  const double busy = p.per_step(p.busy_ms);
  std::fprintf(out, "by kind, ms per step: matmuls %.3f (%.1f%%), attention %.3f (%.1f%%), optimizer %.3f (%.1f%%), "
               "other %.3f (%.1f%%)\n", t.matmul_ms, 100 * t.matmul_ms / busy, t.attention_ms,
               100 * t.attention_ms / busy, t.optimizer_ms, 100 * t.optimizer_ms / busy, t.other_ms,
               100 * t.other_ms / busy);
  constexpr double kHopperDenseBf16 = 989e12;  // FLOP/s
  auto rate = [&](const char* what, double ms) {
    const double flops_per_s = flops_per_step / (ms / 1e3);
    std::fprintf(out, "  %s: %.4g TFLOP/s", what, flops_per_s / 1e12);
    if (p.device == "cuda") std::fprintf(out, ", %.1f%% of 989 TFLOP/s (H100/H200 dense bf16)", 100 * flops_per_s / kHopperDenseBf16);
    std::fprintf(out, "\n");
  };
  std::fprintf(out, "model FLOPs per step %.4g TFLOP:\n", flops_per_step / 1e12);
  rate("over the busy time", busy);
  rate("were matmuls and attention all that took time", t.matmul_ms + t.attention_ms);
}

void write_step_profile_csv(const StepProfile& p, const std::vector<ProfiledOp>& rows, const std::string& path) {
  std::ofstream out(path);
  if (!out) throw std::runtime_error("cannot write " + path);
  out << "name,calls_per_step,ms_per_step,share_of_busy\n";
  for (const auto& op : rows)
    out << csv_field(op.name) << ',' << double(op.calls) / p.steps << ',' << p.per_step(op.total_ms) << ','
        << op.total_ms / p.busy_ms << '\n';
}

}  // namespace moelab
