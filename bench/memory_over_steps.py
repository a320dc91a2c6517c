#!/usr/bin/env python3
"""Resident memory of `moelab train` over a long run, for one or more builds side by side.

    .venv/bin/python bench/memory_over_steps.py [--steps 240] [--config FILE] [--set PATH=VALUE ...]
                                                [--before-bin PATH] [--out DIR]

Each side trains the same job (default: sweeps/jobs/demo-tiny.json on GPT-2 tokens of the Austen
corpus, prepared into runs/memory/data on first use) for --steps steps and reads its resident set
(VmRSS in /proc) whenever its progress line reports a step; the sides run one after the other.
Printed per side: resident memory a third of the way in, at the end, their ratio, the peak
(VmHWM), and the median tokens/s of the logging intervals. Written to --out: memory.csv (side,
step, resident MiB, tokens/s) and memory.png (resident MiB against step, one line per side).
--before-bin adds the side "before": `moelab` built from an earlier commit.
"""
import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MOELAB = Path(os.environ.get("MOELAB_BIN", ROOT / "build" / "moelab"))
PROGRESS = re.compile(r"step (\d+)/\d+ \| loss [\d.]+ \| (\d+) tok/s")


def prepared_data(work):
    data = work / "data"
    if not (data / "meta.json").exists():
        subprocess.run([str(MOELAB), "data", "prepare", "--corpus", "austen", "--tokenizer", "gpt2", "--out", str(data)],
                       check=True)
    return data


def kib_field(pid, field):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def run_side(name, binary, config, data, steps, work, extra):
    """Trains once; returns [(step, resident MiB, tokens/s)] and the peak resident MiB."""
    db, run_dir = work / f"{name}.db", work / name
    for stale in (db, run_dir):
        subprocess.run(["rm", "-rf", str(stale)], check=True)
    overrides = {"train.steps": steps, "train.log_every": 10, "train.eval_every": steps, "train.checkpoint_every": steps,
                 "train.eval_batches": 2, "data.train": str(data / "train.bin"), "data.val": str(data / "val.bin")}
    command = [str(binary), "train", "--config", str(config), "--db", str(db), "--run-dir", str(run_dir)]
    for assignment in [f"{key}={value}" for key, value in overrides.items()] + extra:
        command += ["--set", assignment]
    samples, peak = [], 0.0
    with subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True) as process:
        for line in process.stderr:
            match = PROGRESS.search(line)
            if not match:
                continue
            resident = kib_field(process.pid, "VmRSS") / 1024
            peak = kib_field(process.pid, "VmHWM") / 1024
            samples.append((int(match.group(1)), resident, float(match.group(2))))
            print(f"  {name}: step {match.group(1)}, {resident:.0f} MiB, {match.group(2)} tok/s", file=sys.stderr)
    if process.returncode != 0:
        sys.exit(f"{name}: moelab train exited {process.returncode}")
    return samples, peak


def at_step(samples, step):
    return min(samples, key=lambda s: abs(s[0] - step))[1]


def plot(results, steps, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (samples, _) in results.items():
        ax.plot([s[0] for s in samples], [s[1] for s in samples], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_xlim(0, steps)
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--config", type=Path, default=ROOT / "sweeps" / "jobs" / "demo-tiny.json")
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="a config override, as for train")
    parser.add_argument("--before-bin", type=Path, help="moelab built from an earlier commit: the side 'before'")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "memory")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = prepared_data(args.out)
    sides = {"engine": MOELAB}
    if args.before_bin:
        sides["before"] = args.before_bin
    results = {name: run_side(name, binary, args.config, data, args.steps, args.out, args.set) for name, binary in sides.items()}

    with open(args.out / "memory.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["side", "step", "resident_mib", "tokens_per_s"])
        for name, (samples, _) in results.items():
            writer.writerows((name, step, f"{resident:.1f}", f"{rate:.0f}") for step, resident, rate in samples)
    plot(results, args.steps, args.out / "memory.png")
    print(f"{'side':8} {'MiB at ' + str(args.steps // 3):>12} {'MiB at end':>11} {'end/third':>10} {'peak MiB':>9} "
          f"{'tok/s (median)':>15}")
    for name, (samples, peak) in results.items():
        third, end = at_step(samples, args.steps // 3), samples[-1][1]
        rate = statistics.median(s[2] for s in samples[1:]) if len(samples) > 1 else samples[0][2]
        print(f"{name:8} {third:12.0f} {end:11.0f} {end / third:10.2f} {peak:9.0f} {rate:15.0f}")
    print(f"wrote {args.out / 'memory.csv'} and {args.out / 'memory.png'}")


if __name__ == "__main__":
    main()
