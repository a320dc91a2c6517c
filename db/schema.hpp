// Versioned migrations of the SQLite store (db/schema.cpp holds the SQL).
#pragma once

#include <string>
#include <vector>

namespace moelab {

struct Migration {
  int version;
  std::string sql;
};

const std::vector<Migration>& migrations();

}  // namespace moelab
