// Option parsing shared by the subcommands (Boost.Program_options) with a --help every command has.
#pragma once

#include <boost/program_options.hpp>
#include <algorithm>
#include <iostream>
#include <string>
#include <vector>

namespace moelab {

// Parses `args` against `options`; prints usage and returns false when --help was given.
inline bool parse_options(const std::vector<std::string>& args, const std::string& usage,
                          boost::program_options::options_description& options, boost::program_options::variables_map& vm,
                          const boost::program_options::positional_options_description& positional = {}) {
  options.add_options()("help,h", "show this help");
  boost::program_options::store(
      boost::program_options::command_line_parser(args).options(options).positional(positional).run(), vm);
  if (vm.count("help")) {
    std::cout << "usage: moelab " << usage << "\n" << options << "\n";
    return false;
  }
  boost::program_options::notify(vm);
  return true;
}

// "a,b,,c" -> {"a", "b", "c"}: the comma-separated lists options take (--tasks, --study, --format).
inline std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> items;
  for (size_t start = 0, comma; start <= text.size(); start = comma + 1) {
    comma = std::min(text.find(',', start), text.size());
    if (comma > start) items.push_back(text.substr(start, comma - start));
  }
  return items;
}

}  // namespace moelab
