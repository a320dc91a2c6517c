#include "engine/train/heap.hpp"
#include "runner/cli.hpp"

int main(int argc, char** argv) {
  return moelab::run_cli(std::vector<std::string>(argv + 1, argv + argc));
}
