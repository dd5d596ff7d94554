"""One report page from results databases and reproduction outputs: a self-contained HTML file
(figures embedded as base64 PNG) and its Markdown twin (figures as PNG files beside it).

The page holds, for every results database found, a method comparison table (methods x tasks:
accuracy, sparsity, parameters, FLOPs, training time, mean and spread over seeds) with its
figures, and every reproduction report found (a directory with report.md and results.json, as
written by `prunelab reproduce NAME` or `prunelab demo`), tables and figures included.

The Markdown is written first and the HTML is rendered from it, so the two always agree; the
renderer covers the Markdown prunelab writes (headings, paragraphs, pipe tables, images, lists,
code, emphasis, links).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelab import atomic
from prunelab.errors import ConfigError, PrunelabError
from prunelab.report import (
    aggregate,
    figure_title,
    markdown_table,
    method_color,
    new_figure,
    remaining_axis,
    save_figure,
    spread_caption,
)
from prunelab.store import Store
from prunelab.sweep import VALIDATION_SUFFIX

DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")
SKIP_DIRS = ("runs", "checkpoints", "__pycache__")  # run directories hold no reports
MAX_DEPTH = 6
COMPARE_VALUES = ("test_accuracy", "weight_sparsity", "weights_removed_vs_start",
                  "params_removed_vs_start", "params_nonzero", "params", "params_at_start",
                  "flops_sparse", "flops_dense", "train_seconds", "num_classes")
# A row is flagged when its mean accuracy is within this of chance (1 / classes) ...
NEAR_CHANCE = 0.05
# ... or this far (accuracy points as a fraction) below the dense run of the same task.
BELOW_DENSE = 0.05


@dataclass
class Sources:
    """What a report is made of: results databases and reproduction directories."""

    databases: list[Path] = field(default_factory=list)
    reproductions: list[Path] = field(default_factory=list)


def _is_reproduction(d: Path) -> bool:
    return (d / "report.md").is_file() and (d / "results.json").is_file()


def find_sources(path: str | Path) -> Sources:
    """A database file, or a directory searched for databases and reproduction reports."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"nothing to report: {path} does not exist (give a results "
                          "database or a directory of sweeps and reproductions)")
    src = Sources()
    if path.is_file():
        if path.suffix not in DB_SUFFIXES:
            raise ConfigError(f"{path} is not a results database (expected "
                              f"{', '.join(DB_SUFFIXES)}) or a directory")
        src.databases.append(path)
        root = path.parent
    else:
        root = path
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        depth = len(d.relative_to(root).parts)
        dirnames[:] = sorted(n for n in dirnames if not n.startswith(".")
                             and n not in SKIP_DIRS and depth < MAX_DEPTH)
        if path.is_dir():
            src.databases += [d / f for f in sorted(filenames) if f.endswith(DB_SUFFIXES)]
        if _is_reproduction(d):
            src.reproductions.append(d)
            dirnames[:] = []  # a reproduction's own sub-directories are part of it
    return src


# ----------------------------------------------------------------------------- comparison


def _fmt_count(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    v = float(v)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.0f}"


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def _nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def comparison_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished runs grouped by task, method label and target sparsity: means, spreads, n,
    and a `flag` (empty when none) for rows near chance or far below dense."""
    done = []
    for r in rows:
        if r.get("status") != "done":
            continue
        target = r.get("sparsity")
        done.append(dict(r, target=-1.0 if target is None else float(target)))
    out = aggregate(done, ["task", "method", "label", "target"], COMPARE_VALUES)
    for r in out:
        r["target"] = None if r["target"] < 0 else r["target"]
        if _nan(r["weights_removed_vs_start"]):  # a database written before these existed
            r["weights_removed_vs_start"] = r["weight_sparsity"]
    order = {t: i for i, t in enumerate(dict.fromkeys(r["task"] for r in done))}
    labels = {m: i for i, m in enumerate(dict.fromkeys(r["label"] for r in done))}
    out.sort(key=lambda r: (order[r["task"]], labels[r["label"]], r["target"] or 0.0))
    dense = {}
    for r in out:
        if r["method"] == "dense":
            dense.setdefault(r["task"], r["test_accuracy"])
    for r in out:
        r["flag"] = collapse_flag(r["test_accuracy"], r.get("num_classes"),
                                  None if r["method"] == "dense" else dense.get(r["task"]))
    return out


def collapse_flag(accuracy: float, classes: float | None, dense: float | None) -> str:
    """'near chance' when the accuracy is within NEAR_CHANCE of 1 / classes, else 'N pts below
    dense' when it is more than BELOW_DENSE below the dense accuracy; '' otherwise."""
    if _nan(accuracy):
        return ""
    if not _nan(classes) and classes and accuracy <= 1.0 / classes + NEAR_CHANCE:
        return f"near chance ({1.0 / classes:.2f})"
    if not _nan(dense) and dense - accuracy > BELOW_DENSE:
        return f"{100 * (dense - accuracy):.1f} pts below dense"
    return ""


