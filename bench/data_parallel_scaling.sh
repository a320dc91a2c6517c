#!/usr/bin/env bash
# Data-parallel scaling on one machine: tokens/s of one process against N processes (Gloo on the
# CPU, NCCL with N GPUs), same config and global batch, each as `moelab train` records it in its
# store (median of the logging intervals after the first). Run bench/side_by_side.py once first: it
# writes the config and GPT-2 data this script uses by default.
#   bash bench/data_parallel_scaling.sh [N] [CONFIG]     (MOELAB_BIN picks the binary; default build/moelab)
# train.batch_size must split into N x micro-batches: MICRO_BATCH (default 8) sets train.micro_batch
# for both runs (the demo's 16 sequences per step: 2 micro-batches, one per process with N = 2).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N=${1:-2}
CONFIG=${2:-$ROOT/runs/side-by-side/config.json}
MOELAB=${MOELAB_BIN:-$ROOT/build/moelab}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
[[ -f $CONFIG ]] || { echo "no config $CONFIG: run bench/side_by_side.py first or name one" >&2; exit 2; }
CORES=$(nproc)
COMMON=(--set train.steps=60 --set train.log_every=10 --set train.eval_every=60 --set train.checkpoint_every=60
        --set train.eval_batches=2 --set train.micro_batch=${MICRO_BATCH:-8})

median_tokens_per_s() {
  "$MOELAB" db query "SELECT tokens_per_s FROM metrics WHERE split = 'train' AND step > 10" --db "$1" | tail -n +2 | sort -n |
    awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'
}

# One process with all cores.
"$MOELAB" train --quiet --config "$CONFIG" "${COMMON[@]}" --set train.threads="$CORES" --db "$WORK/one.db" --run-dir "$WORK/one"
# N processes sharing the cores (on a GPU machine each takes its own GPU by local rank).
export MOELAB_WORLD_SIZE=$N MASTER_ADDR=127.0.0.1 MASTER_PORT=${MASTER_PORT:-29577}
pids=()
for ((rank = 0; rank < N; ++rank)); do
  MOELAB_RANK=$rank "$MOELAB" train --quiet --config "$CONFIG" "${COMMON[@]}" \
    --set train.threads=$(( CORES / N > 0 ? CORES / N : 1 )) --db "$WORK/many.db" --run-dir "$WORK/many" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
echo "1 process: $(median_tokens_per_s "$WORK/one.db") tokens/s; $N processes: $(median_tokens_per_s "$WORK/many.db") tokens/s"
