"""Evci et al., "The Difficulty of Training Sparse Neural Networks" (METHODS.md section 3):
pruned, scratch and lottery solutions of LeNet-300-100 on MNIST sharing one 98% mask; the
straight lines init -> pruned, scratch -> pruned and lottery -> pruned; sparse quadratic and
cubic and dense quadratic Bezier curves between scratch and pruned.

Claims checked (train loss, as measured; thresholds fixed in this file, not tuned to results):
scratch ends with a higher training loss than pruned; the line from the masked init to the
pruned solution is monotone (no rise above 1% of L(0)); the scratch -> pruned line has a clear
barrier (> BARRIER_CLEAR nats); the sparse quadratic and cubic curves keep a barrier
(> BARRIER_CLEAR) smaller than the line's; the dense quadratic curve's barrier is near 0
(<= BARRIER_CLEAR).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prunelab import atomic
from prunelab.config import RunConfig, TrainConfig
from prunelab.data import load_dataset
from prunelab.errors import DataError
from prunelab.landscape.curves import BezierCurve, evaluate_curve, train_curve
from prunelab.landscape.paths import interpolate, plot_path
from prunelab.masks import mask_sparsity
from prunelab.models import build_model
from prunelab.report import markdown_table, new_figure, save_figure, text_table
from prunelab.retrain import retrain_from
from prunelab.threads import torch_threads
from prunelab.train import evaluate
from prunelab.train import run as train_run

BARRIER_CLEAR = 0.05  # nats of training loss: above is "a clear barrier", below is "near 0"
MONOTONE_TOLERANCE = 0.01  # fraction of L(0)
REF_TOTAL_STEPS, REF_BEGIN, REF_END, REF_FREQUENCY = 11_725, 3000, 7000, 100


@dataclass
class Settings:
    """The recipe. METHODS: momentum 0.9, lr 0.2, wd 1e-4, batch 128, 25 epochs, pruning from
    step 3000 to 7000 every 100 steps; lr 0.2 is for raw pixels, prunelab standardises MNIST and
    lr 0.05 (cosine) is what benchmarks/mnist_gmp.py found best for this model."""

    n_train: int | None = None
    epochs: int = 25
    lr: float = 0.05
    lr_schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    sparsity: float = 0.98
    curve_epochs: int = 10
    curve_lr: float = 0.05
    line_points: int = 29
    curve_points: int = 61
    seed: int = 0


def settings(quick: bool) -> Settings:
    if quick:  # 10k training images, 8 epochs, 3 curve epochs: a few minutes on 2 cores
        return Settings(n_train=10_000, epochs=8, curve_epochs=3)
    return Settings()


def pruning_steps(total_steps: int) -> tuple[int, int, int]:
    """Steps 3000 -> 7000 every 100 of 11,725, scaled to the run's length."""
    scale = total_steps / REF_TOTAL_STEPS
    return (round(REF_BEGIN * scale), round(REF_END * scale),
            max(1, min(REF_FREQUENCY, round(REF_FREQUENCY * scale))))


