// The paper's studies as tables (and the figures that go with them), built from one sweep's results.
// Each study groups the sweep's jobs by router and by the setting fields that vary (seeds are
// averaged within a group), and, given the paper's reference, adds its figure where a group matches
// one of the paper's configurations.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "reports/paper_reference.hpp"
#include "reports/sweep_results.hpp"
#include "reports/table.hpp"

namespace moelab {

enum class Study { Routers, Seeds, Sparsity, Granularity, Downstream, Routing };

const std::vector<Study>& all_studies();
std::string study_name(Study study);
Study parse_study(const std::string& name);  // throws naming the valid names

struct StudyOutput {
  std::vector<Table> tables;
  std::vector<nlohmann::json> figures;  // entries of plots.json (reports/plot.py)
};

// paper may be null (no --paper). Partial sweeps give dashes, never an error.
StudyOutput build_study(Study study, const SweepResults& results, const PaperReference* paper);

// Whether the study says anything about this sweep (e.g. sparsity needs more than one expert count);
// when not, `why` says so. `--study all` skips those that do not apply.
bool study_applies(Study study, const SweepResults& results, std::string& why);

// Jobs that did not finish or have no final loss, and failed evaluations.
Table missing_jobs_table(const SweepResults& results);

}  // namespace moelab