def _flag(r: dict[str, Any]) -> str:
    return f"**{r['flag']}**" if r.get("flag") else ""


def comparison_table(summary: list[dict[str, Any]]) -> str:
    """Markdown: one row per task x method x target sparsity."""
    rows = [{
        "task": r["task"], "method": r["label"],
        "target sparsity": "-" if r["target"] is None else f"{r['target']:.2f}",
        "n": r["n"],
        "test accuracy": f"{_fmt(r['test_accuracy'])} ± {_fmt(r['test_accuracy_std'])}",
        "flag": _flag(r),
        "removed vs start (weights / params)": f"{_fmt(r['weights_removed_vs_start'], 3)} / "
                                               f"{_fmt(r.get('params_removed_vs_start'), 3)}",
        "weight sparsity": _fmt(r["weight_sparsity"], 3),
        "params (nonzero / total)": f"{_fmt_count(r['params_nonzero'])} / "
                                    f"{_fmt_count(r['params'])}",
        "FLOPs (sparse / dense)": f"{_fmt_count(r['flops_sparse'])} / "
                                  f"{_fmt_count(r['flops_dense'])}",
        "train s": _fmt(r["train_seconds"], 2),
    } for r in summary]
    cols = ["task", "method", "target sparsity", "n", "test accuracy", "flag",
            "removed vs start (weights / params)", "weight sparsity",
            "params (nonzero / total)", "FLOPs (sparse / dense)", "train s"]
    return markdown_table(rows, cols)


def chosen_on_validation(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For every task with a validation twin (TASK:validation): per method and target
    sparsity, the option label with the best mean validation accuracy, and that label's test
    row. Test accuracies play no part in the choice."""
    by_key = {(r["task"], r["label"], r["target"]): r for r in summary}
    out = []
    for task in dict.fromkeys(r["task"] for r in summary):
        if task.endswith(VALIDATION_SUFFIX):
            continue
        val_task = task + VALIDATION_SUFFIX
        groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
        for r in summary:
            if r["task"] == val_task and (task, r["label"], r["target"]) in by_key:
                groups.setdefault((r["method"], r["target"]), []).append(r)
        for (method, target), cands in groups.items():
            best = max(cands, key=lambda r: (-math.inf if _nan(r["test_accuracy"])
                                             else r["test_accuracy"]))
            test = by_key[(task, best["label"], target)]
            out.append({"task": task, "method": method, "target": target,
                        "label": best["label"], "options": len(cands),
                        "val_accuracy": best["test_accuracy"], "row": test})
    return out


def chosen_table(chosen: list[dict[str, Any]]) -> str:
    """Markdown of `chosen_on_validation`."""
    rows = [{
        "task": c["task"], "method": c["method"],
        "target sparsity": "-" if c["target"] is None else f"{c['target']:.2f}",
        "chosen (of n options)": f"{c['label']} (of {c['options']})",
        "validation accuracy": _fmt(c["val_accuracy"]),
        "test accuracy": f"{_fmt(c['row']['test_accuracy'])} ± "
                         f"{_fmt(c['row']['test_accuracy_std'])}",
        "flag": _flag(c["row"]),
        "removed vs start (weights / params)":
            f"{_fmt(c['row']['weights_removed_vs_start'], 3)} / "
            f"{_fmt(c['row'].get('params_removed_vs_start'), 3)}",
    } for c in chosen]
    return markdown_table(rows, ["task", "method", "target sparsity", "chosen (of n options)",
                                 "validation accuracy", "test accuracy", "flag",
                                 "removed vs start (weights / params)"])


def pivot_table(summary: list[dict[str, Any]]) -> str:
    """Markdown: methods (at each target sparsity) x tasks, cells 'accuracy (weights removed
    vs the starting network)', flagged rows marked with '!'."""
    tasks = list(dict.fromkeys(r["task"] for r in summary))
    keys = list(dict.fromkeys((r["label"], r["target"]) for r in summary))
    rows = []
    for label, target in keys:
        row: dict[str, Any] = {"method": label if target is None else f"{label} @ {target:.2f}"}
        for t in tasks:
            hit = [r for r in summary if r["task"] == t and (r["label"], r["target"]) ==
                   (label, target)]
            row[t] = (f"{_fmt(hit[0]['test_accuracy'])} "
                      f"({_fmt(hit[0]['weights_removed_vs_start'], 2)})"
                      + (" **!**" if hit[0].get("flag") else "") if hit else "-")
        rows.append(row)
    return markdown_table(rows, ["method", *tasks])


