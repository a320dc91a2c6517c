// Option parsing shared by the subcommands (Boost.Program_options) with a --help every command has,
// and the table of commands (runner/cli.cpp) that `moelab` and its groups (data, sweep, db) dispatch on.
#pragma once

#include <boost/program_options.hpp>
#include <algorithm>
#include <cstdio>
#include <functional>
#include <iostream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace moelab {

// One command: `moelab <name> ...` runs `run` with the arguments after the name. A group (`moelab
// sweep`) has no `run` but subcommands: `moelab <group> <name> ...` runs the subcommand's.
struct Command;
using Commands = std::vector<Command>;
struct Command {
  std::string name, summary;
  std::function<int(const std::vector<std::string>&)> run;
  Commands subcommands;
};

// "usage: moelab sweep <command> [options]" and a line per command; `group` "" is moelab itself.
inline void print_commands(const std::string& group, const Commands& commands, std::ostream& out) {
  const std::string prefix = "moelab " + (group.empty() ? "" : group + " ");
  out << "usage: " << prefix << "<command> [options]\n\ncommands:\n";
  char line[512];
  for (auto& c : commands) {
    std::snprintf(line, sizeof line, "  %-8s %s\n", c.name.c_str(), c.summary.c_str());
    out << line;
  }
  out << "\n`" << prefix << "<command> --help` shows a command's options.\n";
}

// Runs the command args[0] names; --help, -h or help lists the commands (exit 0). A missing or
// unknown command is an error that names the commands there are.
inline int dispatch(const std::string& group, const Commands& commands, const std::vector<std::string>& args) {
  if (!args.empty() && (args[0] == "--help" || args[0] == "-h" || args[0] == "help")) {
    print_commands(group, commands, std::cout);
    return 0;
  }
  std::string names;
  for (auto& c : commands) names += (names.empty() ? "" : ", ") + c.name;
  const std::string what = group.empty() ? "command" : group + " command";
  if (args.empty())
    throw std::runtime_error("moelab" + (group.empty() ? "" : " " + group) + ": expected a command (" + names + "; see --help)");
  for (auto& c : commands) {
    if (c.name != args[0]) continue;
    const std::vector<std::string> rest(args.begin() + 1, args.end());
    return c.subcommands.empty() ? c.run(rest) : dispatch(c.name, c.subcommands, rest);
  }
  throw std::runtime_error("unknown " + what + " \"" + args[0] + "\" (expected one of: " + names + ")");
}

// An option's notifier refusing values outside [least, most] (or (least, most) when `open`), naming
// the option: "--jobs -1: expected a value >= 0". NaN is outside every range.
template <typename T>
std::function<void(const T&)> in_range(const std::string& option, T least, T most = std::numeric_limits<T>::max(),
                                       bool open = false) {
  return [=](const T& v) {
    const bool inside = open ? v > least && v < most : v >= least && v <= most;
    if (inside) return;
    std::ostringstream message;
    message << option << " " << v << ": expected a value ";
    if (most == std::numeric_limits<T>::max())
      message << (open ? "> " : ">= ") << least;
    else
      message << "in " << (open ? "(" : "[") << least << ", " << most << (open ? ")" : "]");
    throw boost::program_options::error(message.str());
  };
}

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
