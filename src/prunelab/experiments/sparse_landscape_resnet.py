"""The sparse energy landscape at the field's scale (Evci et al.; METHODS.md section 3) on a
residual BatchNorm network: ResNet-20 pruned by gradual magnitude pruning to 80 / 90 / 95%,
its mask retrained from scratch and from a rewind point (the lottery baseline for deep
networks, Frankle et al. 2020), the straight lines init -> pruned and scratch -> pruned at every
sparsity, and quadratic Bezier curves in the sparse and the dense subspace between scratch and
pruned at the middle sparsity, all with BatchNorm statistics recomputed at every point.

Settings: `--quick` is MNIST at width 0.25 on a 4,000-image subset (a CPU in minutes); the full
setting is CIFAR-10 at width 1 with the standard augmentation, meant for a GPU (`--device` is
not a reproduction option: it runs where `auto` finds CUDA). Without CIFAR-10 in the data
directory the full setting refuses in one line; the docs say what was and was not measured.

Claims (declared below; training loss of one seed per sparsity, so single measurements): at
each sparsity scratch ends above pruned, the masked init -> pruned line is monotone and the
scratch -> pruned line has a clear barrier; the sparse quadratic curve keeps a barrier and the
dense one is near 0. Choices: the learning rate is given in the settings (SGD 0.1, cosine, the
usual CIFAR ResNet recipe), no choice is made at run time, so the firewall freezes first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prunelab import atomic
from prunelab.claims import Claim, claims_markdown, declare, judge_all, log_lines, single
from prunelab.config import RunConfig, TrainConfig
from prunelab.data import Dataset
from prunelab.errors import DataError
from prunelab.experiments.sparse_landscape import (
    BARRIER_CLEAR,
    MONOTONE_TOLERANCE,
    _barrier_rows,
)
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
from prunelab.train import evaluate, resolve_device

_TRAIN_LOSS = "training loss on the evaluation subset (one seed)"


def _claims(sparsities: tuple[float, ...], curve_at: float) -> tuple[Claim, ...]:
    out: list[Claim] = []
    for s in sparsities:
        p = f"{s:.0%}"
        out += [
            Claim(f"scratch-vs-pruned-{p}", f"at {p}, scratch ends with a higher training loss "
                  "than pruned", _TRAIN_LOSS, "scratch - pruned", ">", 0.0, "single",
                  source="METHODS 3"),
            Claim(f"init-line-monotone-{p}", f"at {p}, the masked init -> pruned line is "
                  "monotone", _TRAIN_LOSS, "largest rise / L(0)", "<=", MONOTONE_TOLERANCE,
                  "single", source="METHODS 3"),
            Claim(f"line-barrier-{p}", f"at {p}, the scratch -> pruned line has a clear barrier",
                  _TRAIN_LOSS, "barrier of the line (nats)", ">", BARRIER_CLEAR, "single",
                  source="METHODS 3"),
        ]
    p = f"{curve_at:.0%}"
    out += [
        Claim(f"sparse-curve-barrier-{p}", f"at {p}, the sparse quadratic Bezier curve keeps a "
              "barrier", _TRAIN_LOSS, "barrier of the sparse quadratic curve", ">",
              BARRIER_CLEAR, "single", source="METHODS 3"),
        Claim(f"dense-curve-{p}", f"at {p}, the dense quadratic curve's barrier is near 0",
              _TRAIN_LOSS, "barrier of the dense quadratic curve", "<=", BARRIER_CLEAR,
              "single", source="METHODS 3"),
    ]
    return tuple(out)


SPARSITIES = (0.8, 0.9, 0.95)
CURVE_AT = 0.9
CLAIMS = declare(*_claims(SPARSITIES, CURVE_AT))


@dataclass
class Settings:
    """The recipe: SGD momentum 0.9, lr 0.1 (cosine), weight decay 1e-4, batch 128.

    GMP from 10% to 60% of training every `frequency` steps, global over every convolution but
    the stem (which stays dense with the classifier, as Gale et al. do); lottery rewinds to
    `rewind_fraction` of training; curves trained `curve_epochs` epochs at the same lr; paths
    evaluated on `eval_train` training and `eval_test` test images with BatchNorm statistics
    recomputed from `bn_samples` training images."""

    dataset: str = "cifar10"
    width: float = 1.0
    shortcut: str = "A"
    n_train: int | None = None
    epochs: int = 160
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    begin: float = 0.1
    end: float = 0.6
    frequency: int = 100
    rewind_fraction: float = 0.02
    curve_epochs: int = 20
    line_points: int = 15
    curve_points: int = 15
    eval_train: int = 5000
    eval_test: int = 5000
    bn_samples: int = 2048
    seed: int = 0


def settings(quick: bool) -> Settings:
    if quick:  # MNIST, width 0.25, 4k images, 3 epochs: minutes on a loaded 2-core CPU
        return Settings(dataset="mnist", width=0.25, n_train=4000, epochs=3, frequency=5,
                        curve_epochs=2, line_points=9, curve_points=9, eval_train=1000,
                        eval_test=1000, bn_samples=1024)
    return Settings()


def _config(s: Settings, data: Dataset, sparsity: float, rewind_step: int) -> RunConfig:
    train = TrainConfig(epochs=s.epochs, batch_size=s.batch_size, optimizer="sgd", lr=s.lr,
                        momentum=s.momentum, weight_decay=s.weight_decay, lr_schedule="cosine",
                        seed=s.seed, eval_train=False, checkpoint_epochs=False,
                        checkpoint_steps=[rewind_step], device="auto")
    return RunConfig(s.dataset, {}, None, "resnet20", {"width": s.width, "shortcut": s.shortcut},
                     "gmp", {"sparsity": sparsity, "begin": s.begin, "end": s.end,
                             "frequency": s.frequency, "scope": "global",
                             "keep_first_last": True}, train)


def _eval_subset(data: Dataset, s: Settings) -> Dataset:
    """The images the paths are evaluated on (and BatchNorm recomputed from)."""
    return Dataset(data.name, data.x_train[: s.eval_train], data.y_train[: s.eval_train],
                   data.x_test[: s.eval_test], data.y_test[: s.eval_test], data.num_classes)


@torch_threads(1)
def run(out: Path, *, quick: bool = False, progress: bool | None = None,
        log: Callable[[str], None] = print, settings_override: Settings | None = None
        ) -> dict[str, Any]:
    """Train pruned, scratch and lottery ResNet-20s at each sparsity, evaluate the lines and
    curves with BatchNorm recomputed, write report, results and figure into `out`."""
    s = settings_override or settings(quick)
    cache = SubrunCache.for_output(out)  # a killed attempt's finished runs are read back
    start = time.perf_counter()
    fw = Firewall("sparse-landscape-resnet")
    try:
        data = fw.load(s.dataset, seed=s.seed)
    except DataError as exc:
        raise DataError(f"sparse-landscape-resnet needs {s.dataset}: {exc}") from None
    if s.n_train is not None:
        data = data.subset_train(s.n_train, seed=s.seed)
    fw.freeze(lr=s.lr, rule="recipe given in the settings (no run-time choice)")
    steps_per_epoch = math.ceil(data.n_train / s.batch_size)
    total = s.epochs * steps_per_epoch
    rewind_step = max(1, round(s.rewind_fraction * total))
    data = fw.test(data, "pruned, scratch and lottery runs at each sparsity",
                   "test accuracy (each epoch)", count=3 * len(SPARSITIES) * s.epochs)
    sub = _eval_subset(data, s)
    model = build_model("resnet20", data.input_shape, data.num_classes, width=s.width,
                        shortcut=s.shortcut)
    device = resolve_device("auto")
    finals: list[dict[str, Any]] = []
    paths: dict[str, Any] = {}
    states_at: dict[float, dict[str, Any]] = {}
    for sparsity in SPARSITIES:
        cfg = _config(s, data, sparsity, rewind_step)
        log(f"{sparsity:.0%}: GMP, then scratch and lottery (rewind to step {rewind_step} of "
            f"{total}) on {data.n_train} {s.dataset} images")
        pruned = cache.run(cfg, data=data, progress=progress)
        masks = pruned.masks
        scratch = cache.retrain_from(cfg, masks, "scratch", data=data, progress=progress)
        key = f"step{rewind_step}"
        lottery = cache.retrain_from(cfg, masks, f"rewind:{rewind_step}it",
                                     init_states={key: pruned.checkpoints[key]}, data=data,
                                     progress=progress)
        masked_init = {k: (v * masks[k] if k in masks else v.clone())
                       for k, v in pruned.initial_state.items()}
        states = {"init (masked)": masked_init, "pruned": pruned.final_state,
                  "scratch": scratch.final_state, "lottery": lottery.final_state}
        states_at[sparsity] = {"states": states, "masks": masks}
        for name, state in states.items():
            model.load_state_dict(state)
            tr = evaluate(model.to(device), sub.x_train, sub.y_train)
            te = evaluate(model, data.x_test, data.y_test)
            finals.append({"sparsity": sparsity, "solution": name, "train_loss": tr["loss"],
                           "train_accuracy": tr["accuracy"], "test_loss": te["loss"],
                           "test_accuracy": te["accuracy"],
                           "mask_sparsity": mask_sparsity(masks)})
        for name in ("init (masked)", "scratch", "lottery"):
            label = f"{sparsity:.0%} {name.split(' ')[0]}->pruned"
            paths[label] = interpolate(states[name], states["pruned"], sub, model=model,
                                       points=s.line_points, bn="recompute",
                                       bn_samples=s.bn_samples, device=device)
            log(f"line {label}: barrier {paths[label].barrier():.4f}")
    fw.record("the solutions at each sparsity (final table)", "test loss and accuracy",
              count=4 * len(SPARSITIES))
    fw.record("lines (points of each, test subset)", "test loss and accuracy",
              count=3 * len(SPARSITIES) * (s.line_points + 2))
    curve_histories = {}
    at = states_at[CURVE_AT]
    for subspace in ("sparse", "dense"):
        curve = BezierCurve.between(at["states"]["scratch"], at["states"]["pruned"], model=model,
                                    degree=2, subspace=subspace, masks_a=at["masks"],
                                    masks_b=at["masks"])
        label = f"{CURVE_AT:.0%} scratch->pruned {subspace} quadratic"
        curve_histories[label] = train_curve(curve, model, data, epochs=s.curve_epochs,
                                             lr=s.lr, momentum=s.momentum,
                                             weight_decay=s.weight_decay,
                                             batch_size=s.batch_size, seed=s.seed,
                                             progress=progress)
        paths[label] = evaluate_curve(curve, model, sub, points=s.curve_points,
                                      bn="recompute", bn_samples=s.bn_samples)
        log(f"curve {label}: barrier {paths[label].barrier():.4f}")
    fw.record("two Bezier curves (points of each, test subset)", "test loss and accuracy",
              count=2 * s.curve_points)
    elapsed = time.perf_counter() - start
    rows = _barrier_rows(paths)
    verdicts = judge_all(CLAIMS, measure(finals, paths))
    results = {
        "settings": asdict(s), "quick": quick, "seconds": elapsed, "sparsities": SPARSITIES,
        "curve_at": CURVE_AT, "rewind_step": rewind_step, "total_steps": total,
        "device": str(device), "dataset": data.summary(), "final": finals, "barriers": rows,
        "claims": [v.to_dict() for v in verdicts], "curve_training": curve_histories,
        "paths": {k: v.to_dict() for k, v in paths.items()},
        "figures": ["figures/paths.png"], **fw.to_results(),
    }
    with atomic.staged_directory(out) as stage:
        (stage / "figures").mkdir()
        _figure(paths, stage / "figures" / "paths.png", s)
        atomic.write_json(stage / "results.json", results)
        atomic.write_text(stage / "report.md", _report(results, verdicts, fw))
    log(text_table(rows, ["path", "loss_a", "loss_b", "barrier", "monotone"]))
    for line in log_lines(verdicts, quick):
        log(line)
    log(f"wrote {out}/report.md ({elapsed:.0f} s)")
    return results


def measure(finals: list[dict[str, Any]], paths: dict[str, Any]) -> dict[str, Any]:
    """What each declared claim measured."""
    out: dict[str, Any] = {}
    for sparsity in SPARSITIES:
        p = f"{sparsity:.0%}"
        loss = {r["solution"]: r["train_loss"] for r in finals if r["sparsity"] == sparsity}
        init = paths[f"{p} init->pruned"]
        l0 = abs(init.loss()[init.t.index(0.0)])
        out[f"scratch-vs-pruned-{p}"] = single(loss["scratch"] - loss["pruned"],
                                               f"scratch {loss['scratch']:.4f} vs pruned "
                                               f"{loss['pruned']:.4f}")
        out[f"init-line-monotone-{p}"] = single(init.max_rise() / l0,
                                                f"largest rise {init.max_rise():.4f} of L(0) "
                                                f"{l0:.4f}")
        out[f"line-barrier-{p}"] = single(paths[f"{p} scratch->pruned"].barrier())
    p = f"{CURVE_AT:.0%}"
    out[f"sparse-curve-barrier-{p}"] = single(
        paths[f"{p} scratch->pruned sparse quadratic"].barrier())
    out[f"dense-curve-{p}"] = single(paths[f"{p} scratch->pruned dense quadratic"].barrier())
    return out


def _figure(paths: dict[str, Any], path: Path, s: Settings) -> None:
    fig, axes = new_figure(len(SPARSITIES), size=(4.2, 3.6))
    for i, sparsity in enumerate(SPARSITIES):
        ax = axes[0][i]
        p = f"{sparsity:.0%} "
        for name, res in paths.items():
            if not name.startswith(p):
                continue
            kind = name[len(p):]  # coloured by the run it starts from; barriers marked (B)
            plot_path(ax, res, split="train", label=kind, color=method_color(kind),
                      ls={"sparse quadratic": "--", "dense quadratic": ":"}.get(
                          kind.partition(" ")[2], "-"))
        ax.set_yscale("log")
        ax.set_title(f"{sparsity:.0%}: training loss, BN recomputed (t=1 pruned)", fontsize=7)
        ax.legend(fontsize=6)
    figure_title(fig, f"sparse-landscape-resnet: ResNet-20 (width {s.width:g}) on {s.dataset}",
                 f"{s.epochs} epochs, lr {s.lr}", caption="B: barrier above the chord between "
                 "the endpoints' losses (dotted)")
    save_figure(fig, path)


def _report(r: dict[str, Any], verdicts, fw: Firewall) -> str:
    s = r["settings"]
    lines = [
        "# Sparse energy landscape on ResNet-20 (Evci et al., at the field's scale)",
        "",
        f"ResNet-20 (width {s['width']:g}, option-{s['shortcut']} shortcuts) on {s['dataset']} "
        f"({r['dataset']['n_train']} training images{', quick' if r['quick'] else ''}), SGD "
        f"momentum {s['momentum']}, lr {s['lr']} (cosine), wd {s['weight_decay']}, batch "
        f"{s['batch_size']}, {s['epochs']} epochs ({r['total_steps']} steps) on {r['device']}. "
        f"Pruned: GMP (cubic) from {s['begin']:.0%} to {s['end']:.0%} of training every "
        f"{s['frequency']} steps, global over all convolutions but the stem (the stem and the "
        f"classifier stay dense, as in Gale et al.); scratch retrains the mask from a new init, "
        f"lottery from the weights at step {r['rewind_step']} (rewinding). BatchNorm is never "
        f"pruned; its statistics are recomputed from {s['bn_samples']} training images at "
        f"every point of every path; paths are evaluated on {s['eval_train']} training and "
        f"{s['eval_test']} test images.",
        "",
        "## Claims",
        "",
        claims_markdown(verdicts, r["quick"]),
        "",
        "## Test-set firewall",
        "",
        *fw.report_lines(),
        "",
        "## Final solutions",
        "",
        markdown_table(r["final"], ["sparsity", "solution", "train_loss", "train_accuracy",
                                    "test_loss", "test_accuracy"]),
        "",
        "## Paths (t=0: the other solution, t=1: pruned; training loss)",
        "",
        "Barrier B = max_t [L(t) - ((1-t) L(0) + t L(1))] over t in [0, 1].",
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


__all__ = ["run", "settings", "Settings", "CLAIMS"]
