#!/usr/bin/env bash
# The Slurm executor on a real one-node Slurm cluster started here (scripts/slurm_local.sh):
# submit a 3-job sweep as an array, requeue one job halfway with `scontrol requeue`, and check that
# it resumed from its checkpoint and that the main store ends with every step of every job once.
# usage: test_slurm.sh MOELAB_BINARY SOURCE_DIR
set -euo pipefail
moelab=$1
src=$2
steps=600
tmp=$(mktemp -d /tmp/moelab-slurm-XXXXXX)
fail() { echo "FAIL: $*"; exit 1; }
cleanup() { bash "$src/scripts/slurm_local.sh" stop "$tmp/cluster" || true; rm -rf "$tmp"; }
trap cleanup EXIT

bash "$src/scripts/slurm_local.sh" start "$tmp/cluster" || fail "no Slurm cluster could be started here (reason above)"
export SLURM_CONF=$tmp/cluster/slurm.conf

head -c 200000 "$src/.assets/corpus/austen.txt" > "$tmp/slice.txt" || fail "corpus missing: run scripts/setup.sh"
"$moelab" data prepare --corpus "$tmp/slice.txt" --tokenizer bytes --out "$tmp/data" > /dev/null
cat > "$tmp/spec.json" <<SPEC
{"name": "slurm-test", "max_attempts": 3,
 "base": {"model": {"vocab_size": 256, "seq_len": 32, "layers": 2, "d_model": 32, "heads": 4, "router": "kern",
                    "experts": 4, "top_k": 2, "expert_size": 32},
          "train": {"steps": $steps, "batch_size": 8, "micro_batch": 4, "lr": 0.003, "warmup": 2, "min_lr": 0.0003,
                    "log_every": 1, "eval_every": 200, "eval_batches": 2, "checkpoint_every": 20, "device": "cpu"},
          "data": {"train": "$tmp/data/train.bin", "val": "$tmp/data/val.bin", "tokenizer": "bytes"}},
 "axes": {"seed": [0, 1, 2]},
 "slurm": {"cpus": 1, "max_parallel": 2, "time": "00:10:00"}}
SPEC
db=$tmp/moelab.db
query() { "$moelab" db query "$1" --db "$db" | tail -n +2 | tr -d ' '; }

"$moelab" sweep run "$tmp/spec.json" --executor slurm --no-wait --db "$db" --workdir "$tmp/runs"
task=$(query "SELECT executor_id FROM jobs WHERE executor_id LIKE '%\_0' ESCAPE '\\'")
job=$(query "SELECT id FROM jobs WHERE executor_id = '$task'")
[[ -n $task && -n $job ]] || fail "no array task recorded for the first job"
echo "requeueing Slurm task $task (job $job) once it is past step 100"
for _ in $(seq 600); do
  n=$(sqlite3 "$tmp/runs/$job/job.db" "SELECT count(*) FROM metrics WHERE split = 'train'" 2>/dev/null || echo 0)
  (( n >= 100 )) && break
  sleep 0.1
done
(( n >= 100 && n < steps )) || fail "job $job was at step $n, not caught running halfway"
scontrol requeue "$task" || fail "scontrol requeue $task failed"
for _ in $(seq 100); do
  state=$(squeue -h -r -t all -o %T -j "$task" 2>/dev/null || true)
  [[ $state == PENDING ]] && break
  sleep 0.2
done
[[ $state == PENDING ]] || fail "task $task is $state after requeue, not PENDING"
scontrol update jobid="$task" StartTime=now || fail "could not release $task"

for _ in $(seq 300); do
  "$moelab" sweep status slurm-test --db "$db" | head -1 | grep -q "slurm-test: 3 done" && break
  sleep 1
done
"$moelab" sweep status slurm-test --db "$db"
[[ $(query "SELECT count(*) FROM jobs WHERE status = 'done'") == 3 ]] || fail "not all jobs are done"
[[ $(query "SELECT attempts FROM jobs WHERE id = '$job'") == 2 ]] || fail "the requeued job should have run twice"
resumed=$(query "SELECT count(*) FROM events WHERE job_id = '$job' AND message LIKE 'resumed from step %'")
[[ $resumed == 1 ]] || fail "the requeued job did not resume from a checkpoint ($resumed resume events)"
[[ $(query "SELECT count(*) FROM metrics WHERE split = 'train'") == $((3 * steps)) ]] || fail "train rows are not 3 x $steps"
[[ $(query "SELECT count(*) FROM (SELECT DISTINCT job_id, step, split FROM metrics)") == $(query "SELECT count(*) FROM metrics") ]] ||
  fail "duplicate metric rows"
echo "Slurm sweep with a requeued job: all checks passed"