@torch_threads(1)  # the documented full runs used one thread; more only spin on a busy box
def run(out: Path, *, quick: bool = False, progress: bool | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the three solutions, evaluate the lines and curves, write report, results and
    figure into `out` atomically (single-threaded, the thread count restored after)."""
    s = settings(quick)
    start = time.perf_counter()
    try:
        data = load_dataset("mnist", seed=s.seed)
    except DataError as exc:
        raise DataError(f"sparse-landscape needs MNIST: {exc}") from None
    if s.n_train is not None:
        data = data.subset_train(s.n_train, seed=s.seed)
    train = TrainConfig(epochs=s.epochs, batch_size=s.batch_size, optimizer="sgd", lr=s.lr,
                        momentum=s.momentum, weight_decay=s.weight_decay,
                        lr_schedule=s.lr_schedule, seed=s.seed, eval_train=False,
                        checkpoint_epochs=False)
    total = s.epochs * math.ceil(data.n_train / s.batch_size)
    begin, end, freq = pruning_steps(total)
    cfg = RunConfig("mnist", {}, None, "lenet-300-100", {}, "gmp",
                    {"sparsity": s.sparsity, "begin": begin, "end": end, "frequency": freq,
                     "scope": "global"}, train)
    log(f"pruned: gradual magnitude pruning to {s.sparsity:.0%}, steps {begin}->{end} every "
        f"{freq} of {total}, {data.n_train} training images")
    pruned = train_run(cfg, data=data, progress=progress)
    masks = pruned.masks
    log("scratch and lottery retrains of the pruned mask")
    scratch = retrain_from(cfg, masks, "scratch", data=data, progress=progress)
    lottery = retrain_from(cfg, masks, "original", init_states={"step0": pruned.initial_state},
                           data=data, progress=progress)
    model = build_model("lenet-300-100", data.input_shape, data.num_classes)
    masked_init = {k: (v * masks[k] if k in masks else v.clone())
                   for k, v in pruned.initial_state.items()}
    states = {"init (masked)": masked_init, "pruned": pruned.final_state,
              "scratch": scratch.final_state, "lottery": lottery.final_state}
    final = []
    for name, state in states.items():
        model.load_state_dict(state)
        tr = evaluate(model, data.x_train, data.y_train)
        te = evaluate(model, data.x_test, data.y_test)
        final.append({"solution": name, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
                      "test_loss": te["loss"], "test_accuracy": te["accuracy"]})
    log(text_table(final, ["solution", "train_loss", "train_accuracy", "test_accuracy"]))

    paths: dict[str, Any] = {}
    t_lines = time.perf_counter()
    for name in ("init (masked)", "scratch", "lottery"):
        key = f"{name.split(' ')[0]}->pruned"
        paths[key] = interpolate(states[name], states["pruned"], data, model=model,
                                 points=s.line_points)
        log(f"line {key}: barrier {paths[key].barrier():.4f}")
    line_seconds = time.perf_counter() - t_lines
    curve_histories = {}
    for label, degree, subspace in (("sparse quadratic", 2, "sparse"),
                                    ("sparse cubic", 3, "sparse"),
                                    ("dense quadratic", 2, "dense")):
        curve = BezierCurve.between(states["scratch"], states["pruned"], model=model,
                                    degree=degree, subspace=subspace, masks_a=masks,
                                    masks_b=masks)
        curve_histories[label] = train_curve(
            curve, model, data, epochs=s.curve_epochs, lr=s.curve_lr, momentum=s.momentum,
            weight_decay=s.weight_decay, batch_size=s.batch_size, seed=s.seed,
            progress=progress)
        key = f"scratch->pruned {label}"
        paths[key] = evaluate_curve(curve, model, data, points=s.curve_points)
        if subspace == "sparse":
            cps = curve.control_points()
            inside = all(not bool(cp[k][~m].any()) for cp in cps for k, m in masks.items())
            paths[key].info["inside_mask"] = inside
        log(f"curve {key}: barrier {paths[key].barrier():.4f}")
    elapsed = time.perf_counter() - start

    rows = _barrier_rows(paths)
    claims = _claims(final, paths)
    results = {
        "settings": asdict(s), "quick": quick, "seconds": elapsed,
        "line_eval_seconds": line_seconds, "pruning": {"begin": begin, "end": end,
                                                       "frequency": freq, "total_steps": total},
        "mask_sparsity": mask_sparsity(masks), "dataset": data.summary(), "final": final,
        "barriers": rows, "claims": claims, "curve_training": curve_histories,
        "paths": {k: v.to_dict() for k, v in paths.items()},
        "figures": ["figures/paths.png"],
    }
    with atomic.staged_directory(out) as stage:
        (stage / "figures").mkdir()
        _figure(paths, stage / "figures" / "paths.png")
        atomic.write_json(stage / "results.json", results)
        atomic.write_text(stage / "report.md", _report(results))
    log(text_table(rows, ["path", "loss_a", "loss_b", "max_loss", "barrier", "monotone"]))
    for c in claims:
        log(f"[{'held' if c['held'] else 'NOT held'}] {c['claim']}: {c['measured']}")
    log(f"wrote {out}/report.md ({elapsed:.0f} s)")
    return results


def _barrier_rows(paths: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, res in paths.items():
        tr = res.summary(MONOTONE_TOLERANCE)["train"]
        te = res.summary(MONOTONE_TOLERANCE)["test"]
        rows.append({"path": name, "loss_a": tr["loss_a"], "loss_b": tr["loss_b"],
                     "max_loss": tr["max_loss"], "barrier": tr["barrier"],
                     "max_rise": tr["max_rise"], "monotone": tr["monotone"],
                     "test_barrier": te["barrier"],
                     "min_test_acc": min(a for t, a in zip(res.t, res.accuracy("test"))
                                         if 0 <= t <= 1)})
    return rows


def _claims(final: list[dict[str, Any]], paths: dict[str, Any]) -> list[dict[str, Any]]:
    loss = {r["solution"]: r["train_loss"] for r in final}
    line = paths["scratch->pruned"].barrier()
    init = paths["init->pruned"]
    sq = paths["scratch->pruned sparse quadratic"].barrier()
    sc = paths["scratch->pruned sparse cubic"].barrier()
    dq = paths["scratch->pruned dense quadratic"].barrier()
    return [
        {"claim": "scratch ends with a higher training loss than pruned",
         "held": loss["scratch"] > loss["pruned"],
         "measured": f"scratch {loss['scratch']:.4f} vs pruned {loss['pruned']:.4f}"},
        {"claim": "the masked init -> pruned line is monotone (no rise above 1% of L(0))",
         "held": init.monotone("train", MONOTONE_TOLERANCE),
         "measured": f"largest rise {init.max_rise():.4f}, allowed "
                     f"{MONOTONE_TOLERANCE * init.loss()[init.t.index(0.0)]:.4f}"},
        {"claim": f"the scratch -> pruned line has a clear barrier (> {BARRIER_CLEAR})",
         "held": line > BARRIER_CLEAR, "measured": f"barrier {line:.4f}"},
        {"claim": "sparse quadratic and cubic curves keep a barrier "
                  f"(> {BARRIER_CLEAR}) smaller than the line's",
         "held": all(BARRIER_CLEAR < b < line for b in (sq, sc)),
         "measured": f"quadratic {sq:.4f}, cubic {sc:.4f}, line {line:.4f}"},
        {"claim": f"the dense quadratic curve's barrier is near 0 (<= {BARRIER_CLEAR})",
         "held": dq <= BARRIER_CLEAR,
         "measured": f"barrier {dq:.4f} ({dq / line:.1%} of the line's)" if line > 0
                     else f"barrier {dq:.4f}"},
    ]


def _figure(paths: dict[str, Any], path: Path) -> None:
    fig, axes = new_figure(2, size=(5.6, 4.0))
    styles = {"init->pruned": ("C0", "-"), "scratch->pruned": ("C3", "-"),
              "lottery->pruned": ("C2", "-"),
              "scratch->pruned sparse quadratic": ("C1", "--"),
              "scratch->pruned sparse cubic": ("C4", "--"),
              "scratch->pruned dense quadratic": ("k", ":")}
    for name, res in paths.items():
        color, ls = styles.get(name, (None, "-"))
        plot_path(axes[0][0], res, split="train", label=name, color=color, ls=ls)
        plot_path(axes[0][1], res, split="test", metric="accuracy", label=name, color=color,
                  ls=ls)
    axes[0][0].set_yscale("log")
    axes[0][0].set_title("training loss (t=1: pruned)", fontsize=9)
    axes[0][1].set_title("test accuracy", fontsize=9)
    axes[0][1].legend(fontsize=7)
    save_figure(fig, path)


def _report(r: dict[str, Any]) -> str:
    s = r["settings"]
    n_train = s["n_train"] or r["dataset"]["n_train"]
    lines = [
        "# Sparse energy landscape (Evci et al.)",
        "",
        f"LeNet-300-100 on MNIST ({n_train} training images{' (quick)' if r['quick'] else ''}),"
        f" SGD momentum {s['momentum']}, lr {s['lr']} ({s['lr_schedule']}), wd "
        f"{s['weight_decay']}, batch {s['batch_size']}, {s['epochs']} epochs. Pruned: gradual "
        f"magnitude pruning (cubic) to {s['sparsity']:.0%} from step {r['pruning']['begin']} to "
        f"{r['pruning']['end']} every {r['pruning']['frequency']} of "
        f"{r['pruning']['total_steps']}; scratch and lottery retrain its mask (mask sparsity "
        f"{r['mask_sparsity']:.4f}) from a new init and from the original init.",
        "",
        "## Final solutions (full-batch evaluation)",
        "",
        markdown_table(r["final"], ["solution", "train_loss", "train_accuracy", "test_loss",
                                    "test_accuracy"]),
        "",
        "## Paths (t=0: the other solution, t=1: pruned; training loss)",
        "",
        f"Lines: {s['line_points']} points, t from -0.2 to 1.2. Curves: {s['curve_points']} "
        f"points, trained {s['curve_epochs']} epochs (SGD lr {s['curve_lr']}, one t ~ U(0,1) "
        "per minibatch). Barrier B = max_t [L(t) - ((1-t) L(0) + t L(1))] over t in [0, 1]; "
        f"monotone: no rise above {MONOTONE_TOLERANCE:.0%} of L(0).",
        "",
        markdown_table(r["barriers"], ["path", "loss_a", "loss_b", "max_loss", "barrier",
                                       "max_rise", "monotone", "test_barrier", "min_test_acc"]),
        "",
        "![paths](figures/paths.png)",
        "",
        "## Claims, as measured",
        "",
    ]
    for c in r["claims"]:
        lines.append(f"- **{'held' if c['held'] else 'did not hold'}**: {c['claim']} "
                     f"({c['measured']})")
    lines += ["", f"Total time: {r['seconds']:.0f} s.", ""]
    return "\n".join(lines)


__all__ = ["run", "settings", "Settings"]