def comparison_figures(summary: list[dict[str, Any]], fig_dir: Path, prefix: str,
                       title: str | None = None) -> list[Path]:
    """Accuracy vs the fraction of the starting network's weights remaining (log axis), per
    task, and training time per method; one colour per method (`report.method_color`), the
    sweep named in each figure's title (`title`)."""
    title = title or prefix.rstrip("-_") or "sweep"
    if not summary:
        return []
    tasks = list(dict.fromkeys(r["task"] for r in summary))
    labels = list(dict.fromkeys(r["label"] for r in summary))
    colors = {m: method_color(m) for m in labels}
    fig, axes = new_figure(len(tasks))
    for ax, task in zip(axes[0], tasks):
        removed = []
        for m in labels:
            pts = sorted((r["weights_removed_vs_start"], r["test_accuracy"],
                          r["test_accuracy_std"])
                         for r in summary if r["task"] == task and r["label"] == m)
            if pts and all(p[0] < 1e-6 for p in pts):  # dense: a reference line
                ax.axhline(pts[0][1], color=colors[m], ls="--", label=m)
            elif pts:
                pts = [p for p in pts if p[0] < 1.0]
                removed += [p[0] for p in pts]
                ax.errorbar([1 - p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts],
                            marker="o", capsize=3, color=colors[m], label=m)
        remaining_axis(ax, removed, label="weights remaining (vs the starting network)")
        ax.set(title=task, ylabel="test accuracy")
        ax.legend(fontsize=8)
    figure_title(fig, f"{title}: accuracy vs weights remaining",
                 caption=spread_caption([r.get("n", 1) for r in summary]))
    paths = [save_figure(fig, fig_dir / f"{prefix}accuracy_vs_sparsity.png")]
    fig, axes = new_figure(len(tasks))
    for ax, task in zip(axes[0], tasks):
        rows = [r for r in summary if r["task"] == task]
        names = [r["label"] if r["target"] is None else f"{r['label']}@{r['target']:.2f}"
                 for r in rows]
        ax.barh(range(len(rows)), [r["train_seconds"] for r in rows],
                xerr=[r["train_seconds_std"] for r in rows],
                color=[colors[r["label"]] for r in rows])
        ax.set_yticks(range(len(rows)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set(title=task, xlabel="training time per run (s)")
    figure_title(fig, f"{title}: training time",
                 caption=spread_caption([r.get("n", 1) for r in summary]))
    paths.append(save_figure(fig, fig_dir / f"{prefix}training_time.png"))
    return paths


# ----------------------------------------------------------------------------- sections


def _shift_headings(text: str, by: int) -> str:
    return re.sub(r"^(#{1,6})(?=\s)", lambda m: "#" * min(6, len(m.group(1)) + by), text,
                  flags=re.MULTILINE)


def _rebase_images(text: str, src_dir: Path, out_dir: Path) -> str:
    """Image links of an included report, made relative to where the page is written."""
    def fix(m: re.Match) -> str:
        target = m.group(2)
        if re.match(r"^[a-z]+:", target) or target.startswith("/"):
            return m.group(0)
        rel = os.path.relpath((src_dir / target).resolve(), out_dir.resolve())
        return f"![{m.group(1)}]({Path(rel).as_posix()})"

    return re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", fix, text)


def database_section(db: Path, out_dir: Path, fig_dir: Path, index: int) -> str:
    """Markdown for one results database: status counts, comparison, figures, failures."""
    with Store(db, create=False) as store:
        rows = store.rows()
        counts = store.status_counts()
    sweeps = ", ".join(sorted({str(r.get("sweep")) for r in rows})) or "-"
    lines = [f"## Results database `{db}`", "",
             f"Sweep(s): {sweeps}. Runs: " + ", ".join(f"{v} {k}" for k, v in counts.items())
             + ".", ""]
    summary = comparison_rows(rows)
    if summary:
        lines += [
            "### Method comparison", "",
            "Mean ± sample std over seeds (n runs). *target sparsity* is what the method was "
            "asked for. *removed vs start* is the fraction of the weights (prunable Linear/"
            "Conv weights) and of all parameters of the network the run started from that are "
            "gone at the end: zeroed, or removed with their units by a structured method "
            "(units, bernoulli), which ends with a smaller network. *weight sparsity* and the "
            "parameter and FLOP counts (2 x multiply-accumulates per sample; nonzero weights "
            "against the dense layers) describe the final network itself, so a structured run "
            "can show weight sparsity 0 after removing most units. *train s* is the training "
            "time of one run (for imp, all its rounds). Rows of a task named "
            f"`TASK{VALIDATION_SUFFIX}` are evaluated on a validation split held out of the "
            "training set (their *test accuracy* column is validation accuracy). **flag**: "
            f"mean accuracy within {NEAR_CHANCE:.2f} of chance (1 / classes) or more than "
            f"{100 * BELOW_DENSE:.0f} points below the dense run of the same task; a flagged "
            "method has collapsed or is badly tuned there, not necessarily bad.", "",
            comparison_table(summary), "",
            "Test accuracy (weights removed vs the starting network; **!** = flagged), "
            "methods x tasks:", "",
            pivot_table(summary), "",
            "Figures: one colour per method in every figure; weights remaining on a log "
            "axis; " + spread_caption([r.get("n", 1) for r in summary]) + ".",
            "",
        ]
        chosen = chosen_on_validation(summary)
        if chosen:
            lines += [
                "### Options chosen on validation", "",
                "For each task with a validation twin: per method and target sparsity, the "
                "option setting (label) with the best mean validation accuracy, and its test "
                "accuracy. The choice reads validation accuracies only.", "",
                chosen_table(chosen), "",
            ]
        for p in comparison_figures(summary, fig_dir, f"db{index}_", title=f"sweep {sweeps}"):
            rel = Path(os.path.relpath(p, out_dir)).as_posix()
            lines += [f"![{p.stem}]({rel})", ""]
    else:
        lines += ["No finished runs yet.", ""]
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["### Failed runs", "",
                  markdown_table([{"run": f"{r['method']}-{r['model']}-{r['config_hash']}",
                                   "task": r["task"], "error": r.get("error") or ""}
                                  for r in failed], ["run", "task", "error"]), ""]
    return "\n".join(lines)


def reproduction_section(d: Path, out_dir: Path) -> str:
    """A reproduction's report.md, headings nested one level, image links rebased."""
    text = (d / "report.md").read_text()
    text = _rebase_images(_shift_headings(text, 1), d, out_dir).strip()
    title, _, rest = text.partition("\n")
    if re.match(r"^##\s", title):  # the report's own title heads its section
        return f"{title}\n\nReproduction output `{d}`.\n\n{rest.strip()}\n"
    return f"## Reproduction `{d}`\n\n{text}\n"


def build_markdown(sources: Sources, out_md: Path) -> str:
    """The Markdown twin of the page (figures written under OUT_figures/)."""
    out_dir = out_md.parent
    fig_dir = out_dir / f"{out_md.stem}_figures"
    stamp = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    parts = ["# prunelab report", "",
             f"Generated {stamp} from {len(sources.databases)} results database(s) and "
             f"{len(sources.reproductions)} reproduction report(s).", ""]
    if sources.databases or sources.reproductions:
        parts += ["Contents:", ""]
        parts += [f"- results database `{db}`" for db in sources.databases]
        parts += [f"- reproduction `{d}`" for d in sources.reproductions]
        parts.append("")
    for i, db in enumerate(sources.databases):
        parts.append(database_section(db, out_dir, fig_dir, i))
    for d in sources.reproductions:
        parts.append(reproduction_section(d, out_dir))
    return "\n".join(parts)


# ----------------------------------------------------------------------------- Markdown -> HTML

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 1em 0; }
code { background: #f4f4f4; padding: 0 0.2em; } pre { background: #f4f4f4; padding: 0.6em;
       overflow-x: auto; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
"""


def _data_uri(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
            ".svg": "image/svg+xml", ".gif": "image/gif"}.get(path.suffix.lower(), "image/png")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _inline(text: str, base: Path) -> str:
    """Inline Markdown (images embedded, links, code, bold, italic) -> HTML."""
    out, pos = [], 0
    pattern = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)|`([^`]+)`")
    for m in pattern.finditer(text):
        out.append(_emphasis(html.escape(text[pos:m.start()])))
        if m.group(4) is not None:
            out.append(f"<code>{html.escape(m.group(4))}</code>")
        elif m.group(1):
            alt, target = html.escape(m.group(2)), m.group(3)
            uri = target if target.startswith("data:") else _data_uri(base / target)
            if uri is None:
                out.append(f"<em>[missing figure: {html.escape(target)}]</em>")
            else:
                out.append(f'<img alt="{alt}" src="{uri}">')
        else:
            out.append(f'<a href="{html.escape(m.group(3))}">{html.escape(m.group(2))}</a>')
        pos = m.end()
    out.append(_emphasis(html.escape(text[pos:])))
    return "".join(out)


def _emphasis(s: str) -> str:
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    return re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", s)


def _table_cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_to_html(text: str, base: Path) -> str:
    """Render prunelab's Markdown to an HTML body; images under `base` are embedded."""
    lines = text.splitlines()
    out: list[str] = []
    para: list[str] = []
    i = 0

    def flush() -> None:
        if para:
            out.append(f"<p>{_inline(' '.join(para), base)}</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            code = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                code.append(lines[i])
                i += 1
            out.append(f"<pre><code>{html.escape(chr(10).join(code))}</code></pre>")
        elif not stripped:
            flush()
        elif m := re.match(r"^(#{1,6})\s+(.*)$", stripped):
            flush()
            n = len(m.group(1))
            out.append(f"<h{n}>{_inline(m.group(2), base)}</h{n}>")
        elif stripped.startswith("|") and i + 1 < len(lines) and \
                re.match(r"^\|?\s*:?-{3,}", lines[i + 1].strip()):
            flush()
            head = _table_cells(stripped)
            rows = []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_table_cells(lines[i]))
                i += 1
            th = "".join(f"<th>{_inline(c, base)}</th>" for c in head)
            body = "".join("<tr>" + "".join(f"<td>{_inline(c, base)}</td>" for c in r)
                           + "</tr>" for r in rows)
            out.append(f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>")
            continue
        elif re.match(r"^([-*+]|\d+\.)\s+", stripped):
            flush()
            ordered = bool(re.match(r"^\d+\.", stripped))
            items = []
            while i < len(lines) and re.match(r"^\s*([-*+]|\d+\.)\s+", lines[i]):
                items.append(re.sub(r"^\s*([-*+]|\d+\.)\s+", "", lines[i]))
                i += 1
                while i < len(lines) and lines[i].startswith("  ") and lines[i].strip() \
                        and not re.match(r"^\s*([-*+]|\d+\.)\s+", lines[i]):
                    items[-1] += " " + lines[i].strip()
                    i += 1
            tag = "ol" if ordered else "ul"
            out.append(f"<{tag}>" + "".join(f"<li>{_inline(t, base)}</li>" for t in items)
                       + f"</{tag}>")
            continue
        elif re.match(r"^(-{3,}|\*{3,})$", stripped):
            flush()
            out.append("<hr>")
        else:
            para.append(stripped)
        i += 1
    flush()
    return "\n".join(out)


def render_html(markdown: str, base: Path, title: str = "prunelab report") -> str:
    """A complete, self-contained HTML page from the Markdown."""
    body = markdown_to_html(markdown, base)
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"{body}\n</body>\n</html>\n")


def write_report(path: str | Path, out: str | Path | None = None) -> tuple[Path, Path]:
    """Write the HTML page and its Markdown twin for a database or directory; returns both.

    Default output: DIR/report.html (for a database, report.html beside it)."""
    path = Path(path)
    sources = find_sources(path)
    if not sources.databases and not sources.reproductions:
        raise ConfigError(f"nothing to report in {path}: no results database (*.db) and no "
                          "reproduction directory (report.md + results.json) found")
    if out is None:
        out_html = (path if path.is_dir() else path.parent) / "report.html"
    else:
        out_html = Path(out)
        if out_html.suffix.lower() not in (".html", ".htm"):
            raise ConfigError(f"--out must end in .html, got '{out_html}'")
    out_md = out_html.with_suffix(".md")
    out_html.parent.mkdir(parents=True, exist_ok=True)
    try:
        markdown = build_markdown(sources, out_md)
    except OSError as exc:
        from prunelab.errors import os_error_message

        raise PrunelabError(os_error_message(exc)) from None
    atomic.write_text(out_md, markdown)
    atomic.write_text(out_html, render_html(markdown, out_md.parent))
    return out_html, out_md
