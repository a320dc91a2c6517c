"""Draws the figures of a moelab report (moelab report writes plots.json, then runs this).

usage: plot.py PLOTS_JSON OUTDIR   -> OUTDIR/<figure name>.<format> per figure and format, one path per line

plots.json: {"formats": ["png", "svg"], "figures": [figure, ...]}, a figure being
  {"name", "title", "xlabel", "ylabel", "xscale": "linear" | "log2",
   "xticks": [...], "xticklabels": [...]  (optional: a categorical axis),
   "series": [{"label", "x": [...], "y": [...], "low": [...], "high": [...]  (optional band),
               "style": "ours" | "paper"}]}
y, low and high may hold null for a missing point. Bad input: a message naming the figure, exit 2.
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here or on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402

# One colour per router in every figure, so "kern" is the same red in all of them.
ROUTER_COLOURS = {"dense": "#7f7f7f", "softmax": "#1f77b4", "sigmoid": "#2ca02c", "tanh": "#ff7f0e",
                  "kern": "#d62728", "kern_no_relu": "#9467bd", "kern_after_topk": "#8c564b",
                  "kern_mc": "#bcbd22", "kmeans": "#e377c2"}
OTHER_COLOURS = ["#17becf", "#393b79", "#637939", "#8c6d31", "#843c39"]


class BadInput(Exception):
    pass


def colour_of(label, others):
    router = label.split(" ")[0]
    if router not in ROUTER_COLOURS:
        others.setdefault(router, OTHER_COLOURS[len(others) % len(OTHER_COLOURS)])
        return others[router]
    return ROUTER_COLOURS[router]


def points(series, figure_name):
    """(x, y, low, high) with missing points left out."""
    x, y = series.get("x"), series.get("y")
    if not isinstance(x, list) or not isinstance(y, list) or len(x) != len(y):
        raise BadInput(f"figure {figure_name}, series {series.get('label')}: x and y must be lists of equal length")
    low, high = series.get("low") or [None] * len(x), series.get("high") or [None] * len(x)
    if len(low) != len(x) or len(high) != len(x):
        raise BadInput(f"figure {figure_name}, series {series.get('label')}: low/high differ in length from x")
    kept = [(a, b, c, d) for a, b, c, d in zip(x, y, low, high) if b is not None]
    return [list(column) for column in zip(*kept)] if kept else [[], [], [], []]


def draw_series(ax, series, figure_name, others):
    x, y, low, high = points(series, figure_name)
    if not x:
        print(f"plot.py: figure {figure_name}: series {series.get('label')} has no points; skipped", file=sys.stderr)
        return False
    colour = colour_of(series["label"], others)
    if series.get("style") == "paper":
        ax.plot(x, y, linestyle="--", marker="o", markerfacecolor="none", color=colour, label=series["label"] + " (paper)")
    else:
        ax.plot(x, y, marker="o", markersize=3, color=colour, label=series["label"])
        band = [(a, b, c) for a, b, c in zip(x, low, high) if b is not None and c is not None]
        if band:
            bx, bl, bh = zip(*band)
            ax.fill_between(bx, bl, bh, color=colour, alpha=0.15, linewidth=0)
    return True


def draw_figure(figure, out_dir, formats):
    for key in ("name", "title", "xlabel", "ylabel", "series"):
        if key not in figure:
            raise BadInput(f"figure {figure.get('name', '?')}: missing key \"{key}\"")
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    others = {}
    drawn = [draw_series(ax, s, figure["name"], others) for s in figure["series"]]
    if figure.get("xscale") == "log2":
        ax.set_xscale("log", base=2)
        ticks = sorted({x for s in figure["series"] for x in s.get("x", [])})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    if "xticks" in figure:
        ax.set_xticks(figure["xticks"], figure.get("xticklabels", figure["xticks"]))
    if any(drawn):
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="#7f7f7f")
    ax.set(title=figure["title"], xlabel=figure["xlabel"], ylabel=figure["ylabel"])
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    for fmt in formats:
        path = Path(out_dir) / f"{figure['name']}.{fmt}"
        # No dates or versions in the files: the same report gives the same bytes.
        fig.savefig(path, format=fmt, metadata={"Date": None} if fmt == "svg" else {"Software": None})
        print(path)
    plt.close(fig)


def main(argv):
    if len(argv) != 3:
        raise BadInput("usage: plot.py PLOTS_JSON OUTDIR")
    try:
        spec = json.loads(Path(argv[1]).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BadInput(f"{argv[1]}: {e}")
    formats = spec.get("formats", ["png", "svg"])
    if not set(formats) <= {"png", "svg"}:
        raise BadInput(f"{argv[1]}: formats must be png and/or svg, not {formats}")
    matplotlib.rcParams["svg.hashsalt"] = "moelab"
    Path(argv[2]).mkdir(parents=True, exist_ok=True)
    for figure in spec.get("figures", []):
        draw_figure(figure, argv[2], formats)


if __name__ == "__main__":
    try:
        main(sys.argv)
    except BadInput as e:
        print(f"plot.py: {e}", file=sys.stderr)
        sys.exit(2)
