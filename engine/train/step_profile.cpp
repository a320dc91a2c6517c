#include "engine/train/step_profile.hpp"

#include <kineto/ActivityType.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <map>
#include <stdexcept>
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
  const profiler::KinetoEvent* event;
  double self_ms;
};

// An operator's self time is its span minus the spans of the operators it called: aten::linear
// calling aten::addmm counts the matmul once, under addmm. Nesting is per thread.
std::vector<Span> operator_self_times(const std::vector<profiler::KinetoEvent>& events) {
  std::map<uint64_t, std::vector<const profiler::KinetoEvent*>> by_thread;
  for (const auto& e : events)
    if (is_activity(e, KinetoActivity::CPU_OP)) by_thread[e.startThreadId()].push_back(&e);
  std::vector<Span> spans;
  for (auto& [thread, ops] : by_thread) {
    // Parents before their children: earlier start first, and the longer of two that start together.
    std::sort(ops.begin(), ops.end(), [](auto* a, auto* b) {
      return a->startNs() != b->startNs() ? a->startNs() < b->startNs() : a->endNs() > b->endNs();
    });
    std::vector<size_t> open;  // indices into spans of the operators enclosing the current one
    for (auto* op : ops) {
      while (!open.empty() && spans[open.back()].event->endNs() <= op->startNs()) open.pop_back();
      const double ms = op->durationNs() / 1e6;
      if (!open.empty()) spans[open.back()].self_ms -= ms;
      open.push_back(spans.size());
      spans.push_back({op, ms});
    }
  }
  return spans;
}

std::vector<Span> device_times(const std::vector<profiler::KinetoEvent>& events) {
  std::vector<Span> spans;
  for (const auto& e : events)
    if (is_device_work(e)) spans.push_back({&e, e.durationNs() / 1e6});
  return spans;
}

std::vector<ProfiledOp> sum_by_name(const std::vector<Span>& spans) {
  std::unordered_map<std::string, ProfiledOp> by_name;
  for (const auto& s : spans) {
    auto& op = by_name[s.event->name()];
    op.name = s.event->name();
    op.calls += 1;
    op.total_ms += s.self_ms;
  }
  std::vector<ProfiledOp> ops;
  for (auto& [name, op] : by_name) ops.push_back(std::move(op));
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
  profile.ops = sum_by_name(device_.is_cuda() ? device_times(result->events()) : operator_self_times(result->events()));
  for (const auto& op : profile.ops) profile.busy_ms += op.total_ms;
  return profile;
}

void print_step_profile(const StepProfile& p, std::FILE* out, size_t top) {
  int64_t calls = 0;
  for (const auto& op : p.ops) calls += op.calls;
  const bool cuda = p.device == "cuda";
  std::fprintf(out, "profile of %d steps on %s: %.2f ms per step; %s %.2f ms (%.1f%%); %.0f %s per step\n", p.steps,
               p.device.c_str(), p.per_step(p.wall_ms), cuda ? "GPU busy" : "in operators", p.per_step(p.busy_ms),
               100 * p.busy_ms / p.wall_ms, double(calls) / p.steps, cuda ? "kernels" : "operator calls");
  std::fprintf(out, "%10s %7s %11s  %s\n", "ms/step", "share", "calls/step", cuda ? "kernel" : "operator (self time)");
  for (size_t i = 0; i < std::min(top, p.ops.size()); ++i) {
    const auto& op = p.ops[i];
    std::fprintf(out, "%10.3f %6.1f%% %11.1f  %.100s\n", p.per_step(op.total_ms), 100 * op.total_ms / p.busy_ms,
                 double(op.calls) / p.steps, op.name.c_str());
  }
}

void write_step_profile_csv(const StepProfile& p, const std::string& path) {
  std::ofstream out(path);
  if (!out) throw std::runtime_error("cannot write " + path);
  out << "name,calls_per_step,ms_per_step,share_of_busy\n";
  for (const auto& op : p.ops)
    out << csv_field(op.name) << ',' << double(op.calls) / p.steps << ',' << p.per_step(op.total_ms) << ','
        << op.total_ms / p.busy_ms << '\n';
}

}  // namespace moelab
