#!/usr/bin/env bash
# The demo: set up, tokenize the embedded Austen corpus with GPT-2 BPE, train a tiny KERN and a tiny
# softmax MoE on the CPU, and print their validation losses and where the SQLite store is.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cmake --build "$ROOT/build" -j "$(nproc)" --target moelab
cd "$ROOT"
OUT=demo-runs
MOELAB=build/moelab
[[ -f $OUT/data/meta.json ]] || $MOELAB data prepare --corpus austen --tokenizer gpt2 --out $OUT/data
for router in kern softmax; do
  $MOELAB train --config sweeps/jobs/demo-tiny.json --set model.router=$router --set name=demo-$router \
    --db $OUT/moelab.db --run-dir $OUT/$router --resume
done
echo
echo "validation loss (final step) per router:"
sqlite3 -column -header $OUT/moelab.db \
  "SELECT name AS job, step, printf('%.4f', loss) AS val_loss FROM latest_val_loss ORDER BY name"
echo
echo "store: $ROOT/$OUT/moelab.db   (try: sqlite3 $OUT/moelab.db 'SELECT * FROM job_progress')"
