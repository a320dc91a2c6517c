#include "reports/table.hpp"

#include <cstdio>
#include <cstdlib>
#include <stdexcept>

namespace moelab {

void Table::add_row(std::vector<Cell> row) {
  if (row.size() != columns.size())
    throw std::logic_error("table " + name + ": row of " + std::to_string(row.size()) + " cells for " +
                           std::to_string(columns.size()) + " columns");
  rows.push_back(std::move(row));
}

namespace {

std::string format_number(double v, int decimals) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", decimals, v);
  return buffer;
}

// Shortest text that reads back as the same double, so CSV consumers lose nothing.
std::string exact_number(double v) {
  char buffer[64];
  for (int precision = 6; precision <= 17; ++precision) {
    std::snprintf(buffer, sizeof buffer, "%.*g", precision, v);
    if (std::strtod(buffer, nullptr) == v) break;
  }
  return buffer;
}

std::string markdown_cell(const Cell& cell, const Column& column) {
  if (cell.number) return format_number(*cell.number, column.decimals);
  if (cell.text.empty()) return "-";
  std::string escaped;
  for (char c : cell.text) escaped += c == '|' ? std::string("\\|") : std::string(1, c);
  return escaped;
}

std::string csv_field(const std::string& text) {
  if (text.find_first_of(",\"\n") == std::string::npos) return text;
  std::string quoted = "\"";
  for (char c : text) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

}  // namespace

std::string to_markdown(const Table& table) {
  std::string out = "### " + table.title + "\n\n";
  for (auto& note : table.notes) out += note + "\n\n";
  std::string header = "|", rule = "|";
  for (auto& column : table.columns) {
    header += " " + column.name + " |";
    rule += column.decimals >= 0 ? " ---: |" : " --- |";
  }
  out += header + "\n" + rule + "\n";
  for (auto& row : table.rows) {
    out += "|";
    for (size_t i = 0; i < row.size(); ++i) out += " " + markdown_cell(row[i], table.columns[i]) + " |";
    out += "\n";
  }
  if (table.rows.empty()) out += "\n" + table.when_empty + "\n";
  for (auto& line : table.after) out += "\n" + line + "\n";
  return out + "\n";
}

std::string to_csv(const Table& table) {
  std::string out;
  for (size_t i = 0; i < table.columns.size(); ++i) out += (i ? "," : "") + csv_field(table.columns[i].name);
  out += "\n";
  for (auto& row : table.rows) {
    for (size_t i = 0; i < row.size(); ++i)
      out += (i ? "," : "") + (row[i].number ? exact_number(*row[i].number) : csv_field(row[i].text));
    out += "\n";
  }
  return out;
}

}  // namespace moelab
