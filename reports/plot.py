"""Draws the figures of a moelab report (moelab report writes plots.json, then runs this).

usage: plot.py PLOTS_JSON OUTDIR   -> OUTDIR/<figure name>.<format> per figure and format, one path per line

plots.json: {"formats": ["png", "svg"], "figures": [figure, ...]}, a figure being
  {"name", "title", "xlabel", "ylabel", "xscale": "linear" | "log2" (optional, default linear),
   "xticks": [...], "xticklabels": [...]  (optional: a categorical axis),
   "series": [{"label", "x": [...], "y": [...], "low": [...], "high": [...]  (optional band),
               "style": "ours" | "paper", "colour": "#rrggbb" (optional)}]}
y, low and high may hold null for a missing point; a series with no points is skipped (a warning),
a figure with none says "no data". A router keeps its colour in every figure: moelab report writes
each router's colour from the router registry (engine/config/router_registry.cpp) into its series.
Bad input: a message naming the figure and the problem on stderr, exit 2, and no file written.
"""
import json
import sys
import zlib
from numbers import Real
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here or on cluster nodes
import matplotlib.colors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

# For series without a colour of their own (a router the registry has none for).
OTHER_COLOURS = ["#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"]
FIGURE_KEYS = ("name", "title", "xlabel", "ylabel", "series")


class BadInput(Exception):
    pass


def colour_of(s):
    # Labels are "<router> [setting=value ...]": a series without a colour is coloured by a checksum
    # of its router (not hash(), which is salted per run), so that it agrees across figures.
    router = s["label"].split(" ")[0]
    return s.get("colour") or OTHER_COLOURS[zlib.crc32(router.encode()) % len(OTHER_COLOURS)]


def is_number(v, nullable):
    return (v is None and nullable) or (isinstance(v, Real) and not isinstance(v, bool))


def check_series(s, where):
    if not isinstance(s, dict) or not isinstance(s.get("label"), str):
        raise BadInput(f"{where}: a series must be an object with a string \"label\"")
    where += f", series {s['label']}"
    if s.get("style", "ours") not in ("ours", "paper"):
        raise BadInput(f"{where}: style must be \"ours\" or \"paper\", not {s['style']!r}")
    colour = s.get("colour")
    if colour is not None and not (isinstance(colour, str) and matplotlib.colors.is_color_like(colour)):
        raise BadInput(f"{where}: colour must be a colour such as \"#1f77b4\", not {colour!r}")
    x, y = s.get("x"), s.get("y")
    if not isinstance(x, list) or not isinstance(y, list) or len(x) != len(y):
        raise BadInput(f"{where}: x and y must be lists of equal length")
    for key in ("x", "y", "low", "high"):
        values = s.get(key) or []
        if not isinstance(values, list) or len(values) not in (0, len(x)):
            raise BadInput(f"{where}: {key} must be a list as long as x")
        if not all(is_number(v, nullable=key != "x") for v in values):
            raise BadInput(f"{where}: {key} must hold numbers" + ("" if key == "x" else " or null"))


def check(spec, source):
    """Checks the whole file before drawing, so bad input leaves no half-written report."""
    if not isinstance(spec, dict) or not isinstance(spec.get("figures"), list):
        raise BadInput(f"{source}: expected an object with a \"figures\" list")
    formats = spec.get("formats", ["png", "svg"])
    if not isinstance(formats, list) or not set(formats) <= {"png", "svg"}:
        raise BadInput(f"{source}: formats must be a list of png and/or svg, not {formats}")
    for i, figure in enumerate(spec["figures"]):
        if not isinstance(figure, dict):
            raise BadInput(f"figure #{i}: must be an object")
        where = f"figure {figure.get('name', f'#{i}')}"
        for key in FIGURE_KEYS:
            if key not in figure:
                raise BadInput(f"{where}: missing key \"{key}\"")
        if not isinstance(figure["name"], str) or not figure["name"] or "/" in figure["name"]:
            raise BadInput(f"{where}: name must be a file stem (a non-empty string without /)")
        if figure.get("xscale", "linear") not in ("linear", "log2"):
            raise BadInput(f"{where}: xscale must be \"linear\" or \"log2\", not {figure['xscale']!r}")
        ticks = figure.get("xticks", [])
        if not isinstance(ticks, list) or len(figure.get("xticklabels", ticks)) != len(ticks):
            raise BadInput(f"{where}: xticks and xticklabels must be lists of equal length")
        if not isinstance(figure["series"], list):
            raise BadInput(f"{where}: series must be a list")
        for s in figure["series"]:
            check_series(s, where)
    return formats


def points(s):
    """(x, y, low, high) with the missing points (y null) left out."""
    n = len(s["x"])
    rows = zip(s["x"], s["y"], s.get("low") or [None] * n, s.get("high") or [None] * n)
    kept = [row for row in rows if row[1] is not None]
    return [list(column) for column in zip(*kept)] if kept else [[], [], [], []]


def draw_series(ax, s, figure_name):
    x, y, low, high = points(s)
    if not x:
        print(f"plot.py: figure {figure_name}: series {s['label']} has no points; skipped", file=sys.stderr)
        return False
    colour = colour_of(s)
    if s.get("style") == "paper":  # the paper's figures: same colour as ours, dashed and hollow
        ax.plot(x, y, linestyle="--", marker="o", markerfacecolor="none", color=colour, label=s["label"] + " (paper)")
    else:
        ax.plot(x, y, marker="o", markersize=3, color=colour, label=s["label"])
    band = [(a, b, c) for a, b, c in zip(x, low, high) if b is not None and c is not None]
    if band:
        bx, bl, bh = zip(*band)
        ax.fill_between(bx, bl, bh, color=colour, alpha=0.15, linewidth=0)
    return True


def draw_figure(figure, out_dir, formats):
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    drawn = [draw_series(ax, s, figure["name"]) for s in figure["series"]]
    if figure.get("xscale") == "log2":  # ticks at the x values, written plainly (64, not 2^6)
        ax.set_xscale("log", base=2)
        ticks = sorted({x for s in figure["series"] for x in s["x"] if x > 0})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"{argv[1]}: {e}")
    formats = check(spec, argv[1])
    matplotlib.rcParams["svg.hashsalt"] = "moelab"  # fixed ids inside the SVG, for byte-identical files
    Path(argv[2]).mkdir(parents=True, exist_ok=True)
    for figure in spec["figures"]:
        draw_figure(figure, argv[2], formats)


if __name__ == "__main__":
    try:
        main(sys.argv)
    except BadInput as e:
        print(f"plot.py: {e}", file=sys.stderr)
        sys.exit(2)
