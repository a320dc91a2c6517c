#!/usr/bin/env bash
# The README's demo end to end (scripts/demo.sh, without set-up, in a scratch directory): every job of
# sweeps/demo.json trains and is scored by lm-eval, and the report has a row per router in its
# tables, the paper-format CSVs, and plots that decode as images of a sensible size.
# usage: test_demo.sh SOURCE_DIR
set -euo pipefail
src=$1
tmp=$(mktemp -d /tmp/moelab-demo-XXXXXX)
fail() { echo "FAIL: $*"; exit 1; }
trap 'rm -rf "$tmp"' EXIT

MOELAB_DEMO_DIR=$tmp bash "$src/scripts/demo.sh" --no-setup || fail "the demo exited with $?"
report=$tmp/demo-runs/report
for file in report.md routers.csv seeds.csv downstream.csv routing.csv missing.csv \
            plots/val_loss_curves.png plots/val_loss_curves.svg; do
  [[ -s $report/$file ]] || fail "$file is missing or empty"
done
"$src/.venv/bin/python" - "$report" <<'PY'
import csv, sys, xml.etree.ElementTree as ET
from pathlib import Path
from PIL import Image

report = Path(sys.argv[1])
routers = ["dense", "softmax", "sigmoid", "tanh", "kern"]
def rows(name):
    with open(report / name, newline="") as f:
        return list(csv.DictReader(f))
def check(ok, message):
    if not ok:
        sys.exit("FAIL: " + message)

table = rows("routers.csv")
check([r["router"] for r in table] == routers, f"routers.csv rows {[r['router'] for r in table]}")
for r in table:
    check(r["seeds"] == "2" and r["200"] != "" and 0 < float(r["200"]) < 11, f"routers.csv {r}")
seeds = rows("seeds.csv")
check({r["router"] for r in seeds} == set(routers), "seeds.csv lacks a router")
check(all(r["variance"] != "" for r in seeds if r["step"] == "200"), "seeds.csv: no variance over two seeds")
down = rows("downstream.csv")
check([r["router"] for r in down] == routers, "downstream.csv rows")
check(all(r["avg"] != "" and 0 <= float(r["avg"]) <= 100 for r in down), f"downstream.csv averages {down}")
check([r["router"] for r in rows("routing.csv")] == routers[1:], "routing.csv: one row per MoE router")
check(rows("missing.csv") == [], "missing.csv lists jobs although all finished")
with Image.open(report / "plots/val_loss_curves.png") as png:
    check(png.format == "PNG" and png.width >= 600 and png.height >= 400, f"png {png.format} {png.size}")
svg = ET.parse(report / "plots/val_loss_curves.svg").getroot()
check(svg.tag.endswith("svg") and float(svg.get("width").rstrip("pt")) >= 300, "svg root or width")
print("demo report ok:", ", ".join(sorted(p.name for p in report.rglob("*") if p.is_file())))
PY
