#!/usr/bin/env bash
# The demo: set up, tokenize the embedded Austen corpus with GPT-2 BPE, run the demo sweep
# (sweeps/demo.json: dense, softmax, sigmoid, tanh and KERN, two seeds each, tiny models on the CPU,
# each scored by lm-eval on a few documents of the six tasks), then write its report.
#
#   bash scripts/demo.sh               # everything, in demo-runs/ of the repository
#   MOELAB_DEMO_DIR=/tmp/d bash scripts/demo.sh --no-setup   # elsewhere, set-up and build already done
# Running it again skips finished jobs and resumes interrupted ones.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ ${1:-} != --no-setup ]]; then
  bash "$ROOT/scripts/setup.sh"
  cmake --build "$ROOT/build" -j "$(nproc)" --target moelab
fi
cd "${MOELAB_DEMO_DIR:-$ROOT}"
MOELAB=$ROOT/build/moelab
DB=demo-runs/moelab.db
[[ -f demo-runs/data/meta.json ]] || $MOELAB data prepare --corpus austen --tokenizer gpt2 --out demo-runs/data
$MOELAB sweep run "$ROOT/sweeps/demo.json" --db $DB --workdir demo-runs/demo
$MOELAB report demo --db $DB --paper --out demo-runs/report
echo
awk '/^### Validation loss by step/ {shown = 1} shown && /^$/ && table {exit} shown {print; if (/^\|/) table = 1}' \
  demo-runs/report/report.md
echo
echo "report: $PWD/demo-runs/report/report.md (tables, CSV and plots in demo-runs/report/)"
echo "store:  $PWD/$DB   (try: $MOELAB db query 'SELECT * FROM latest_val_loss' --db $DB)"
