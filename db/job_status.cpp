#include "db/job_status.hpp"

#include <array>
#include <optional>
#include <stdexcept>
#include <utility>

namespace moelab {
namespace {

constexpr std::array<std::pair<JobStatus, std::string_view>, 6> kStatusNames = {{
    {JobStatus::queued, "queued"},
    {JobStatus::running, "running"},
    {JobStatus::done, "done"},
    {JobStatus::failed, "failed"},
    {JobStatus::interrupted, "interrupted"},
    {JobStatus::cancelled, "cancelled"},
}};

}  // namespace

std::string to_string(JobStatus status) {
  for (auto& [value, name] : kStatusNames)
    if (value == status) return std::string(name);
  throw std::invalid_argument("job status " + std::to_string(int(status)) + " has no name");
}

JobStatus parse_job_status(std::string_view text) {
  std::string known;
  for (auto& [value, name] : kStatusNames) {
    if (name == text) return value;
    known += (known.empty() ? "" : ", ") + std::string(name);
  }
  throw std::invalid_argument("unknown job status '" + std::string(text) + "' (expected one of: " + known + ")");
}

bool is_terminal(JobStatus status) { return !is_queued_or_running(status); }

bool is_queued_or_running(JobStatus status) { return status == JobStatus::queued || status == JobStatus::running; }

std::string status_summary(const std::vector<StatusCount>& counts) {
  std::string line;
  for (auto& c : counts) line += (line.empty() ? "" : ", ") + std::to_string(c.jobs) + " " + to_string(c.status);
  return line;
}

namespace {

constexpr std::string_view kEvalRunning = "running", kEvalDone = "done", kEvalFailed = "failed";

// "done: 6 tasks" -> "6 tasks" when text is `word` or starts with "<word>: ".
std::optional<std::string> after(std::string_view text, std::string_view word) {
  if (text == word) return std::string();
  if (text.starts_with(word) && text.substr(word.size()).starts_with(": ")) return std::string(text.substr(word.size() + 2));
  return std::nullopt;
}

}  // namespace

EvalStatus EvalStatus::parse(std::string_view text) {
  if (text.empty()) return {};
  if (text == kEvalRunning) return {Stage::running, ""};
  if (auto detail = after(text, kEvalDone)) return {Stage::done, *detail};
  if (auto detail = after(text, kEvalFailed)) return {Stage::failed, *detail};
  throw std::invalid_argument("unknown evaluation status '" + std::string(text) +
                              "' (expected '', 'running', 'done: ...' or 'failed: ...')");
}

std::string EvalStatus::text() const {
  auto with_detail = [&](std::string_view word) { return std::string(word) + (detail.empty() ? "" : ": " + detail); };
  switch (stage) {
    case Stage::none: return "";
    case Stage::running: return std::string(kEvalRunning);
    case Stage::done: return with_detail(kEvalDone);
    case Stage::failed: return with_detail(kEvalFailed);
  }
  return "";
}

}  // namespace moelab
