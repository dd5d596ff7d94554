"""Evci et al., "The Difficulty of Training Sparse Neural Networks" (METHODS.md section 3):
pruned, scratch and lottery solutions of LeNet-300-100 on MNIST sharing one 98% mask; the
straight lines init -> pruned, scratch -> pruned and lottery -> pruned; sparse quadratic and
cubic and dense quadratic Bezier curves between scratch and pruned.

Claims checked (train loss, as measured; declared in `CLAIMS` with thresholds fixed in this
file, not tuned to results, and judged by `prunelab.claims`; one training seed, so each is a
single measurement): scratch ends with a higher training loss than pruned; the line from the
masked init to the pruned solution is monotone (no rise above 1% of L(0)); the scratch ->
pruned line has a clear barrier (> BARRIER_CLEAR nats); the sparse quadratic and cubic curves
keep a barrier (> BARRIER_CLEAR) smaller than the line's; the dense quadratic curve's barrier
is near 0 (<= BARRIER_CLEAR).

Test-set firewall (`prunelab.firewall`): the learning rate is chosen at run time on a
validation split (the 98% GMP run at each rate of `lr_grid`, highest validation accuracy; it
was taken from a test-set sweep before), the choice is frozen, and only then is the test split
read (per-epoch test accuracy of the three runs, the final table, the paths), each read
recorded in results.json.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prunelab import atomic
from prunelab.claims import (
    Claim,
    Measured,
    claims_markdown,
    declare,
    judge_all,
    log_lines,
    single,
)
from prunelab.config import RunConfig, TrainConfig
from prunelab.data import Dataset
from prunelab.errors import DataError
from prunelab.firewall import Firewall
from prunelab.landscape.curves import BezierCurve, evaluate_curve, train_curve
from prunelab.landscape.paths import interpolate, plot_path
from prunelab.masks import mask_sparsity
from prunelab.models import build_model
from prunelab.report import (
    figure_title,
    markdown_table,
    method_color,
    new_figure,
    save_figure,
    text_table,
)
from prunelab.subruns import SubrunCache
from prunelab.threads import torch_threads
from prunelab.train import evaluate

BARRIER_CLEAR = 0.05  # nats of training loss: above is "a clear barrier", below is "near 0"
MONOTONE_TOLERANCE = 0.01  # fraction of L(0)
REF_TOTAL_STEPS, REF_BEGIN, REF_END, REF_FREQUENCY = 11_725, 3000, 7000, 100
VALIDATION_FRACTION = 1 / 6  # 10,000 of MNIST's 60,000 training images

_TRAIN_LOSS = "full-batch training loss (one training seed)"
CLAIMS = declare(
    Claim("scratch-vs-pruned", "scratch ends with a higher training loss than pruned",
          _TRAIN_LOSS, "scratch - pruned", ">", 0.0, "single", source="METHODS 3"),
    Claim("init-line-monotone", "the masked init -> pruned line is monotone (no rise above 1% "
          "of L(0))", f"{_TRAIN_LOSS} along the line", "largest rise / L(0)", "<=",
          MONOTONE_TOLERANCE, "single", source="METHODS 3"),
    Claim("line-barrier", "the scratch -> pruned line has a clear barrier", _TRAIN_LOSS,
          "barrier of the line (nats)", ">", BARRIER_CLEAR, "single", source="METHODS 3"),
    Claim("sparse-curves-barrier", "sparse quadratic and cubic Bezier curves keep a barrier",
          _TRAIN_LOSS, "min(barrier of the sparse quadratic, sparse cubic curve)", ">",
          BARRIER_CLEAR, "single", source="METHODS 3"),
    Claim("sparse-curves-below-line", "the sparse curves' barriers are smaller than the line's",
          _TRAIN_LOSS, "max(sparse curve barriers) - line barrier", "<", 0.0, "single",
          source="METHODS 3"),
    Claim("dense-curve", "the dense quadratic curve's barrier is near 0", _TRAIN_LOSS,
          "barrier of the dense quadratic curve", "<=", BARRIER_CLEAR, "single",
          source="METHODS 3"),
)


@dataclass
class Settings:
    """The recipe. METHODS: momentum 0.9, lr 0.2, wd 1e-4, batch 128, 25 epochs, pruning from
    step 3000 to 7000 every 100 steps; lr 0.2 is for raw pixels and prunelab standardises MNIST,
    so the learning rate is chosen on a validation split from `lr_grid` (the grid of the sweep
    in benchmarks/RESULTS.md, which picked 0.05 by test accuracy) unless `lr` is set.
    `curve_lr` None: the chosen learning rate."""

    n_train: int | None = None
    epochs: int = 25
    lr: float | None = None
    lr_grid: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)
    lr_schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    sparsity: float = 0.98
    curve_epochs: int = 10
    curve_lr: float | None = None
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


def _gmp_config(s: Settings, data: Dataset, lr: float) -> tuple[RunConfig, tuple[int, ...]]:
    """The pruned run's config at learning rate `lr` (pruning steps scaled to its length)."""
    train = TrainConfig(epochs=s.epochs, batch_size=s.batch_size, optimizer="sgd", lr=lr,
                        momentum=s.momentum, weight_decay=s.weight_decay,
                        lr_schedule=s.lr_schedule, seed=s.seed, eval_train=False,
                        checkpoint_epochs=False)
    total = s.epochs * math.ceil(data.n_train / s.batch_size)
    begin, end, freq = pruning_steps(total)
    cfg = RunConfig("mnist", {}, None, "lenet-300-100", {}, "gmp",
                    {"sparsity": s.sparsity, "begin": begin, "end": end, "frequency": freq,
                     "scope": "global"}, train)
    return cfg, (begin, end, freq, total)


