"""The main job on built-in data: dense, gradual-magnitude-pruned, scratch and lottery networks
on XOR-like data with irrelevant variables and on scikit-learn's digits, at several sparsities.

Scratch and lottery retrains reuse the pruned run's final mask and training recipe: scratch
starts from a new random init, lottery from the pruned run's own initial weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelab import atomic
from prunelab.config import RunConfig, TrainConfig
from prunelab.report import (
    aggregate,
    figure_title,
    markdown_table,
    method_color,
    new_figure,
    remaining_axis,
    save_figure,
    spread_caption,
    text_table,
)
from prunelab.subruns import SubrunCache
from prunelab.threads import torch_threads
from prunelab.train import load_data


@dataclass
class DemoTask:
    """One dataset/model/recipe of the demo."""

    title: str
    dataset: str
    data_options: dict[str, Any]
    model: str
    model_options: dict[str, Any]
    train: TrainConfig
    gmp: dict[str, Any] = field(default_factory=dict)


def demo_tasks() -> list[DemoTask]:
    """XOR with 2 relevant and 18 irrelevant variables; digits with an MLP."""
    return [
        DemoTask(
            "XOR, 2 relevant + 18 irrelevant inputs", "xor",
            {"n_relevant": 2, "n_irrelevant": 18, "n_train": 1000, "n_test": 5000},
            "mlp", {"widths": [64, 64]},
            TrainConfig(epochs=50, batch_size=50, optimizer="adam", lr=3e-3),
            {"begin": 0.1, "end": 0.6, "frequency": 20},
        ),
        DemoTask(
            "digits (8x8), MLP 64-128-64-10", "digits", {},
            "mlp", {"widths": [128, 64]},
            TrainConfig(epochs=40, batch_size=64, optimizer="adam", lr=2e-3),
            {"begin": 0.1, "end": 0.6, "frequency": 20},
        ),
    ]


def _row(task: DemoTask, method: str, sparsity: float, seed: int, result) -> dict[str, Any]:
    return {
        "task": task.dataset,
        "method": method,
        "sparsity": sparsity,
        "seed": seed,
        "test_accuracy": result.final["test_accuracy"],
        "train_loss": result.final.get("train_eval_loss", result.final["train_loss"]),
        "weight_sparsity": result.sparsity["global"]["weight_sparsity"],
        "curve": [m["test_accuracy"] for m in result.metrics],
    }


# Tiny models only lose time to intra-op threads: on a busy 2-core machine a quick demo
# sub-run took 100-120 s with torch's two threads against 1.2 s with one.
@torch_threads(1)
def run_demo(
    out: Path,
    *,
    quick: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the demo and write report.md, results.json and figures/ into `out` (atomically)."""
    log = log or (lambda s: None)
    cache = SubrunCache.for_output(out)  # a killed attempt's finished runs are read back
    sparsities = [0.8, 0.95] if quick else [0.5, 0.8, 0.9, 0.95, 0.98]
    seeds = [0] if quick else [0, 1]
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for task in demo_tasks():
        for seed in seeds:
            train = TrainConfig(**{**task.train.__dict__, "seed": seed})
            base = RunConfig(task.dataset, task.data_options, None, task.model,
                             task.model_options, "dense", {}, train)
            data = load_data(base)
            dense = cache.run(base, data=data, progress=progress)
            rows.append(_row(task, "dense", 0.0, seed, dense))
            log(f"{task.dataset} seed {seed}: dense test accuracy "
                f"{dense.final['test_accuracy']:.4f}")
            for s in sparsities:
                cfg = RunConfig(task.dataset, task.data_options, None, task.model,
                                task.model_options, "gmp", {"sparsity": s, **task.gmp}, train)
                pruned = cache.run(cfg, data=data, progress=progress)
                rows.append(_row(task, "pruned", s, seed, pruned))
                for init, label in (("scratch", "scratch"), ("original", "lottery")):
                    r = cache.retrain_from(cfg, pruned.masks, init,
                                     init_states={"step0": pruned.initial_state}, data=data,
                                     progress=progress)
                    rows.append(_row(task, label, s, seed, r))
                log(f"{task.dataset} seed {seed} sparsity {s}: pruned "
                    f"{rows[-3]['test_accuracy']:.4f} scratch {rows[-2]['test_accuracy']:.4f} "
                    f"lottery {rows[-1]['test_accuracy']:.4f}")
    elapsed = time.perf_counter() - start
    summary = aggregate(rows, ["task", "method", "sparsity"],
                        ["test_accuracy", "train_loss", "weight_sparsity"])
    with atomic.staged_directory(out) as stage:
        figures = _figures(stage, rows, summary, sparsities)
        results = {"seconds": elapsed, "sparsities": sparsities, "seeds": seeds,
                   "summary": summary, "runs": rows, "figures": figures}
        atomic.write_json(stage / "results.json", results)
        atomic.write_text(stage / "report.md", _report(summary, figures, elapsed, seeds))
    columns = ["task", "method", "sparsity", "test_accuracy", "test_accuracy_std", "train_loss"]
    log(text_table(summary, columns))
    log(f"wrote {out}/report.md ({elapsed:.0f} s)")
    return results


