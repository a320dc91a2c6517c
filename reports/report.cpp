#include "reports/report.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>

#include "db/store.hpp"
#include "reports/paper_reference.hpp"
#include "reports/sweep_results.hpp"

namespace moelab {
namespace fs = std::filesystem;

namespace {

void write_file(const fs::path& path, const std::string& text, std::vector<std::string>& written) {
  std::ofstream out(path);
  out << text;
  if (!out.flush()) throw std::runtime_error(path.string() + ": cannot write");
  written.push_back(path.string());
}

bool wants(const ReportOptions& o, const std::string& format) {
  return std::find(o.formats.begin(), o.formats.end(), format) != o.formats.end();
}

void check_formats(const std::vector<std::string>& formats) {
  static const std::set<std::string> known = {"md", "csv", "png", "svg"};
  for (auto& format : formats)
    if (!known.count(format)) throw std::invalid_argument("--format: unknown format \"" + format + "\" (expected md, csv, png, svg)");
}

// Runs reports/plot.py over plots.json; it prints one written path per line.
std::vector<std::string> draw_plots(const ReportOptions& o, const fs::path& plots_json, const fs::path& plot_dir) {
  const std::string python = o.python.empty() ? std::string(MOELAB_SOURCE_DIR) + "/.venv/bin/python" : o.python;
  const std::string script = std::string(MOELAB_SOURCE_DIR) + "/reports/plot.py";
  if (!fs::exists(python)) throw std::runtime_error(python + ": no Python with matplotlib for the plots; run scripts/setup.sh");
  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) throw std::runtime_error("report: cannot create a pipe for the plotter");
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(pipe_fds[1], STDOUT_FILENO);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    execl(python.c_str(), python.c_str(), script.c_str(), plots_json.c_str(), plot_dir.c_str(), nullptr);
    _exit(127);
  }
  close(pipe_fds[1]);
  std::string output;
  char buffer[4096];
  for (ssize_t n; (n = read(pipe_fds[0], buffer, sizeof buffer)) > 0;) output.append(buffer, size_t(n));
  close(pipe_fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw std::runtime_error("report: " + script + " failed (exit " + std::to_string(WEXITSTATUS(status)) +
                             "); its message is above. The tables were written.");
  std::vector<std::string> files;
  for (size_t start = 0, end; start < output.size(); start = end + 1) {
    end = output.find('\n', start);
    if (end == std::string::npos) end = output.size();
    if (end > start) files.push_back(output.substr(start, end - start));
  }
  return files;
}

std::string summary_line(const SweepResults& r) {
  std::map<std::string, int> by_status;
  for (auto& job : r.jobs) ++by_status[to_string(job.status)];  // in the order of their names
  std::string line = std::to_string(r.jobs.size()) + " jobs:";
  for (auto& [status, count] : by_status) line += " " + std::to_string(count) + " " + status + ",";
  line.pop_back();
  return line;
}

}  // namespace

std::vector<std::string> write_report(const ReportOptions& o) {
  check_formats(o.formats);
  if (!fs::exists(o.db_path)) throw std::runtime_error(o.db_path + ": no such store (--db)");
  const Store store(o.db_path);
  const SweepResults results = load_sweep_results(store, o.sweep);
  std::optional<PaperReference> paper;
  if (o.paper) paper.emplace();

  const fs::path out = o.out_dir.empty() ? fs::path(o.db_path).parent_path() / "reports" / o.sweep : fs::path(o.out_dir);
  fs::create_directories(out);
  std::string markdown = "# Report: sweep " + o.sweep + "\n\nStore: " + o.db_path + ". " + summary_line(results) + ".\n\n";
  std::vector<std::string> written;
  nlohmann::json plots{{"formats", nlohmann::json::array()}, {"figures", nlohmann::json::array()}};
  for (auto format : {"png", "svg"})
    if (wants(o, format)) plots["formats"].push_back(format);

  std::vector<Table> tables;
  for (auto study : o.studies.empty() ? all_studies() : o.studies) {
    std::string why;
    if (!study_applies(study, results, why) && o.studies.empty()) {
      markdown += "_Study " + study_name(study) + " skipped: " + why + "._\n\n";
      continue;
    }
    auto output = build_study(study, results, paper ? &*paper : nullptr);
    for (auto& table : output.tables) tables.push_back(std::move(table));
    for (auto& figure : output.figures) {
      plots["figures"].push_back(figure);
      if (!plots["formats"].empty())
        tables.back().after.push_back("![" + figure["title"].get<std::string>() + "](plots/" +
                                      figure["name"].get<std::string>() + "." + plots["formats"][0].get<std::string>() + ")");
    }
  }
  tables.push_back(missing_jobs_table(results));
  for (auto& table : tables) {
    markdown += to_markdown(table);
    if (wants(o, "csv")) write_file(out / (table.name + ".csv"), to_csv(table), written);
  }
  if (wants(o, "md")) write_file(out / "report.md", markdown, written);
  if (!plots["formats"].empty() && !plots["figures"].empty()) {
    fs::create_directories(out / "plots");
    write_file(out / "plots" / "plots.json", plots.dump(1), written);
    for (auto& file : draw_plots(o, out / "plots" / "plots.json", out / "plots")) written.push_back(file);
  }
  return written;
}

}  // namespace moelab