def select_lr(s: Settings, data: Dataset, progress, log, cache: SubrunCache | None = None
              ) -> tuple[float, list[dict[str, Any]]]:
    """The learning rate of `s.lr_grid` whose 98% GMP run reaches the highest final accuracy on
    a validation split of the training set (the first of equals); never reads test data."""
    cache = cache or SubrunCache(None)
    val = Firewall.validation(data, VALIDATION_FRACTION, seed=s.seed)
    rows = []
    for lr in s.lr_grid:
        cfg, _ = _gmp_config(s, val, lr)
        res = cache.run(cfg, data=val, progress=progress)
        rows.append({"lr": lr, "val_accuracy": res.final["test_accuracy"],
                     "val_loss": res.final["test_loss"], "train_loss": res.final["train_loss"]})
        log(f"lr {lr}: validation accuracy {rows[-1]['val_accuracy']:.4f} ({val.n_train} "
            f"training / {val.n_test} validation images)")
    best = max(rows, key=lambda r: r["val_accuracy"])
    return best["lr"], rows


@torch_threads(1)  # the documented full runs used one thread; more only spin on a busy box
def run(out: Path, *, quick: bool = False, progress: bool | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Choose the learning rate on validation data, train the three solutions, evaluate the
    lines and curves, write report, results and figure into `out` atomically
    (single-threaded, the thread count restored after)."""
    s = settings(quick)
    cache = SubrunCache.for_output(out)  # a killed attempt's finished runs are read back
    start = time.perf_counter()
    fw = Firewall("sparse-landscape")
    try:
        data = fw.load("mnist", seed=s.seed)
    except DataError as exc:
        raise DataError(f"sparse-landscape needs MNIST: {exc}") from None
    if s.n_train is not None:
        data = data.subset_train(s.n_train, seed=s.seed)
    screen: list[dict[str, Any]] = []
    if s.lr is None:
        lr, screen = select_lr(s, data, progress, log, cache)
    else:
        lr = s.lr
    curve_lr = s.curve_lr if s.curve_lr is not None else lr
    rule = (f"highest validation accuracy of the {s.sparsity:.0%} GMP run over lr_grid "
            f"{list(s.lr_grid)} (validation: {VALIDATION_FRACTION:.3g} of the training set)"
            if screen else "lr given in the settings")
    fw.freeze(lr=lr, curve_lr=curve_lr, rule=rule)
    cfg, (begin, end, freq, total) = _gmp_config(s, data, lr)
    log(f"pruned: gradual magnitude pruning to {s.sparsity:.0%} at lr {lr}, steps {begin}->"
        f"{end} every {freq} of {total}, {data.n_train} training images")
    data = fw.test(data, "pruned (GMP), scratch and lottery training runs",
                   "test accuracy (each epoch)", count=3 * s.epochs)
    pruned = cache.run(cfg, data=data, progress=progress)
    masks = pruned.masks
    log("scratch and lottery retrains of the pruned mask")
    scratch = cache.retrain_from(cfg, masks, "scratch", data=data, progress=progress)
    lottery = cache.retrain_from(cfg, masks, "original",
                                 init_states={"step0": pruned.initial_state}, data=data,
                                 progress=progress)
    model = build_model("lenet-300-100", data.input_shape, data.num_classes)
    masked_init = {k: (v * masks[k] if k in masks else v.clone())
                   for k, v in pruned.initial_state.items()}
    states = {"init (masked)": masked_init, "pruned": pruned.final_state,
              "scratch": scratch.final_state, "lottery": lottery.final_state}
    fw.record("the four solutions (final table)", "test loss and accuracy", count=len(states))
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
    fw.record("three lines (points of each)", "test loss and accuracy", count=3 * s.line_points)
    for name in ("init (masked)", "scratch", "lottery"):
        key = f"{name.split(' ')[0]}->pruned"
        paths[key] = interpolate(states[name], states["pruned"], data, model=model,
                                 points=s.line_points)
        log(f"line {key}: barrier {paths[key].barrier():.4f}")
    line_seconds = time.perf_counter() - t_lines
    curve_histories = {}
    fw.record("three Bezier curves (points of each)", "test loss and accuracy",
              count=3 * s.curve_points)
    for label, degree, subspace in (("sparse quadratic", 2, "sparse"),
                                    ("sparse cubic", 3, "sparse"),
                                    ("dense quadratic", 2, "dense")):
        curve = BezierCurve.between(states["scratch"], states["pruned"], model=model,
                                    degree=degree, subspace=subspace, masks_a=masks,
                                    masks_b=masks)
        curve_histories[label] = train_curve(
            curve, model, data, epochs=s.curve_epochs, lr=curve_lr, momentum=s.momentum,
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
    verdicts = judge_all(CLAIMS, measure(final, paths))
    results = {
        "settings": asdict(s), "quick": quick, "seconds": elapsed, "lr": lr,
        "curve_lr": curve_lr, "lr_screen": screen,
        "line_eval_seconds": line_seconds, "pruning": {"begin": begin, "end": end,
                                                       "frequency": freq, "total_steps": total},
        "mask_sparsity": mask_sparsity(masks), "dataset": data.summary(), "final": final,
        "barriers": rows, "claims": [v.to_dict() for v in verdicts],
        "curve_training": curve_histories,
        "paths": {k: v.to_dict() for k, v in paths.items()},
        "figures": ["figures/paths.png"], **fw.to_results(),
    }
    with atomic.staged_directory(out) as stage:
        (stage / "figures").mkdir()
        _figure(paths, stage / "figures" / "paths.png",
                f"sparse-landscape{' (quick)' if quick else ''}: LeNet-300-100 on MNIST "
                f"({data.n_train} images), GMP to {s.sparsity:.0%}, lr {lr}, {s.epochs} epochs")
        atomic.write_json(stage / "results.json", results)
        atomic.write_text(stage / "report.md", _report(results, verdicts, fw))
    log(text_table(rows, ["path", "loss_a", "loss_b", "max_loss", "barrier", "monotone"]))
    for line in log_lines(verdicts, quick):
        log(line)
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


def measure(final: list[dict[str, Any]], paths: dict[str, Any]) -> dict[str, Measured]:
    """What each declared claim (`CLAIMS`) measured (training loss of the one seed run)."""
    loss = {r["solution"]: r["train_loss"] for r in final}
    line = paths["scratch->pruned"].barrier()
    init = paths["init->pruned"]
    sq = paths["scratch->pruned sparse quadratic"].barrier()
    sc = paths["scratch->pruned sparse cubic"].barrier()
    dq = paths["scratch->pruned dense quadratic"].barrier()
    l0 = abs(init.loss()[init.t.index(0.0)])
    return {
        "scratch-vs-pruned": single(loss["scratch"] - loss["pruned"],
                                    f"scratch {loss['scratch']:.4f} vs pruned "
                                    f"{loss['pruned']:.4f}"),
        "init-line-monotone": single(init.max_rise() / l0, f"largest rise "
                                     f"{init.max_rise():.4f} of L(0) {l0:.4f}"),
        "line-barrier": single(line),
        "sparse-curves-barrier": single(min(sq, sc), f"quadratic {sq:.4f}, cubic {sc:.4f}"),
        "sparse-curves-below-line": single(max(sq, sc) - line, f"line {line:.4f}"),
        "dense-curve": single(dq, f"{dq / line:.1%} of the line's" if line > 0 else ""),
    }


def _figure(paths: dict[str, Any], path: Path, title: str = "sparse-landscape") -> None:
    fig, axes = new_figure(2, size=(5.6, 4.0))
    # the colour of the run the path starts from (report.method_color); curves dashed
    styles = {"scratch->pruned sparse quadratic": "--", "scratch->pruned sparse cubic": "-.",
              "scratch->pruned dense quadratic": ":"}
    for name, res in paths.items():
        color, ls = method_color(name), styles.get(name, "-")
        plot_path(axes[0][0], res, split="train", label=name, color=color, ls=ls)
        plot_path(axes[0][1], res, split="test", metric="accuracy", label=name, color=color,
                  ls=ls)
    axes[0][0].set_yscale("log")
    axes[0][0].set_title("training loss (t=1: pruned)", fontsize=9)
    axes[0][1].set_title("test accuracy", fontsize=9)
    axes[0][1].legend(fontsize=7)
    figure_title(fig, title, caption="B: barrier, the largest gap between the path's loss "
                 "and the chord between its endpoints (dotted)")
    save_figure(fig, path)


def _report(r: dict[str, Any], verdicts, fw: Firewall) -> str:
    s = r["settings"]
    n_train = s["n_train"] or r["dataset"]["n_train"]
    screen = "; ".join(f"lr {x['lr']}: {x['val_accuracy']:.4f}" for x in r["lr_screen"])
    lines = [
        "# Sparse energy landscape (Evci et al.)",
        "",
        f"LeNet-300-100 on MNIST ({n_train} training images{' (quick)' if r['quick'] else ''}),"
        f" SGD momentum {s['momentum']}, lr {r['lr']} ({s['lr_schedule']}), wd "
        f"{s['weight_decay']}, batch {s['batch_size']}, {s['epochs']} epochs. Pruned: gradual "
        f"magnitude pruning (cubic) to {s['sparsity']:.0%} from step {r['pruning']['begin']} to "
        f"{r['pruning']['end']} every {r['pruning']['frequency']} of "
        f"{r['pruning']['total_steps']}; scratch and lottery retrain its mask (mask sparsity "
        f"{r['mask_sparsity']:.4f}) from a new init and from the original init.",
        "",
        (f"Learning rate chosen on a validation split ({VALIDATION_FRACTION:.3g} of the "
         f"training images) by the 98% GMP run's final validation accuracy: {screen}."
         if screen else "Learning rate given in the settings (no validation screen)."),
        "",
        "## Claims",
        "",
        claims_markdown(verdicts, r["quick"]),
        "",
        "## Test-set firewall",
        "",
        *fw.report_lines(),
        "",
        "## Final solutions (full-batch evaluation)",
        "",
        markdown_table(r["final"], ["solution", "train_loss", "train_accuracy", "test_loss",
                                    "test_accuracy"]),
        "",
        "## Paths (t=0: the other solution, t=1: pruned; training loss)",
        "",
        f"Lines: {s['line_points']} points, t from -0.2 to 1.2. Curves: {s['curve_points']} "
        f"points, trained {s['curve_epochs']} epochs (SGD lr {r['curve_lr']}, one t ~ U(0,1) "
        "per minibatch). Barrier B = max_t [L(t) - ((1-t) L(0) + t L(1))] over t in [0, 1]; "
        f"monotone: no rise above {MONOTONE_TOLERANCE:.0%} of L(0).",
        "",
        markdown_table(r["barriers"], ["path", "loss_a", "loss_b", "max_loss", "barrier",
                                       "max_rise", "monotone", "test_barrier", "min_test_acc"]),
        "",
        "![paths](figures/paths.png)",
        "",
        f"Total time: {r['seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


__all__ = ["run", "settings", "Settings"]
