#!/usr/bin/env bash
# Sets up (idempotent), builds everything and runs the whole test suite with CTest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cmake --build "$ROOT/build" -j "$(nproc)"
cd "$ROOT/build"
ctest --output-on-failure -j "$(nproc)" "$@"
