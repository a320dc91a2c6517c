// A report table and its two renderings. Cells hold numbers or text; a missing value renders as a
// dash in markdown and as an empty field in CSV (so spreadsheets and pandas read the column as numbers).
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace moelab {

struct Cell {
  std::optional<double> number;
  std::string text;  // used when number is empty; "" with no number means "no data"

  static Cell missing() { return {}; }
  static Cell of(double v) { return {v, ""}; }
  static Cell of(std::optional<double> v) { return {v, ""}; }
  static Cell of(std::string s) { return {std::nullopt, std::move(s)}; }
  bool empty() const { return !number && text.empty(); }
};

struct Column {
  std::string name;
  int decimals = 4;  // markdown precision for numbers; CSV keeps full precision
};

struct Table {
  std::string name;                // file stem of its CSV, e.g. "routers"
  std::string title;               // markdown heading
  std::vector<std::string> notes;  // sentences printed under the heading
  std::vector<std::string> after;  // markdown printed below the table (its plots)
  std::string when_empty = "(no rows: the sweep has no data for this table yet)";
  std::vector<Column> columns;
  std::vector<std::vector<Cell>> rows;

  void add_row(std::vector<Cell> row);  // throws if the width does not match the columns
};

std::string to_markdown(const Table& table);
std::string to_csv(const Table& table);

}  // namespace moelab
