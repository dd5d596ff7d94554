"""Tables and figures: plain-text and Markdown tables, Matplotlib (Agg) figures saved
atomically, and mean/spread aggregation of result rows."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from prunelab import atomic


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.3g}"
    return str(v)


def text_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Aligned plain-text table for the terminal."""
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """GitHub-flavoured Markdown table."""
    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def aggregate(
    rows: Iterable[dict[str, Any]], keys: Sequence[str], values: Sequence[str]
) -> list[dict[str, Any]]:
    """Group rows by `keys`; for each value column give the mean, the sample std and n."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r)
    out = []
    for key, members in groups.items():
        row = dict(zip(keys, key))
        row["n"] = len(members)
        for v in values:
            xs = [float(m[v]) for m in members if m.get(v) is not None]
            mean = sum(xs) / len(xs) if xs else float("nan")
            var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0
            row[v], row[f"{v}_std"] = mean, math.sqrt(var)
        out.append(row)
    return out


def new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 3.6)):
    """A Matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows),
                             squeeze=False)
    return fig, axes


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save and close a figure atomically; returns the path."""
    import matplotlib.pyplot as plt

    atomic.save_figure(path, fig)
    plt.close(fig)
    return Path(path)


# ----------------------------------------------------------------------------- figure style

# One colour per method (and per retraining baseline) in every figure: a method keeps its
# colour from the demo to a sweep's report page. Names not listed get a stable colour of their
# own from the second list (by a hash of the name, not the order they are drawn in).
METHOD_COLORS: dict[str, str] = {
    "dense": "#3a3a3a",
    "gmp": "#1f77b4", "pruned": "#1f77b4",
    "magnitude": "#17becf",
    "imp": "#2ca02c", "lottery": "#2ca02c", "original": "#2ca02c", "rewind": "#2ca02c",
    "scratch": "#d62728",
    "init": "#7f7f7f",
    "annealed": "#ff7f0e",
    "rigl": "#9467bd", "set": "#8c564b",
    "snip": "#e377c2", "grasp": "#bcbd22", "synflow": "#393b79", "random": "#aec7e8",
    "units": "#637939", "bernoulli": "#e7969c", "biobjective": "#843c39",
    "fixed-mask": "#9c9ede",
}
_EXTRA_COLORS = ("#5254a3", "#8ca252", "#bd9e39", "#ad494a", "#a55194", "#6b6ecf",
                 "#b5cf6b", "#e7ba52", "#d6616b", "#ce6dbd", "#de9ed6", "#31a354")


def method_key(label: str) -> str:
    """The method a plot label names: 'retrain-scratch' -> scratch, 'gmp s=0.9' -> gmp,
    'lottery->pruned' -> lottery, 'init (masked)' -> init."""
    name = str(label).strip().lower()
    for sep in ("->", " (", "@", " "):
        name = name.split(sep)[0]
    if name.startswith("retrain-"):
        name = name[len("retrain-"):]
    if name.startswith("rewind") or name.endswith("-lottery"):
        name = "rewind"
    return name


def method_color(label: str) -> str:
    """The colour of the method a label names (see METHOD_COLORS)."""
    key = method_key(label)
    if key in METHOD_COLORS:
        return METHOD_COLORS[key]
    import zlib

    return _EXTRA_COLORS[zlib.crc32(key.encode()) % len(_EXTRA_COLORS)]


def remaining_axis(ax: Any, sparsities: Iterable[float], *,
                   label: str = "weights remaining") -> None:
    """An x axis of remaining weights (1 - sparsity) on a log scale, sparsity growing to the
    right, ticked at the runs' sparsities: 0.9, 0.95 and 0.98 are evenly apart there instead
    of bunched at one end. Plot x = 1 - sparsity on it."""
    values = sorted({round(1.0 - float(s), 10) for s in sparsities if float(s) < 1.0})
    ax.set_xscale("log")
    if values:
        ax.set_xticks(values, [f"{v:.3g}\n(s={1 - v:.3g})" for v in values], fontsize=7)
        ax.minorticks_off()
        ax.set_xlim(max(values) * 1.5, min(values) / 1.5)  # sparsity grows to the right
    ax.set_xlabel(f"{label} (log scale; s = sparsity)")


def spread_caption(n: int | Iterable[int], what: str = "seeds") -> str:
    """What error bars show, for a caption: 'bars: mean +- std over 3 seeds'."""
    counts = sorted({int(n)} if isinstance(n, (int, float)) else {int(k) for k in n})
    if not counts:
        return ""
    over = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    if counts[-1] <= 1:
        return f"a single run per point (no error bars over {what})"
    return f"bars: mean +- std over {over} {what}"


def figure_title(fig: Any, run: str, settings: str | dict[str, Any] | None = None,
                 caption: str | None = None) -> None:
    """The run's name and settings above a figure, and an optional caption below it."""
    if isinstance(settings, dict):
        settings = ", ".join(f"{k} {v}" for k, v in settings.items())
    fig.suptitle(run + (f" ({settings})" if settings else ""), fontsize=9)
    if caption:
        fig.text(0.5, -0.09, caption, ha="center", va="top", fontsize=8)
