"""Bernoulli-gate variational pruning on MNIST (Guenter & Sideris): LeNet-300-100 and LeNet-5
(Caffe 20-50-800-500) grown from starting widths x1, x2, x4 over several seeds.

For every run: the final architecture (units per hidden layer), test error, parameters and
FLOPs of the final deterministic network, training FLOPs saved by shrinking during training,
and whether every gate ended in {0, 1}. Robustness: coefficient of variation of the final total
units and spread of the test error across seeds and starting widths. Dense runs of the x1
network with the same recipe over `dense_seeds` (full: 5, quick: 2) give the reference error,
the recipe's own seed-to-seed error spread (the noise floor against which the Bernoulli runs'
spread can be read) and the wall-time reference (mean over the seeds run both ways). Every run
records the test examples it misclassifies, and the robustness table splits the variance of
the errors into test-set sampling (examples flipping independently at their observed rates,
`prunelab.seed_noise`) and the rest. Every x1 run also gets a scratch twin (plan key
`scratch`, on by default): its final hidden widths trained from a fresh initialisation with
the same recipe and seed (with gated inputs, the same input features kept by a fixed mask), so
the report can say what the gates' search is worth over training the small network alone, and
how much error spread the small network has by itself. The
published structured baselines (METHODS.md section 5) are compared on hidden units by default:
our gates sit on hidden units and filters, so in the main runs the input layer (784 pixels) is
not pruned, and LeNet-5's fc input width is (conv2 filters kept) x 16 positions. The papers'
own configuration counts the input units (L0-sep's 266-88-33 keeps 266 of 784 pixels), so the
plan also trains LeNet-300-100 at x1 with the inputs gated (`gated_seeds`, options
`gated_options`: `GATED_OPTIONS`, whose `feature_pi` was chosen on a validation split); those
runs are judged against the published 1.8% and 266-88-33 per layer, inputs counted, and stay
out of the robustness and scratch statistics of the main (ungated) runs.

Claims are declared in `CLAIMS` (per model) and judged by `prunelab.claims`: the x1 error and
unit targets by a bootstrap of the mean over seeds (LeNet-300-100: the published 1.8% and
266-88-33 per layer on the input-gated runs, the project's earlier 2.0% and 121 hidden units
on the main runs), the wall-time and scratch-twin comparisons paired by seed, each needing 10
seeds at the full setting; robustness (main runs) is the run-to-run SD of the test error
against the SD test-set sampling alone would give (<= 1.25x) and the CV of the units (<= 10%);
the earlier error-spread <= 0.3 target is retired (docs/claims-history.md). The method
options were chosen before the run on a validation split (`METHOD_OPTIONS`, `GATED_OPTIONS`),
so the test-set firewall (`prunelab.firewall`) is frozen at the start and records every run's test
evaluation.

`--quick`: LeNet-300-100 only, a 10,000-example training subset, 20 epochs, seeds 0-1 at x1 and
seed 0 at x2, x4 and x1 with gated inputs (about 1 CPU-minute, single-threaded). Full: both
models, 60,000 examples, seeds 0-9 at x1 and 0-4 at x2 and x4, dense seeds 0-9, LeNet-300-100
at x1 with gated inputs over seeds 0-9 (LeNet-300-100 about 40 CPU-minutes;
LeNet-5 hours on a laptop CPU; minutes on a GPU with `PRUNELAB_DEVICE=cuda`).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab import atomic
from prunelab.claims import (
    Claim,
    Measured,
    Verdict,
    claims_markdown,
    declare,
    judge_all,
    log_lines,
    missing,
    paired,
    samples,
    single,
)
from prunelab.config import TrainConfig
from prunelab.errors import ConfigError
from prunelab.firewall import Firewall
from prunelab.masks import sparsity_report
from prunelab.methods.base import PruningMethod
from prunelab.methods.bernoulli import BernoulliGating
from prunelab.methods.magnitude import FixedMask
from prunelab.models import mlp
from prunelab.report import figure_title, markdown_table, new_figure, save_figure, text_table
from prunelab.seed_noise import error_variance_split, misclassified
from prunelab.shrink import architecture, from_architecture, kept_input_mask
from prunelab.subruns import SubrunCache, stored_subruns
from prunelab.threads import torch_threads
from prunelab.train import Trainer, preload_optimizers

# Method options used for both models (see methods/bernoulli.py for their meaning). Chosen on
# a validation split (50k/10k of MNIST's training set, LeNet-300-100), never the test set:
# warmup 0.25 made the final size independent of the start width (x1/x2/x4: 141/131/120 on a
# 10k subset vs 288/199/131 without); pi 0.2 with theta_init 0.5 (below theta* = 1 - pi) gave a
# lower training objective than theta_init 0.75 and, unlike penalty_scale 15, decided gates;
# gamma_final 20 over the last quarter decided the gates still stochastic (x2: 12 -> 0).
# A later search on the same split (seeds 0-1 at x1 and x4, then 7 runs for the best; rule
# fixed beforehand: lowest mean validation error at <= 115 mean units, kept only if >= 0.05
# points better) kept these values: mean validation error 2.15% at 107 units here; theta_init
# 0.7, pi 0.25, penalty_scale 25 bought error with 122-143 units; warmup 0.15/0.35 and
# gamma_ramp 0.15 were worse; prior_sigma 0.3 tied (2.15%, 108); Adam lr 2e-3 (a training
# option, not a method one) gave 2.11% at 103 units, under the 0.05 margin. A later screen
# (x1 and x4, seeds 0-1, 2.21% at 103 units with these values) also kept them: the gamma ramp
# ending at 75% or 60% of training kept 128 or 145 units (ineligible, and x1 kept far more
# than x4); 40 epochs with lr_theta halved gave 2.18% at 97 units (docs/bernoulli.md).
METHOD_OPTIONS: dict[str, Any] = {
    "estimator": "st", "pi": 0.2, "gamma": 2.0, "penalty_scale": 30.0, "theta_init": 0.5,
    "threshold": 0.01, "lr_theta": 0.3, "weight_prior": "gaussian", "prior_sigma": 1.0,
    "warmup": 0.25, "gamma_final": 20.0, "gamma_ramp": 0.25,
    # the Gaussian prior's gradient added before each step: the same objective, ~7% faster
    "gaussian_prior_as": "gradient",
    # the gate prior's gradient added in the theta update: the same updates bit for bit
    "gate_prior_as": "gradient",
}
# The input-gated x1 runs (LeNet-300-100 with its 784 input pixels gated too, the
# configuration the papers compare: L0-sep's 266-88-33 counts 266 pixels). feature_pi, the
# input gates' own prior, was chosen on a validation split, never the test set (session 4,
# 2026-11-21, commit 0a2c97a): MNIST's training set split 50k/10k (`validation=1/6`, seed 0,
# stratified), x1, seeds 0-1, the rest of METHOD_OPTIONS unchanged; rule fixed before the
# runs: mean inputs + hidden units <= 367 (5% under L0-sep's 387), every gate decided, then
# the lowest mean validation error. feature_pi 0.3 kept 196-198 inputs + 116-118 hidden units
# (validation error 2.50/2.69%); 0.4 kept 295-321 + 106 (ineligible; 2.27/2.40%); 0.45 kept
# 394-399 + 100-102 (ineligible; 2.29/2.44%); ungated, the same seeds 2.21/2.31%. The per-layer
# limit declared since issue 20 item 5 (inputs <= 266) picks the same value from that screen:
# 0.3 is the only screened value under 266 inputs (0.4 and 0.45 keep >= 295). Not re-screened
# since: its test error (2.29% over seeds 0-4) had been seen, so a new search now would be one
# made after a test result.
GATED_OPTIONS: dict[str, Any] = {**METHOD_OPTIONS, "gate_inputs": True, "feature_pi": 0.3}
BASELINES = {
    "lenet-300-100": [("L0-sep", [266, 88, 33], 1.8), ("BC-GNJ", [278, 98, 13], 1.8)],
    "lenet5": [("L0-sep", [9, 18, 65, 25], 1.0), ("BC-GNJ", [8, 13, 88, 13], 1.0)],
}
PUBLISHED_ERROR = {"lenet-300-100": 1.8, "lenet5": 1.0}  # L0-sep / BC-GNJ (METHODS.md 5)
# the x1 error claims of the main runs (inputs not gated): LeNet-5 at the published 1.0%,
# LeNet-300-100 at the project's earlier 2.0% (the published 1.8% is judged on the gated runs)
TARGETS = {"lenet-300-100": 2.0, "lenet5": 1.0}
L0_SEP_LIMITS = [266, 88, 33]  # inputs, first hidden, second hidden: the gated runs' limits
LENET5_LIMIT = [20, 50, 150, 50]
SD_RATIO_LIMIT = 1.25  # run-to-run error SD / the SD of test-set sampling alone
CV_LIMIT = 0.10  # coefficient of variation of the final hidden units
SEEDS_FULL = 10


def _model_claims(kind: str) -> list[Claim]:
    x1 = f"{kind} x1 runs"
    quick = kind == "lenet-300-100"  # quick runs LeNet-300-100 on a 10k subset only
    if kind == "lenet-300-100":
        gated = f"{kind} x1 runs with the inputs gated (seeds 0-9)"
        out = [
            Claim(f"{kind}:error", f"{kind}, inputs not gated: x1 test error <= "
                  f"{TARGETS[kind]}% (the project's earlier target; the published "
                  f"{PUBLISHED_ERROR[kind]}% is judged on the input-gated runs)",
                  f"test error (%) of the {x1}, inputs not gated", "mean over seeds", "<=",
                  TARGETS[kind], "bootstrap_mean", n=SEEDS_FULL, quick_expected=False,
                  source="the project's target before issue 20 item 5"),
            Claim(f"{kind}:units", f"{kind}, inputs not gated: fewer hidden units than "
                  "L0-sep's 88-33 (121)", f"hidden units of the {x1}, inputs not gated",
                  "mean over seeds", "<", 121.0, "bootstrap_mean", n=SEEDS_FULL,
                  quick_expected=False, source="METHODS 5"),
            Claim(f"{kind}:error-gated", f"{kind}, inputs gated (the papers' configuration): "
                  f"x1 test error <= {PUBLISHED_ERROR[kind]}% (published L0-sep, BC-GNJ)",
                  f"test error (%) of the {gated}", "mean over seeds", "<=",
                  PUBLISHED_ERROR[kind], "bootstrap_mean", n=SEEDS_FULL, quick_expected=False,
                  source="issue 20 item 5; METHODS 5 (L0-sep 266-88-33 and BC-GNJ at 1.8%)"),
            Claim(f"{kind}:widths-gated", f"{kind}, inputs gated: no more units than L0-sep's "
                  "266-88-33 in any layer, inputs counted",
                  f"mean inputs, first and second hidden units of the {gated}",
                  "largest of mean inputs / 266, mean first hidden / 88, mean second hidden / "
                  "33", "<=", 1.0, "single", quick_expected=False,
                  source="issue 20 item 5; METHODS 5"),
            Claim(f"{kind}:units-with-inputs", f"{kind}, inputs gated: fewer units in total "
                  "than L0-sep's 266-88-33 (387), inputs counted",
                  f"inputs + hidden units of the {gated}", "mean over seeds", "<", 387.0,
                  "bootstrap_mean", n=SEEDS_FULL, quick_expected=False, source="METHODS 5"),
        ]
    else:
        out = [Claim(f"{kind}:error", f"{kind}, fc inputs not gated: x1 test error <= "
                     f"{TARGETS[kind]}% (published L0-sep, BC-GNJ)", f"test error (%) of the "
                     f"{x1}", "mean over seeds", "<=", TARGETS[kind], "bootstrap_mean",
                     n=SEEDS_FULL, quick_expected=False, source="METHODS 5; issue 20 item 5"),
               Claim(f"{kind}:widths", f"{kind}: at most 20-50-150-50 units",
                     "mean x1 widths (conv1, conv2, fc inputs, fc hidden)",
                     "largest width / its limit", "<=", 1.0, "single",
                     quick_expected=False, source="METHODS 5")]
    main = "the main runs (x1, x2, x4; inputs not gated)"
    out += [
        Claim(f"{kind}:units-cv", f"{kind}: the final size is robust across seeds and start "
              f"widths", f"final hidden units of {main}", "coefficient of variation", "<=",
              CV_LIMIT, "single", quick_expected=False, source="METHODS 5; issue 20 item 5"),
        Claim(f"{kind}:error-sd", f"{kind}: the test error varies across runs no more than "
              "test-set sampling explains", f"test errors of {main}",
              "SD / SD if test examples flip independently (prunelab.seed_noise)", "<=",
              SD_RATIO_LIMIT, "single", quick_expected=False,
              source="issue 20 item 5 (replaces the error spread <= 0.3 target)"),
        Claim(f"{kind}:decided", f"{kind}: every theta in {{0, 1}} (within 1e-3) at the end of "
              "training", "gates still stochastic before the final rounding, every run "
              "(inputs gated or not)", "count", "<=", 0.0, "single", quick_expected=quick,
              source="METHODS 5"),
        Claim(f"{kind}:wall-time", f"{kind}: training wall time below dense training of the "
              "start network", f"seconds per run, {x1} (inputs not gated) paired with the "
              "dense run of the same seed", "x1 - dense", "<", 0.0, "paired_bootstrap",
              n=SEEDS_FULL, quick_expected=False, source="METHODS 5"),
        Claim(f"{kind}:vs-scratch", f"{kind}: the Bernoulli x1 network (inputs not gated) "
              "beats its architecture trained from scratch", "test error (%), each x1 run "
              "paired with its scratch twin (same widths, recipe and seed)", "gated - scratch",
              "<", 0.0, "paired_bootstrap", n=SEEDS_FULL, quick_expected=False,
              source="Liu et al.'s scratch baseline"),
    ]
    return out


CLAIMS = declare(*[c for kind in ("lenet-300-100", "lenet5") for c in _model_claims(kind)])


def build(kind: str, factor: int, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """LeNet-300-100 or Caffe LeNet-5 with every hidden width multiplied by `factor`."""
    if kind == "lenet-300-100":
        return mlp(input_shape, num_classes, widths=(300 * factor, 100 * factor))
    c1, c2, h = 20 * factor, 50 * factor, 500 * factor
    side = ((input_shape[1] - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(input_shape[0], c1, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(c2 * side * side, h), nn.ReLU(), nn.Linear(h, num_classes),
    )


def published_widths(kind: str, widths: list[int], inputs: int | None = None) -> list[int]:
    """Our hidden widths in the papers' layout: MLP [inputs, h1, h2] (784 when the inputs are
    not gated); LeNet-5 [conv1, conv2, fc inputs (conv2 x 16 when not gated), fc hidden]."""
    if kind == "lenet-300-100":
        return [784 if inputs is None else inputs, *widths]
    return [widths[0], widths[1], widths[1] * 16 if inputs is None else inputs, widths[2]]


# --quick trains on 10,000 examples for 20 epochs: N is 6x smaller and there are 6x fewer
# steps than the full run, so penalty_scale is scaled by 1/6 (the same gate cost per example,
# penalty_scale / N) and lr_theta by 6 (the same total theta travel).
QUICK_OPTIONS: dict[str, Any] = {**METHOD_OPTIONS, "penalty_scale": 5.0, "lr_theta": 1.8}
QUICK_GATED_OPTIONS: dict[str, Any] = {**QUICK_OPTIONS, "gate_inputs": True, "feature_pi": 0.3}


def default_plan(quick: bool) -> dict[str, Any]:
    """Models, training subset, epochs, (width factor, seed) runs and method options of the
    main runs (inputs not gated), and the seeds and options of LeNet-300-100's x1 runs with
    the inputs gated (`gated_seeds`, `gated_options`)."""
    if quick:
        return {"models": ["lenet-300-100"], "n_train": 10000, "epochs": {"lenet-300-100": 20},
                "runs": [(1, 0), (1, 1), (2, 0), (4, 0)], "dense_seeds": [0, 1],
                "scratch": True, "options": QUICK_OPTIONS,
                "gated_seeds": [0], "gated_options": QUICK_GATED_OPTIONS}
    # 10 seeds at x1 (and dense, and x1 with gated inputs) for the paired and seed-mean
    # claims; 5 at x2 and x4
    return {"models": ["lenet-300-100", "lenet5"], "n_train": None,
            "epochs": {"lenet-300-100": 20, "lenet5": 12},
            "runs": [(1, s) for s in range(SEEDS_FULL)]
            + [(f, s) for f in (2, 4) for s in range(5)],
            "dense_seeds": list(range(SEEDS_FULL)), "scratch": True, "options": METHOD_OPTIONS,
            "gated_seeds": list(range(SEEDS_FULL)), "gated_options": GATED_OPTIONS}


def _check_plan(plan: dict[str, Any]) -> None:
    """Refuse, before any training, a plan the study cannot summarise."""
    if not any(int(factor) == 1 for factor, _ in plan["runs"]):
        # the claims, the comparison with the published baselines and the wall-time check
        # all read the x1 (start network) runs
        raise ConfigError(f"the plan's runs {plan['runs']} have no x1 run (width factor 1); "
                          "the study compares the x1 networks with the published baselines "
                          "and with dense training: add at least one (1, seed) run")
    processes = plan.get("processes", 1)
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ConfigError(f"the plan's processes must be an integer >= 1, got {processes!r}")
    if processes > 1 and "fork" not in multiprocessing.get_all_start_methods():
        raise ConfigError("the plan's processes > 1 needs the fork start method, which this "
                          "platform lacks: use processes=1")
    if plan["options"].get("gate_inputs"):
        raise ConfigError("the plan's main options gate the inputs; the main runs keep them "
                          "whole: gate them in the input-gated runs instead (plan keys "
                          "gated_seeds and gated_options)")
    if plan.get("gated_seeds") and not plan.get("gated_options", {}).get("gate_inputs"):
        raise ConfigError("the plan's gated_options must gate the inputs (gate_inputs=True) "
                          "for its input-gated runs (gated_seeds)")


def gated_widths(rows: list[dict[str, Any]], limits: list[int] = L0_SEP_LIMITS
                 ) -> dict[str, Any]:
    """Mean [inputs, hidden widths...] of input-gated runs against per-layer `limits`
    (L0-sep's 266-88-33): the mean widths, each one's ratio to its limit and the largest
    ratio, the statistic of the `widths-gated` claim (<= 1: no layer above its limit)."""
    if not rows:
        raise ValueError("no input-gated runs to average")
    layers = [[r["input_features"], *r["widths"]] for r in rows]
    if any(len(w) != len(limits) for w in layers):
        raise ValueError(f"each run needs {len(limits)} widths (inputs, hidden...), got "
                         f"{[len(w) for w in layers]}")
    means = [sum(col) / len(col) for col in zip(*layers)]
    ratios = [m / lim for m, lim in zip(means, limits)]
    return {"mean_widths": means, "ratios": ratios, "largest_ratio": max(ratios)}


def _train(kind: str, factor: int, seed: int, data, epochs: int, method: PruningMethod,
           device: str, progress: bool | None, chain: list[dict[str, Any]] | None = None
           ) -> tuple[Any, nn.Module, float]:
    """Train the x`factor` start network, or the `chain` (`prunelab.shrink.architecture`)
    instead, freshly initialised under `seed`."""
    torch.manual_seed(seed)
    model = (build(kind, factor, data.input_shape, data.num_classes) if chain is None
             else from_architecture(chain))
    cfg = TrainConfig(epochs=epochs, batch_size=100, optimizer="adam", lr=1e-3,
                      lr_schedule="cosine", seed=seed, eval_train=False,
                      checkpoint_epochs=False, device=device)
    trainer = Trainer(model, data, cfg, method, progress=progress)
    start = time.perf_counter()
    result = trainer.fit()
    return result, trainer.model, time.perf_counter() - start


def _run_row(kind, factor, seed, result, model, seconds, method, input_shape,
             mistakes: list[int] | None = None) -> dict[str, Any]:
    rep = sparsity_report(model, None, input_shape)["global"]
    s = method.summary()
    feats = set(s.get("feature_sites", []))
    widths = [w for n, w in s["final_widths"].items() if n not in feats]
    inputs = [w for n, w in s["final_widths"].items() if n in feats]
    return {
        "model": kind, "width": f"x{factor}", "seed": seed,
        "start": "-".join(str(w) for w in s["start_widths"].values()),
        "final": "-".join(str(w) for w in s["final_widths"].values()),
        "units": sum(widths),
        "input_features": inputs[0] if inputs else None,
        "test_error_pct": 100 * (1 - result.final["test_accuracy"]),
        "params": rep["params"], "flops": rep["flops_dense"],
        "train_flops_saved": s["train_flops_saved"],
        "undecided_at_end": s["undecided_at_end"],
        "max_undecided_distance": s["max_undecided_distance"],
        "empty_layer_events": len(s["empty_layer_events"]),
        "seconds": seconds,
        "widths": widths,
        "test_mistakes": mistakes,
    }


def _trajectory_figure(trajectories: dict[str, list[dict[str, Any]]], path: Path,
                       title: str = "bernoulli") -> None:
    n = sum(len([k for k in tr[0] if k != "step"]) for tr in trajectories.values())
    fig, axes = new_figure(ncols=max(n, 1), size=(4.0, 3.2))
    i = 0
    for kind, tr in trajectories.items():
        steps = [r["step"] for r in tr]
        for layer in [k for k in tr[0] if k != "step"]:
            ax = axes[0][i]
            vals = torch.tensor([r[layer] for r in tr])
            for j in range(vals.shape[1]):
                ax.plot(steps, vals[:, j].tolist(), lw=0.4, alpha=0.35,
                        color="tab:blue" if vals[-1, j] > 0.5 else "tab:red")
            ax.set_title(f"{kind} layer {layer} ({vals.shape[1]} units)", fontsize=8)
            ax.set_xlabel("step")
            ax.set_ylim(-0.03, 1.03)
            i += 1
    axes[0][0].set_ylabel("theta (blue: kept, red: removed)")
    figure_title(fig, title)
    save_figure(fig, path)


def _units_figure(rows: list[dict[str, Any]], path: Path, title: str = "bernoulli") -> None:
    kinds = sorted({r["model"] for r in rows})
    fig, axes = new_figure(ncols=len(kinds))
    for ax, kind in zip(axes[0], kinds):
        rs = [r for r in rows if r["model"] == kind]
        xs = [int(r["width"][1:]) for r in rs]
        ax.scatter(xs, [r["units"] for r in rs], label="final hidden units")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("starting width factor")
        ax.set_ylabel("final hidden units")
        ax2 = ax.twinx()
        ax2.scatter(xs, [r["test_error_pct"] for r in rs], marker="x", color="tab:red")
        ax2.set_ylabel("test error (%)", color="tab:red")
        ax.set_title(kind)
    figure_title(fig, title, caption="one point per run (seed x starting width)")
    save_figure(fig, path)


def _std(values: list[float]) -> float:
    """Sample standard deviation (0 for fewer than two values)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _error_stats(errs: list[float]) -> dict[str, float]:
    """Mean, spread (max - min) and SD of test errors in percent."""
    return {"error_mean_pct": sum(errs) / len(errs), "error_spread_pts": max(errs) - min(errs),
            "error_std_pts": _std(errs)}


def _spread(rows: list[dict[str, Any]]) -> dict[str, float]:
    units = [r["units"] for r in rows]
    mean = sum(units) / len(units)
    std = _std(units)
    return {"runs": len(rows), "units_mean": mean, "units_std": std,
            "units_cv": std / mean if mean else float("nan"),
            **_error_stats([r["test_error_pct"] for r in rows])}


def _dense_reference(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The first seed's dense run plus the test error and wall time of every dense seed: the
    recipe's own seed-to-seed noise, against which the Bernoulli runs' error spread can be
    read, and the wall-time reference for the x1 runs of the same seeds."""
    first = {k: v for k, v in runs[0].items() if k != "test_mistakes"}
    return {**first, **_per_seed(runs)}


def _per_seed(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Seeds, test errors, wall times and mistakes of several runs, with their error stats."""
    errs = [r["test_error_pct"] for r in runs]
    return {"seeds": [r["seed"] for r in runs], "seed_errors_pct": errs,
            "seed_seconds": [r["seconds"] for r in runs],
            "seed_test_mistakes": [r.get("test_mistakes") for r in runs], **_error_stats(errs)}


def _scratch_twin(kind: str, row: dict[str, Any], final: nn.Module, data, epochs: int,
                  device: str, progress: bool | None) -> dict[str, Any]:
    # `data` holds the test split: handed out by the run's frozen firewall
    """The run's final hidden widths trained from a fresh initialisation with the same recipe
    and seed (Liu et al.'s "scratch" baseline at the pruned architecture): what the gates'
    search is worth over simply training the small network. With gated inputs the twin keeps
    the same input features (a fixed mask on the columns `final` dropped)."""
    twin: PruningMethod = PruningMethod()
    if row["input_features"] is not None:
        twin = FixedMask(masks_in=kept_input_mask(final))
    res, model, secs = _train(kind, 1, row["seed"], data, epochs, twin, device, progress,
                              chain=architecture(final))
    return {"seed": row["seed"], "widths": row["widths"],
            "test_error_pct": 100 * (1 - res.final["test_accuracy"]),
            "bernoulli_error_pct": row["test_error_pct"], "seconds": secs,
            "test_mistakes": misclassified(model, data.x_test, data.y_test)}


def _scratch_reference(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Scratch twins of the x1 runs: their errors, and the Bernoulli runs' errors minus their
    twins' (negative: the gated network is better than its architecture trained alone)."""
    gaps = [r["bernoulli_error_pct"] - r["test_error_pct"] for r in runs]
    return {**_per_seed(runs), "widths": [r["widths"] for r in runs],
            "bernoulli_errors_pct": [r["bernoulli_error_pct"] for r in runs],
            "gap_pts": gaps, "gap_mean_pts": statistics.mean(gaps)}


def _job_title(kind: str, job: str, factor: int, seed: int, scratch: bool) -> str:
    """How a run is named in the firewall's record of test evaluations."""
    if job == "gated":
        return f"{kind} bernoulli x1 inputs gated seed {seed}"
    twin = " and its scratch twin" if job == "bernoulli" and factor == 1 and scratch else ""
    return f"{kind} {job} x{factor} seed {seed}{twin}"


def _job(kind: str, job: str, factor: int, seed: int, epochs: int, options: dict[str, Any],
         scratch: bool, device: str, progress: bool | None, data) -> dict[str, Any]:
    """One run of the plan on `data` (test split readable): {"dense": ...} for a dense run;
    {"row", "trajectory", "scratch"} for a Bernoulli run (the scratch twin trained after it
    when `scratch`). Every run seeds itself, so where it runs does not change it."""
    if job == "dense":
        res, model, secs = _train(kind, 1, seed, data, epochs, PruningMethod(), device, progress)
        rep = sparsity_report(model, None, data.input_shape)["global"]
        return {"dense": {"seed": seed, "test_error_pct": 100 * (1 - res.final["test_accuracy"]),
                          "params": rep["params"], "flops": rep["flops_dense"], "seconds": secs,
                          "test_mistakes": misclassified(model, data.x_test, data.y_test)}}
    method = BernoulliGating(n_train=data.n_train, **options)
    res, model, secs = _train(kind, factor, seed, data, epochs, method, device, progress)
    row = _run_row(kind, factor, seed, res, model, secs, method, data.input_shape,
                   misclassified(model, data.x_test, data.y_test))
    row["inputs_gated"] = job == "gated"
    return {"row": row, "trajectory": method.trajectory if factor == 1 and seed == 0 else None,
            "scratch": _scratch_twin(kind, row, model, data, epochs, device, progress)
            if scratch else None}


def _stored_job(spec: tuple, data, cache: SubrunCache) -> dict[str, Any]:
    """`_job`, or its result read back from `cache` (a finished run of an earlier, killed
    attempt at the same output)."""
    kind, job, factor, seed, epochs, options, scratch, device, _ = spec
    key = {"study": "bernoulli", "kind": kind, "job": job, "factor": factor, "seed": seed,
           "epochs": epochs, "options": options if job != "dense" else None,
           "scratch": scratch, "device": device, "data": data.name,
           "n_train": data.n_train, "n_test": data.n_test}
    return cache.get_or_run(key, lambda: _job(*spec, data))


_FORKED: tuple[Any, SubrunCache] | None = None  # what forked job processes inherit


def _forked_job(spec: tuple) -> dict[str, Any]:
    assert _FORKED is not None
    with torch_threads(1):
        return _stored_job(spec, *_FORKED)


def _map_jobs(specs: list[tuple], data, cache: SubrunCache, processes: int
              ) -> Iterator[dict[str, Any]]:
    """`_stored_job` over `specs` in order, in this process or in `processes` forked processes
    (one torch thread each; the data is inherited, not copied through a pipe)."""
    if processes <= 1:
        for spec in specs:
            yield _stored_job(spec, data, cache)
        return
    global _FORKED
    _ = cache.directory  # claimed here, before the processes that write into it are forked
    _FORKED = (data, cache)
    # in plan order: each seed's dense and x1 runs side by side, and the x1 runs (most of the
    # claims) finished first, should the study be stopped and continued later
    try:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            yield from pool.imap(_forked_job, specs)
    finally:
        _FORKED = None


def _schedule(dense_seeds: list[int], runs: list[tuple[int, int]]
              ) -> list[tuple[str, int, int]]:
    """Execution order: each dense seed next to the x1 Bernoulli run of the same seed, which
    of the two goes first alternating (so the wall-time comparison sees the same machine
    state, as the benchmark's interleaving does), then the remaining runs in plan order.
    Results do not depend on the order: every run seeds itself."""
    runs = [tuple(r) for r in runs]
    order: list[tuple[str, int, int]] = []
    for i, seed in enumerate(dense_seeds):
        pair = [("dense", 1, seed)] + ([("bernoulli", 1, seed)] if (1, seed) in runs else [])
        order += pair[::-1] if i % 2 else pair
    done = {(f, s) for job, f, s in order if job == "bernoulli"}
    return order + [("bernoulli", f, s) for f, s in runs if (f, s) not in done]


@torch_threads(1)  # these small models only lose time to intra-op threads
def run(out: Path, *, quick: bool = False, progress: bool | None = None,
        log: Callable[[str], None] = print, plan: dict[str, Any] | None = None,
        processes: int | None = None) -> dict[str, Any]:
    """Run the study and write report.md, results.json and figures/ into `out` atomically
    (`plan` overrides parts of `default_plan(quick)`, e.g. fewer runs); single-threaded, the
    thread count restored after. `processes` (or the plan key; default 1) trains that many
    runs at a time in forked processes, one torch thread each; the results are the same bit
    for bit, as every run seeds itself. Each finished run is kept (`prunelab.subruns`), so a
    killed attempt at the same `out` continues where it stopped."""
    plan = {**default_plan(quick), **(plan or {})}
    if processes is not None:
        plan["processes"] = processes
    _check_plan(plan)
    processes = plan.get("processes", 1)
    cache = SubrunCache.for_output(out)  # finished runs of a killed attempt are read back
    device = os.environ.get("PRUNELAB_DEVICE", "cpu")
    data_dir = os.environ.get("PRUNELAB_DATA")
    opts = {"n_train": plan["n_train"]} if plan["n_train"] else {}
    fw = Firewall("bernoulli")
    sealed = fw.load("mnist", data_dir=data_dir, seed=0, **opts)
    # nothing is chosen at run time: the options were chosen beforehand on a validation split
    gated_seeds = list(plan.get("gated_seeds") or [])
    fw.freeze(method_options=plan["options"],
              gated_options=plan.get("gated_options") if gated_seeds else None,
              note="no run-time choices; METHOD_OPTIONS and GATED_OPTIONS' feature_pi were "
              "chosen before the run on a 50k/10k validation split of the training set")
    preload_optimizers()  # keeps torch's one-time imports out of the first timed run
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    dense: dict[str, dict[str, Any]] = {}
    scratch: dict[str, dict[str, Any]] = {}
    trajectories: dict[str, list[dict[str, Any]]] = {}
    for kind in plan["models"]:
        epochs = plan["epochs"][kind]
        dense_runs, scratch_runs, gated_rows, by_run = [], [], [], {}
        jobs = _schedule(plan["dense_seeds"] or [0], plan["runs"])
        if kind == "lenet-300-100":  # the papers count input units for the MLP
            jobs += [("gated", 1, s) for s in gated_seeds]
        whats = [_job_title(kind, job, factor, seed, bool(plan.get("scratch")))
                 for job, factor, seed in jobs]
        # every test evaluation is recorded, in plan order, before the runs start
        data = None
        for what in whats:
            data = fw.test(sealed, what, "test error (each epoch; the last reported), "
                           "misclassified test examples")
        specs = [(kind, job, factor, seed, epochs,
                  plan["gated_options"] if job == "gated" else plan["options"],
                  job == "bernoulli" and factor == 1 and bool(plan.get("scratch")),
                  device, progress) for job, factor, seed in jobs]
        for (job, factor, seed), done in zip(jobs, _map_jobs(specs, data, cache, processes)):
            if job == "dense":
                dense_runs.append(done["dense"])
                log(f"{kind} dense x1 seed {seed}: error "
                    f"{dense_runs[-1]['test_error_pct']:.2f}% in {done['dense']['seconds']:.1f}s")
                continue
            row = done["row"]
            log(f"{kind} x{factor}{' inputs gated' if job == 'gated' else ''} seed {seed}: "
                f"{row['start']} -> {row['final']}, error {row['test_error_pct']:.2f}%, "
                f"training FLOPs saved {100 * row['train_flops_saved']:.0f}%, "
                f"{row['seconds']:.1f}s")
            if job == "gated":
                gated_rows.append(row)
                continue
            by_run[factor, seed] = row
            if factor == 1 and seed == 0:
                trajectories[kind] = done["trajectory"]
            if done.get("scratch") is not None:
                scratch_runs.append(done["scratch"])
                log(f"{kind} scratch {row['final']} seed {seed}: error "
                    f"{scratch_runs[-1]['test_error_pct']:.2f}%")
        dense[kind] = _dense_reference(dense_runs)
        if scratch_runs:
            scratch[kind] = _scratch_reference(scratch_runs)
        rows += [by_run[tuple(r)] for r in plan["runs"]] + gated_rows
    results = _summarise(plan, rows, dense, quick, time.perf_counter() - t0, sealed.n_train,
                         sealed.n_test, scratch)
    results.update(fw.to_results())
    with atomic.staged_directory(out) as stage:
        (stage / "figures").mkdir()
        title = (f"bernoulli{' (quick)' if quick else ''}: Bernoulli gates on MNIST "
                 f"({sealed.n_train} training images)")
        _trajectory_figure(trajectories, stage / "figures" / "theta_trajectories.png", title)
        _units_figure(_main(rows), stage / "figures" / "units_vs_start_width.png", title)
        atomic.write_json(stage / "results.json", results)
        atomic.write_text(stage / "report.md", _report(results))
    log(text_table(rows, ["model", "width", "seed", "inputs_gated", "final", "units",
                          "test_error_pct", "train_flops_saved", "undecided_at_end"]))
    for line in log_lines([Verdict.from_dict(c) for c in results["claims"]], quick):
        log(line)
    return results


def finished_so_far(out: Path, plan: dict[str, Any] | None = None, *, quick: bool = False
                    ) -> dict[str, Any]:
    """The study's summary (declared claims and all) over the runs a stopped or still running
    `run(out, plan=...)` has finished so far, read from its sub-run cache; nothing is trained
    or written. The plan's runs and dense seeds are cut to those finished; claims over runs
    not finished yet are judged on the ones that are (say so when quoting them)."""
    plan = {**default_plan(quick), **(plan or {})}
    cache = stored_subruns(out)
    by: dict[tuple[str, str, int, int], dict[str, Any]] = {}
    sizes = (None, None)
    for path in sorted(cache.glob("*.pt")):
        entry = torch.load(path, map_location="cpu", weights_only=False)
        key = entry["spec"]
        if key.get("study") == "bernoulli" and key["epochs"] == plan["epochs"].get(key["kind"]):
            by[key["kind"], key["job"], key["factor"], key["seed"]] = entry["result"]
            sizes = (key["n_train"], key["n_test"])
    rows, dense, scratch, runs = [], {}, {}, set()
    models = [k for k in plan["models"] if any(b[0] == k for b in by)]
    if not models:
        raise ConfigError(f"no finished runs of this plan under {cache}")
    for kind in models:
        done = [(f, s) for f, s in plan["runs"] if (kind, "bernoulli", f, s) in by]
        rows += [by[kind, "bernoulli", f, s]["row"] for f, s in done]
        rows += [by[kind, "gated", 1, s]["row"] for s in plan.get("gated_seeds") or []
                 if (kind, "gated", 1, s) in by]
        dense[kind] = _dense_reference([by[kind, "dense", 1, s]["dense"]
                                        for s in plan["dense_seeds"]
                                        if (kind, "dense", 1, s) in by])
        twins = [by[kind, "bernoulli", f, s]["scratch"] for f, s in done
                 if by[kind, "bernoulli", f, s].get("scratch")]
        if twins:
            scratch[kind] = _scratch_reference(twins)
        runs |= set(done)
    plan = {**plan, "models": models, "runs": [r for r in plan["runs"] if tuple(r) in runs]}
    seconds = sum(r["seconds"] for r in rows)
    out_res = _summarise(plan, rows, dense, quick, seconds, *sizes, scratch)
    out_res["finished_runs"] = sorted([list(k) for k in by])
    return out_res


def _variance_split(mistakes: list[list[int] | None], n_test: int | None
                    ) -> dict[str, float] | None:
    """`error_variance_split` of the runs' recorded mistakes; None when there are fewer than
    two runs or some run has none recorded (results written before they were)."""
    if not n_test or len(mistakes) < 2 or any(m is None for m in mistakes):
        return None
    return error_variance_split(mistakes, n_test)


def _main(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The main runs (inputs not gated): rows of results written before the input-gated runs
    existed have no `inputs_gated` key and are all main runs."""
    return [r for r in rows if not r.get("inputs_gated")]


def _gated_summary(gated: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The input-gated x1 runs in the papers' layout: seeds, errors, mean widths (inputs,
    hidden...) and their ratios to L0-sep's 266-88-33; None without such runs."""
    if not gated:
        return None
    g = gated_widths(gated)
    errs = [r["test_error_pct"] for r in gated]
    return {"seeds": [r["seed"] for r in gated], "errors_pct": errs,
            "x1_error_pct": sum(errs) / len(errs),
            "layout": [round(w) for w in g["mean_widths"]], **g,
            "undecided_at_end": sum(int(r["undecided_at_end"] or 0) for r in gated)}


def _summarise(plan, rows, dense, quick, seconds, n_train, n_test: int | None = None,
               scratch: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    measured: dict[str, Measured] = {}
    per_model = {}
    for kind in plan["models"]:
        rs = _main([r for r in rows if r["model"] == kind])
        gated = [r for r in rows if r["model"] == kind and r.get("inputs_gated")]
        x1 = [r for r in rs if r["width"] == "x1"]
        spread = _spread(rs)
        err = sum(r["test_error_pct"] for r in x1) / len(x1)
        units = sum(r["units"] for r in x1) / len(x1)
        widths = [sum(r["widths"][i] for r in x1) / len(x1) for i in range(len(x1[0]["widths"]))]
        layout = published_widths(kind, [round(w) for w in widths])
        base = BASELINES[kind]
        twins = (scratch or {}).get(kind)
        gsum = _gated_summary(gated)
        measured.update(_measure(kind, rs, x1, gated, spread, layout, dense[kind], twins,
                                 n_test))
        comp = [{"method": "Bernoulli gates (ours, x1 mean, inputs not gated)",
                 "architecture": "-".join(str(w) for w in layout),
                 "error_pct": err}]
        if gsum:
            comp.append({"method": f"Bernoulli gates (ours, x1 mean of {len(gated)} seeds, "
                                   "inputs gated)",
                         "architecture": "-".join(str(w) for w in gsum["layout"]),
                         "error_pct": gsum["x1_error_pct"]})
        comp += [{"method": f"{n} (published)", "architecture": "-".join(map(str, a)),
                  "error_pct": e} for n, a, e in base]
        comp.append({"method": f"dense start network (ours, mean of "
                               f"{len(dense[kind]['seeds'])} seeds)", "architecture": "-",
                     "error_pct": dense[kind]["error_mean_pct"]})
        if twins:
            comp.append({"method": f"x1 final widths trained from scratch (ours, mean of "
                                   f"{len(twins['seeds'])} seeds)",
                         "architecture": "-".join(str(w) for w in layout),
                         "error_pct": twins["error_mean_pct"]})
        per_model[kind] = {"spread": spread, "x1_error_pct": err, "x1_units": units,
                           "x1_layout": layout, "comparison": comp, "dense": dense[kind],
                           "scratch": twins, "gated": gsum}
    for name in CLAIMS.names:  # models the plan did not train
        if name.split(":")[0] not in plan["models"]:
            measured[name] = missing("model not in this run's plan")
    verdicts = judge_all(CLAIMS, measured)
    return {"quick": quick, "n_train": n_train, "n_test": n_test, "epochs": plan["epochs"],
            "method_options": plan["options"], "plan_runs": plan["runs"],
            "gated_options": plan.get("gated_options") if _gated_rows(rows) else None,
            "gated_seeds": [r["seed"] for r in _gated_rows(rows)], "runs": rows,
            "models": per_model,
            "claims": [v.to_dict() for v in verdicts], "seconds": seconds}


def _gated_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The input-gated runs among `rows`."""
    return [r for r in rows if r.get("inputs_gated")]


def _measure(kind, rs, x1, gated, spread, layout, dense, twins, n_test
             ) -> dict[str, Measured]:
    """What the declared claims (`CLAIMS`) of one model measured in this study: `rs` are its
    main runs (`x1` the x1 ones), `gated` its input-gated x1 runs."""
    out: dict[str, Measured] = {}
    out[f"{kind}:error"] = samples([r["test_error_pct"] for r in x1],
                                   f"x1 seeds {[r['seed'] for r in x1]}, inputs not gated")
    if kind == "lenet-300-100":
        out[f"{kind}:units"] = samples([r["units"] for r in x1], "inputs not gated (784)")
        if not gated:
            for claim in ("error-gated", "widths-gated", "units-with-inputs"):
                out[f"{kind}:{claim}"] = missing("no input-gated runs in this run's plan")
        else:
            g = gated_widths(gated)
            seeds = [r["seed"] for r in gated]
            out[f"{kind}:error-gated"] = samples([r["test_error_pct"] for r in gated],
                                                 f"inputs gated, seeds {seeds}")
            means = "-".join(f"{w:.1f}" for w in g["mean_widths"])
            ratios = ", ".join(f"{q:.2f}" for q in g["ratios"])
            out[f"{kind}:widths-gated"] = single(
                g["largest_ratio"], f"mean widths {means} (inputs, hidden); ratios to "
                f"266-88-33: {ratios}")
            out[f"{kind}:units-with-inputs"] = samples(
                [r["units"] + r["input_features"] for r in gated],
                f"mean {g['mean_widths'][0]:.1f} inputs + {sum(g['mean_widths'][1:]):.1f} "
                "hidden units")
    else:
        out[f"{kind}:widths"] = single(max(a / b for a, b in zip(layout, LENET5_LIMIT)),
                                       "mean widths " + "-".join(str(w) for w in layout))
    out[f"{kind}:units-cv"] = (
        single(spread["units_cv"], f"{spread['runs']} runs, mean units "
               f"{spread['units_mean']:.1f}") if spread["runs"] > 1
        else missing("one run: no spread"))
    split = _variance_split([r.get("test_mistakes") for r in rs], n_test)
    if split is None:
        out[f"{kind}:error-sd"] = missing("fewer than two runs, or no misclassified examples "
                                          "recorded")
    elif split["independent_std_pts"] == 0:
        out[f"{kind}:error-sd"] = missing("every run misclassifies the same examples")
    else:
        out[f"{kind}:error-sd"] = single(
            split["error_std_pts"] / split["independent_std_pts"],
            f"{len(rs)} runs: SD {split['error_std_pts']:.3f} points, test-set sampling alone "
            f"{split['independent_std_pts']:.3f}; error spread {spread['error_spread_pts']:.2f}")
    every = rs + gated
    far = max(r["max_undecided_distance"] or 0 for r in every)
    out[f"{kind}:decided"] = single(sum(int(r["undecided_at_end"] or 0) for r in every),
                                    f"{len(every)} runs; largest min(theta, 1 - theta) "
                                    f"{far:.3f}")
    # wall time over the seeds trained both ways (sequential runs in one process, each dense
    # seed next to its x1 run; benchmarks/bernoulli_training_time.py interleaves them)
    dense_secs = dict(zip(dense["seeds"], dense["seed_seconds"]))
    both = [r for r in x1 if r["seed"] in dense_secs]
    out[f"{kind}:wall-time"] = (
        paired([r["seconds"] for r in both], [dense_secs[r["seed"]] for r in both],
               f"x1 {statistics.mean(r['seconds'] for r in both):.1f}s vs dense "
               f"{statistics.mean(dense_secs[r['seed']] for r in both):.1f}s") if both
        else missing("no seed trained both ways"))
    out[f"{kind}:vs-scratch"] = (
        paired(twins["bernoulli_errors_pct"], twins["seed_errors_pct"]) if twins
        else missing("no scratch twins trained"))
    return out


def _robustness_rows(rows: list[dict[str, Any]], dense: dict[str, Any],
                     n_test: int | None = None, scratch: dict[str, Any] | None = None
                     ) -> list[dict]:
    """The report's robustness table: per starting width, all runs together (the study's
    claim), and the dense recipe's seeds for reference. With the runs' misclassified test
    examples and the test set size, each row also gives the SD the errors would have if every
    test example flipped independently at its observed rate (`prunelab.seed_noise`): the part
    of the spread that is test-set sampling. With scratch twins, a last row gives theirs."""
    def row(label: str, stats: dict[str, float], errs: list[float],
            mistakes: list[list[int] | None]) -> dict[str, Any]:
        units = stats.get("units_mean")
        split = _variance_split(mistakes, n_test)
        return {"runs": label, "n": len(errs),
                "units mean": "-" if units is None else f"{units:.1f}",
                "units CV %": "-" if units is None else f"{100 * stats['units_cv']:.1f}",
                "error mean %": f"{stats['error_mean_pct']:.2f}",
                "error min-max %": f"{min(errs):.2f}-{max(errs):.2f}",
                "error spread pts": f"{stats['error_spread_pts']:.2f}",
                "error SD pts": f"{stats['error_std_pts']:.3f}",
                "SD if examples flip independently": "-" if split is None
                else f"{split['independent_std_pts']:.3f}",
                "between-run share of variance %": _share_text(split)}

    out = []
    widths = sorted({r["width"] for r in rows}, key=lambda w: int(w.lstrip("x")))
    groups = [(f"Bernoulli {w}", [r for r in rows if r["width"] == w]) for w in widths]
    groups.append(("Bernoulli, all", rows))
    for label, group in groups:
        out.append(row(label, _spread(group), [r["test_error_pct"] for r in group],
                       [r.get("test_mistakes") for r in group]))
    out.append(row("dense x1 (start network)", dense, dense["seed_errors_pct"],
                   dense.get("seed_test_mistakes", [])))
    if scratch:
        out.append(row("x1 final widths from scratch", scratch, scratch["seed_errors_pct"],
                       scratch["seed_test_mistakes"]))
    return out


def _share_text(split: dict[str, float] | None) -> str:
    """The between-run share of the error variance for the robustness table: "too few runs"
    where it cannot be estimated (one run, no recorded mistakes) or where the estimate is
    negative, which only the sampling error of an estimate from few runs produces."""
    if split is None:
        return "too few runs"
    share = split["between_run_var_share"]
    if math.isnan(share):  # the errors are all equal
        return "-"
    return "too few runs" if share < 0 else f"{100 * share:.0f}"


def _scratch_lines(scratch: dict[str, Any] | None) -> list[str]:
    """The report's paragraph on the scratch twins (none when the study trained none)."""
    if not scratch:
        return []
    pairs = "; ".join(
        f"seed {s} {'-'.join(map(str, w))}: {b:.2f}% gated vs {e:.2f}% scratch"
        for s, w, b, e in zip(scratch["seeds"], scratch["widths"],
                              scratch["bernoulli_errors_pct"], scratch["seed_errors_pct"]))
    return [f"Scratch twins (each x1 run's final hidden widths trained dense from a fresh "
            f"initialisation with the same recipe and seed): {pairs}. Gated minus scratch: "
            f"{scratch['gap_mean_pts']:+.2f} points on average (negative: the gated network is "
            f"better than its architecture trained alone).", ""]


def _gated_lines(gsum: dict[str, Any] | None, gated: list[dict[str, Any]]) -> list[str]:
    """The report's section on the input-gated x1 runs (none when the study trained none)."""
    if not gsum:
        return []
    ratios = ", ".join(f"{q:.2f}" for q in gsum["ratios"])
    means = "-".join(f"{w:.1f}" for w in gsum["mean_widths"])
    return ["Input-gated x1 runs (the papers' configuration: the 784 inputs gated and counted; "
            "their limits are L0-sep's 266-88-33 per layer and its 1.8% error): mean widths "
            f"{means} (inputs, first and second hidden), ratios to the limits {ratios}; mean "
            f"test error {gsum['x1_error_pct']:.2f}%.", "",
            markdown_table(gated, ["seed", "start", "final", "input_features", "units",
                                   "test_error_pct", "params", "train_flops_saved",
                                   "undecided_at_end", "seconds"]), ""]


ROBUSTNESS_COLUMNS = ["runs", "n", "units mean", "units CV %", "error mean %", "error min-max %",
                      "error spread pts", "error SD pts", "SD if examples flip independently",
                      "between-run share of variance %"]


def _report(res: dict[str, Any]) -> str:
    lines = ["# Bernoulli-gate variational pruning (Guenter & Sideris) on MNIST", ""]
    mode = ("quick (10,000-example subset, fewer seeds and widths)" if res["quick"]
            else "full data")
    lines += [f"Mode: {mode}; epochs {res['epochs']}; training examples {res['n_train']}; "
              f"(width factor, seed) runs {res['plan_runs']}; total time {res['seconds']:.0f}s.",
              "",
              f"Method options (main runs): `{res['method_options']}`", "",
              *([f"Input-gated x1 runs, seeds {res['gated_seeds']}, options: "
                 f"`{res['gated_options']}`", ""] if res.get("gated_options") else []),
              "## Claims", "",
              claims_markdown([Verdict.from_dict(c) for c in res["claims"]], res["quick"])]
    if "test_evaluations" in res:
        fw = res["selection"]
        lines += ["", "## Test-set firewall", "",
                  f"Choices frozen before any test data was read: `{fw['choices']}`. "
                  f"{len(res['test_evaluations'])} test evaluations afterwards, one per "
                  "training run, listed in results.json `test_evaluations`."]
    for kind, m in res["models"].items():
        main = _main([r for r in res["runs"] if r["model"] == kind])
        lines += ["", f"## {kind}", "", "Comparison (published numbers from METHODS.md, which "
                  "count the input units; ours as measured, the main runs gating hidden units "
                  "only):", "",
                  markdown_table(m["comparison"], ["method", "architecture", "error_pct"]), "",
                  *_gated_lines(m.get("gated"), [r for r in _gated_rows(res["runs"])
                                                 if r["model"] == kind]),
                  "Main runs (inputs not gated):", "",
                  markdown_table(main,
                                 ["width", "seed", "start", "final", "units", "test_error_pct",
                                  "params", "flops", "train_flops_saved", "undecided_at_end",
                                  "seconds"]), "",
                  f"Dense x1 over seeds {m['dense']['seeds']}: test errors "
                  f"{', '.join(f'{e:.2f}%' for e in m['dense']['seed_errors_pct'])} (spread "
                  f"{m['dense']['error_spread_pts']:.2f}, SD {m['dense']['error_std_pts']:.2f} "
                  "points).", "", *_scratch_lines(m.get("scratch")),
                  "Robustness (units: gated hidden units; spread = max - min test error; "
                  "'SD if examples flip independently': the SD of the errors if each test "
                  "example were misclassified independently at the rate observed over these "
                  "runs, i.e. test-set sampling alone; the between-run share is the rest of "
                  "the variance, what runs being better or worse as a whole contribute, "
                  "estimated from few runs and so noisy: 'too few runs' where it cannot be "
                  "estimated or the estimate is negative):", "",
                  markdown_table(_robustness_rows(main, m["dense"], res.get("n_test"),
                                                  m.get("scratch")),
                                 ROBUSTNESS_COLUMNS)]
    lines += ["", "## Figures", "",
              "Theta of every unit of the x1 seed-0 run (blue: kept, red: removed):", "",
              "![theta trajectories](figures/theta_trajectories.png)", "",
              "Final hidden units and test error against the starting width:", "",
              "![units vs start width](figures/units_vs_start_width.png)", ""]
    return "\n".join(lines)