def _figures(stage: Path, rows, summary, sparsities) -> list[str]:
    (stage / "figures").mkdir()
    tasks = list(dict.fromkeys(r["task"] for r in summary))
    fig, axes = new_figure(len(tasks))
    for ax, task in zip(axes[0], tasks):
        dense = [r for r in summary if r["task"] == task and r["method"] == "dense"][0]
        ax.axhline(dense["test_accuracy"], color=method_color("dense"), ls="--", label="dense")
        for method in ("pruned", "lottery", "scratch"):
            pts = sorted((r["sparsity"], r["test_accuracy"], r["test_accuracy_std"])
                         for r in summary if r["task"] == task and r["method"] == method)
            ax.errorbar([1 - p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts],
                        marker="o", color=method_color(method), label=method, capsize=3)
        remaining_axis(ax, sparsities)
        ax.set(title=task, ylabel="test accuracy")
        ax.legend(fontsize=8)
    figure_title(fig, "prunelab demo", f"GMP to {', '.join(f'{s:g}' for s in sparsities)}",
                 caption=spread_caption([r["n"] for r in summary]))
    acc = "figures/accuracy_vs_sparsity.png"
    save_figure(fig, stage / acc)
    fig, axes = new_figure(len(tasks))
    top = max(sparsities)
    for ax, task in zip(axes[0], tasks):
        for method, s in (("dense", 0.0), ("pruned", top), ("lottery", top), ("scratch", top)):
            run_row = [r for r in rows if r["task"] == task and r["method"] == method
                       and r["sparsity"] == s][0]
            ax.plot(range(1, len(run_row["curve"]) + 1), run_row["curve"],
                    color=method_color(method), label=f"{method}" + (f" ({s:.0%})" if s else ""))
        ax.set(title=task, xlabel="epoch", ylabel="test accuracy")
        ax.legend(fontsize=8)
    figure_title(fig, "prunelab demo", f"training curves, first seed, sparsity {top:g}")
    curves = "figures/training_curves.png"
    save_figure(fig, stage / curves)
    return [acc, curves]


def _report(summary, figures, elapsed: float, seeds) -> str:
    cols = ["task", "method", "sparsity", "n", "test_accuracy", "test_accuracy_std",
            "train_loss", "weight_sparsity"]
    lines = [
        "# prunelab demo",
        "",
        "Dense, gradual-magnitude-pruned (Zhu & Gupta cubic schedule), scratch (same mask, new "
        "init) and lottery (same mask, the pruned run's original init) networks on built-in "
        f"data. Mean and sample std over seeds {seeds}; train_loss is the final full-batch "
        "training loss.",
        "",
        markdown_table(summary, cols),
        "",
        *[f"![{Path(f).stem}]({f})" for f in figures],
        "",
        f"Accuracy figure: {spread_caption([r['n'] for r in summary])}; the x axis is the "
        "fraction of weights remaining, on a log scale.",
        "",
        f"Total time: {elapsed:.0f} s.",
        "",
    ]
    return "\n".join(lines)
