"""Sparse training from scratch against pruning (issue 22 item 4; METHODS.md section 7): the
trainability gap at matched sparsity, with each method's training FLOPs, on MNIST.

Methods, each at every sparsity and seed, one recipe for all: pruned (`gmp`, Zhu & Gupta's
cubic schedule, global magnitude), lottery (the GMP mask, weights rewound to an early step of
the GMP run, `prunelab.retrain`), scratch (the GMP mask, a new init), random ERK mask,
SNIP / GraSP / SynFlow (global scores, masks fixed at init), SET and RigL (ERK budgets), and a
small dense network with the sparse networks' parameter count; a dense network of full size is
the reference. Analyses: the line from each method's solution to the pruned one (barrier in
training loss, `landscape.paths.interpolate`) and, on the first model, RigL's landscape finding
(Evci et al. 2020, appendix; Evci et al. 2019): the scratch -> pruned line has a barrier, a
quadratic Bezier curve confined to the mask keeps one, a dense one does not
(`landscape.curves`); mask overlap (Jaccard) across seeds and methods
(`landscape.mask_overlap`); gradient flow at initialisation per mask (`landscape.gradflow`).

Protocol (`Settings`; sources): SGD momentum 0.9, weight decay 1e-4, batch 128, cosine learning
rate, 20 epochs (full): the recipe of the sparse-landscape reproduction (METHODS.md section 3,
Evci et al. 2019) with its GMP schedule (steps 3000-7000 every 100 of 11,725, scaled to the
run's length). RigL / SET: drop fraction 0.3, cosine decay, last update at 75% of training,
ERK (Evci et al. 2020). Lottery: rewind to 2% of training (Frankle et al. 2020 rewind early;
LeNets are stable from step 0). Two choices are made on a validation split (1/6 of the
training images) through the test-set firewall, per model, seed `seeds[0]`, at
`screen_sparsity`: the learning rate of `lr_grid` with the highest mean validation accuracy of
GMP, random ERK and RigL, then the RigL / SET update interval of `interval_grid` with the
highest RigL validation accuracy at that rate. Then the selection is frozen and every run reads
the test split (each epoch), recorded in results.json.

Claims (`CLAIMS`, declared here before any run, judged by `prunelab.claims`): RigL closes at
least half the gap between random ERK and GMP (paired over seeds; the per-seed statistic is
(err_random - err_rigl) - 0.5 (err_random - err_gmp), i.e. RigL below the midpoint of the two:
the ratio (err_random - err_rigl) / (err_random - err_gmp) explodes when a seed's gap is near
0, the difference does not); SNIP / GraSP / SynFlow at 90% on LeNet-5 at most 0.5 points worse
than GMP (paired; being better counts as within); the landscape claims on LeNet-300-100 at the
landscape sparsity. Paired claims need 5 seeds (the issue's >= 5) and so are not expected at
the quick scale (3 seeds).

Each finished sub-run (final weights, masks, metrics, FLOPs) is stored by the hash of its spec
in `.<out>.subruns/` next to the output directory (`prunelab.subruns.SubrunCache.get_or_run`):
a run interrupted and started again skips what it finished. The store is removed after a
successful run unless `Settings.keep_subruns`.

`--quick`: LeNet-300-100 at 90% and 98%, seeds 0-2, a 10,000-image training subset, 6 epochs
(7-11 CPU-minutes single-threaded on a shared 2-core machine). `medium_settings()` (Python
only): LeNet-300-100 at 90/95/98%, seeds 0-4, 10,000 images, 10 epochs (about 16 minutes).
Full: LeNet-300-100 and LeNet-5 at 80/90/95/98%, seeds 0-4, 60,000 images, 20 epochs:
LeNet-300-100 about 5 CPU-hours, LeNet-5 about 2-3 CPU-days on this machine (one LeNet-5 run
is ~16 minutes). ResNet-20 (`models=(..., "resnet20")`, first and last layer kept dense) is in
the plan but off by default: on this CPU one MNIST run takes hours.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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
from prunelab.config import RunConfig, TrainConfig
from prunelab.data import Dataset
from prunelab.errors import ConfigError, DataError
from prunelab.experiments.sparse_landscape import BARRIER_CLEAR, pruning_steps
from prunelab.firewall import Firewall
from prunelab.flops import phases_from_trace, training_flops
from prunelab.landscape.curves import BezierCurve, evaluate_curve, train_curve
from prunelab.landscape.gradflow import gradient_flow
from prunelab.landscape.mask_overlap import jaccard, overlap_matrix, random_jaccard
from prunelab.landscape.paths import interpolate, plot_path
from prunelab.masks import Masks, prunable_parameters
from prunelab.methods import build_method
from prunelab.methods.base import PruningMethod
from prunelab.methods.magnitude import GradualMagnitude
from prunelab.models import build_model, count_parameters
from prunelab.report import markdown_table, new_figure, save_figure
from prunelab.retrain import retrain_config, retrain_from
from prunelab.subruns import SubrunCache, spec_key
from prunelab.threads import torch_threads
from prunelab.train import prepare
from prunelab.train import run as train_run

STUDY = "sparse-training"
VALIDATION_FRACTION = 1 / 6  # 10,000 of MNIST's 60,000 training images
METHODS = ("gmp", "lottery", "scratch", "random", "snip", "grasp", "synflow", "set", "rigl",
           "small-dense")
LABELS = {"gmp": "pruned (GMP)", "lottery": "lottery (rewind)", "scratch": "scratch (GMP mask)",
          "random": "random ERK", "snip": "SNIP", "grasp": "GraSP", "synflow": "SynFlow",
          "set": "SET", "rigl": "RigL", "small-dense": "small dense (equal params)",
          "dense": "dense (full size)"}
MASKED = ("gmp", "random", "snip", "grasp", "synflow", "set", "rigl")  # own masks (overlap)
PATH_METHODS = ("scratch", "lottery", "random", "snip", "grasp", "synflow", "set", "rigl")
INIT_METHODS = ("snip", "grasp", "synflow")
RIGL_SPARSITIES = (0.9, 0.95)
LANDSCAPE_MODEL = "lenet-300-100"
SEEDS_NEEDED = 5

# Per model: options, the first/last-layer policy, and how its small dense twin is built.
MODEL_SPECS: dict[str, dict[str, Any]] = {
    "lenet-300-100": {"options": {}, "keep_first_last": False},
    "lenet5": {"options": {}, "keep_first_last": False},
    "resnet20": {"options": {"width": 1.0}, "keep_first_last": True},
}


def _rigl_claims() -> list[Claim]:
    out = []
    for model in ("lenet-300-100", "lenet5"):
        for s in RIGL_SPARSITIES:
            out.append(Claim(
                f"rigl-gap:{model}:{s:g}", f"{model} at {s:.0%}: RigL closes at least half of "
                "the gap between random ERK and GMP",
                "test error (points), per seed", "(err_random - err_rigl) - 0.5 x "
                "(err_random - err_gmp)", ">", 0.0, "paired_bootstrap", n=SEEDS_NEEDED,
                quick_expected=False, source="issue 22 Numbers; Evci et al. 2020"))
    return out


def _init_claims() -> list[Claim]:
    return [Claim(f"{m}-vs-gmp:lenet5:0.9", f"lenet5 at 90%: {LABELS[m]} within 0.5 points of "
                  "GMP", "test error (points), per seed", f"err_{m} - err_gmp", "<=", 0.5,
                  "paired_bootstrap", n=SEEDS_NEEDED, quick_expected=False,
                  source="issue 22 Numbers; Lee et al. 2019, Wang et al. 2020, Tanaka et al. "
                  "2020") for m in INIT_METHODS]


_LOSS = "training loss (nats) along the path"
CLAIMS = declare(
    *_rigl_claims(),
    *_init_claims(),
    Claim("static-line-barrier", "lenet-300-100 at the landscape sparsity: the line from "
          "static sparse training (scratch, GMP mask) to the pruned solution has a barrier",
          f"{_LOSS}, per seed", "barrier of scratch -> pruned", ">", BARRIER_CLEAR,
          "bootstrap_mean", n=SEEDS_NEEDED, quick_expected=False,
          source="METHODS 3 and 7; Evci et al. 2019, 2020"),
    Claim("sparse-curve-barrier", "lenet-300-100: a quadratic Bezier curve confined to the "
          "mask keeps a barrier between scratch and pruned", f"{_LOSS} (seed 0)",
          "barrier of the sparse quadratic curve", ">", BARRIER_CLEAR, "single",
          source="METHODS 7; Evci et al. 2020 appendix"),
    Claim("dense-curve", "lenet-300-100: a dense quadratic Bezier curve between scratch and "
          "pruned has no barrier", f"{_LOSS} (seed 0)", "barrier of the dense quadratic "
          "curve", "<=", BARRIER_CLEAR, "single", source="METHODS 7; Evci et al. 2020 appendix"),
    Claim("rigl-line-below-static", "lenet-300-100: RigL's solution meets a lower barrier on "
          "its line to the pruned one than static sparse training's", f"{_LOSS}, per seed",
          "barrier(rigl -> pruned) - barrier(scratch -> pruned)", "<", 0.0, "paired_bootstrap",
          n=SEEDS_NEEDED, quick_expected=False,
          source="METHODS 7 ('RigL's solutions escape'), our test of it"),
)


@dataclass
class Settings:
    """What runs (see the module docstring for the sources of the recipe)."""

    name: str = "full"
    models: tuple[str, ...] = ("lenet-300-100", "lenet5")
    sparsities: tuple[float, ...] = (0.8, 0.9, 0.95, 0.98)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    methods: tuple[str, ...] = METHODS
    n_train: int | None = None
    epochs: int = 20
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"
    lr: float | None = None  # None: chosen per model on validation from lr_grid
    # 0.4 added after the first quick run chose 0.2, the grid's top, on validation
    lr_grid: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.4)
    screen_methods: tuple[str, ...] = ("gmp", "random", "rigl")
    screen_sparsity: float = 0.9
    update_interval: int = 100  # RigL / SET during the lr screen (Evci et al. 2020)
    interval_grid: tuple[int, ...] = (50, 100, 200)  # () : keep update_interval
    drop_fraction: float = 0.3
    dst_end: float = 0.75
    rewind_fraction: float = 0.02
    landscape_sparsity: float = 0.98
    line_points: int = 29
    path_train_samples: int = 10_000
    curves: bool = True
    curve_epochs: int = 10
    curve_points: int = 61
    gradflow_batch: int = 256
    jacobian_samples: int = 8
    keep_subruns: bool = False
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)


def settings(quick: bool) -> Settings:
    if quick:
        return Settings(name="quick", models=("lenet-300-100",), sparsities=(0.9, 0.98),
                        seeds=(0, 1, 2), n_train=10_000, epochs=6, update_interval=50,
                        interval_grid=(25, 50, 100), line_points=15, path_train_samples=5000,
                        curve_epochs=3, curve_points=21, jacobian_samples=4)
    return Settings()


def medium_settings() -> Settings:
    """A reduced setting that tests the LeNet-300-100 RigL claims with 5 seeds in about an hour
    of one CPU core: 90% and 95% (and 98% for the landscape), a 10,000-image subset,
    10 epochs."""
    return Settings(name="medium", models=("lenet-300-100",), sparsities=(0.9, 0.95, 0.98),
                    n_train=10_000, epochs=10, interval_grid=(25, 50, 100), line_points=21,
                    curve_epochs=5, curve_points=31)


# ----------------------------------------------------------------------------- building blocks


def _counts(masks: Masks | None) -> dict[str, int]:
    return {n: int(m.sum()) for n, m in (masks or {}).items()}


class _TracedGMP(GradualMagnitude):
    """GMP recording each layer's kept count whenever its mask shrinks, so its training FLOPs
    can be counted step by step."""

    def attach(self, ctx) -> None:
        super().attach(ctx)
        self.trace: list[tuple[int, dict[str, int]]] = [(0, _counts(self.masks))]

    def after_step(self, step: int) -> None:
        super().after_step(step)
        if self.schedule.is_update_step(step):
            counts = _counts(self.masks)
            if counts != self.trace[-1][1]:
                self.trace.append((step, counts))


def small_dense_model(model: str, options: dict[str, Any], input_shape: tuple[int, ...],
                      num_classes: int, target: int) -> tuple[str, dict[str, Any], int]:
    """(registry name, options, parameters) of the dense network of `model`'s shape whose
    parameter count is closest to `target`: every hidden width scaled by one factor, found by
    bisection (LeNet-300-100 -> `mlp` widths, LeNet-5 and ResNet-20 -> their `width`)."""
    name, opts, n = _small_dense(model, json.dumps(options, sort_keys=True),
                                 tuple(input_shape), int(num_classes), int(target))
    return name, json.loads(opts), n


@functools.cache
def _small_dense(model: str, options_json: str, input_shape: tuple[int, ...],
                 num_classes: int, target: int) -> tuple[str, str, int]:
    options = json.loads(options_json)

    def make(w: float) -> tuple[str, dict[str, Any]]:
        if model == "lenet-300-100":
            return "mlp", {"widths": [max(1, round(300 * w)), max(1, round(100 * w))]}
        if model in ("lenet5", "resnet20"):
            return model, {**options, "width": w * float(options.get("width", 1.0))}
        raise ConfigError(f"no small dense twin for model '{model}'")

    def params(w: float) -> int:
        name, opts = make(w)
        return count_parameters(build_model(name, input_shape, num_classes, **opts))

    lo, hi = 1e-3, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if params(mid) <= target else (lo, mid)
    w = min((lo, hi), key=lambda v: abs(params(v) - target))
    name, opts = make(w)
    return name, json.dumps(opts, sort_keys=True), params(w)


def sparse_param_count(model: nn.Module, sparsity: float, keep_first_last: bool) -> int:
    """Parameters left in `model` when `sparsity` of its prunable weights are zero (every
    method keeps exactly round((1 - s) N) of the N prunable weights)."""
    n = sum(p.numel() for p in prunable_parameters(model, keep_first_last=keep_first_last)
            .values())
    return count_parameters(model) - n + round((1.0 - sparsity) * n)


@dataclass
class ModelPlan:
    """Per-model quantities fixed before the runs: steps, the GMP schedule, rewind step."""

    model: str
    options: dict[str, Any]
    keep_first_last: bool
    total_steps: int
    gmp: tuple[int, int, int]
    rewind_step: int


def model_plan(s: Settings, model: str, data: Dataset) -> ModelPlan:
    if model not in MODEL_SPECS:
        raise ConfigError(f"sparse-training runs {', '.join(MODEL_SPECS)}; got '{model}'")
    spec = MODEL_SPECS[model]
    total = s.epochs * math.ceil(data.n_train / s.batch_size)
    return ModelPlan(model, {**spec["options"], **s.model_options.get(model, {})},
                     spec["keep_first_last"], total, pruning_steps(total),
                     max(1, round(s.rewind_fraction * total)))


def _train_config(s: Settings, lr: float, seed: int, checkpoint_steps=()) -> TrainConfig:
    return TrainConfig(epochs=s.epochs, batch_size=s.batch_size, optimizer="sgd", lr=lr,
                       momentum=s.momentum, weight_decay=s.weight_decay,
                       lr_schedule=s.lr_schedule, seed=seed, eval_train=False,
                       checkpoint_epochs=False, checkpoint_steps=list(checkpoint_steps))


def method_config(s: Settings, plan: ModelPlan, method: str, sparsity: float, seed: int,
                  lr: float, interval: int, data: Dataset) -> RunConfig:
    """The run config of a method that trains by itself (not lottery / scratch)."""
    kfl = {"keep_first_last": True} if plan.keep_first_last else {}
    model, model_opts = plan.model, dict(plan.options)
    checkpoints: tuple[int, ...] = ()
    if method == "gmp":
        begin, end, freq = plan.gmp
        name, opts = "gmp", {"sparsity": sparsity, "begin": begin, "end": end,
                             "frequency": freq, "scope": "global", **kfl}
        checkpoints = (plan.rewind_step,)
    elif method == "random":
        name, opts = "random", {"sparsity": sparsity, "budget": "erk", **kfl}
    elif method in INIT_METHODS:
        name, opts = method, {"sparsity": sparsity, "scope": "global", **kfl}
    elif method in ("set", "rigl"):
        name, opts = method, {"sparsity": sparsity, "budget": "erk",
                              "drop_fraction": s.drop_fraction, "update_interval": interval,
                              "end": s.dst_end, **kfl}
    elif method == "small-dense":
        probe = build_model(plan.model, data.input_shape, data.num_classes, **plan.options)
        target = sparse_param_count(probe, sparsity, plan.keep_first_last)
        model, model_opts, _ = small_dense_model(plan.model, plan.options, data.input_shape,
                                                 data.num_classes, target)
        name, opts = "dense", {}
    elif method == "dense":
        name, opts = "dense", {}
    else:
        raise ConfigError(f"unknown sparse-training method '{method}'")
    return RunConfig("mnist", {}, None, model, model_opts, name, opts,
                     _train_config(s, lr, seed, checkpoints))


def _flops(cfg: RunConfig, data: Dataset, phases, dense_gradient_steps: int,
           plan: ModelPlan, steps: int) -> dict[str, Any]:
    """Training FLOPs of a run, also as a fraction of dense training of the full model (the
    plan's; built first, as the runs stored so far did, so the generators end where they did)."""
    reference = build_model(plan.model, data.input_shape, data.num_classes, **plan.options)
    model = build_model(cfg.model, data.input_shape, data.num_classes, **cfg.model_options)
    out = training_flops(model, data.input_shape, cfg.train.batch_size, phases,
                         dense_gradient_steps=dense_gradient_steps)
    full = training_flops(reference, data.input_shape, cfg.train.batch_size,
                          [(steps, None)])["total"]
    out["fraction_of_dense"] = out["total"] / full
    return out


class Runner:
    """Trains (or reads back from the sub-run store) every run of the study."""

    def __init__(self, s: Settings, cache: SubrunCache, progress: bool | None,
                 log: Callable[[str], None]):
        self.s, self.cache, self.progress, self.log = s, cache, progress, log

    def _spec(self, cfg: RunConfig, data_key: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"study": STUDY, "config": cfg.to_dict(), "data": data_key, **extra}

    def fit(self, cfg: RunConfig, data: Dataset, data_key: dict[str, Any], label: str,
            plan: ModelPlan) -> dict[str, Any]:
        """Train a method config (gmp, random, snip, ..., dense) or read it back."""

        def work() -> dict[str, Any]:
            if cfg.method == "gmp":
                method: PruningMethod = _TracedGMP(**cfg.method_options)
            else:
                method = build_method(cfg.method, **cfg.method_options)
            t = time.perf_counter()
            res = train_run(cfg, data=data, method=method, progress=self.progress)
            seconds = time.perf_counter() - t
            steps = res.final["steps"]
            if cfg.method == "gmp":
                phases = phases_from_trace(method.trace, steps)
            else:
                phases = [(steps, _counts(res.masks) or None)]
            updates = getattr(method, "updates", [])
            dense_grads = len(updates) if cfg.method == "rigl" else 0
            out = {"final": res.final, "metrics": res.metrics, "final_state": res.final_state,
                   "masks": res.masks, "seconds": seconds,
                   "flops": _flops(cfg, data, phases, dense_grads, plan, steps),
                   "mask_updates": len(updates),
                   "moved": sum(u["moved_total"] for u in updates)}
            if cfg.method == "gmp":
                out["rewind_state"] = res.checkpoints[f"step{plan.rewind_step}"]
            return out

        return self._timed(label, self._spec(cfg, data_key), work)

    def retrain(self, cfg: RunConfig, gmp: dict[str, Any], gmp_spec: str, init: str,
                data: Dataset, data_key: dict[str, Any], label: str,
                plan: ModelPlan) -> dict[str, Any]:
        """Lottery (rewind) or scratch retraining of the GMP run's mask."""

        def work() -> dict[str, Any]:
            if gmp.get("diverged"):
                return diverged("the GMP run whose mask it retrains diverged")
            states = {f"step{plan.rewind_step}": gmp["rewind_state"]}
            t = time.perf_counter()
            res = retrain_from(cfg, gmp["masks"], init, init_states=states, data=data,
                               progress=self.progress)
            seconds = time.perf_counter() - t
            steps = res.final["steps"]
            return {"final": res.final, "metrics": res.metrics,
                    "final_state": res.final_state, "masks": res.masks, "seconds": seconds,
                    "flops": _flops(cfg, data, [(steps, _counts(res.masks))], 0, plan, steps),
                    "mask_updates": 0, "moved": 0}

        return self._timed(label, self._spec(cfg, data_key, init=init, mask_from=gmp_spec),
                           work)

    def _timed(self, label: str, spec: dict[str, Any], work) -> dict[str, Any]:
        """Run `work` (or read it back) and log it; a run whose training diverges is stored as
        `diverged`."""

        def guarded() -> dict[str, Any]:
            try:
                return work()
            except ConfigError as exc:
                if not str(exc).startswith("training diverged"):
                    raise
                return diverged(str(exc))

        hits = self.cache.hits
        out = self.cache.get_or_run(spec, guarded)
        out["spec_hash"] = spec_key(spec)
        split = "validation" if spec["data"]["split"] != "train" else "test"
        how = "stored" if self.cache.hits > hits else f"{out['seconds']:.0f} s"
        if out.get("diverged"):
            self.log(f"{label}: DIVERGED ({out['diverged']}; {how})")
        else:
            self.log(f"{label}: {split} accuracy {out['final']['test_accuracy']:.4f} ({how})")
        return out


def diverged(message: str) -> dict[str, Any]:
    """The result of a run that diverged: no weights, no mask, NaN metrics. It is reported as
    diverged, its claims' values are NaN (judged "not measured"), and the screen never picks
    it."""
    nan = float("nan")
    return {"diverged": message, "final": {"test_accuracy": nan, "train_loss": nan, "steps": 0},
            "metrics": [], "final_state": None, "masks": None, "seconds": 0.0,
            "flops": {"total": nan, "fraction_of_dense": nan, "dense_gradient_steps": 0},
            "mask_updates": 0, "moved": 0}


def _score(value: float) -> float:
    """A validation accuracy for `max`: a diverged run (NaN) ranks below every other."""
    return -math.inf if math.isnan(value) else value


def _data_key(s: Settings, split: str) -> dict[str, Any]:
    return {"name": "mnist", "n_train": s.n_train, "subset_seed": 0, "split": split}


# ----------------------------------------------------------------------------- selection


def select(s: Settings, plan: ModelPlan, data: Dataset, runner: Runner,
           log: Callable[[str], None]) -> dict[str, Any]:
    """The learning rate (mean validation accuracy of the screen methods) and then the RigL /
    SET update interval (RigL's validation accuracy), on a validation split; first of equals."""
    val = Firewall.validation(data, VALIDATION_FRACTION, seed=0)
    key = _data_key(s, f"validation:{VALIDATION_FRACTION:.6f}:0")
    vplan = model_plan(s, plan.model, val)
    seed = s.seeds[0]
    lr_rows = []
    if s.lr is None:
        for lr in s.lr_grid:
            accs = {}
            for m in s.screen_methods:
                cfg = method_config(s, vplan, m, s.screen_sparsity, seed, lr,
                                    s.update_interval, val)
                res = runner.fit(cfg, val, key, f"screen {plan.model} lr {lr} {m}", vplan)
                accs[m] = res["final"]["test_accuracy"]
            lr_rows.append({"lr": lr, **{f"val_acc_{m}": a for m, a in accs.items()},
                            "val_acc_mean": statistics.fmean(accs.values())})
        lr = max(lr_rows, key=lambda r: _score(r["val_acc_mean"]))["lr"]
    else:
        lr = s.lr
    interval_rows = []
    interval = s.update_interval
    if s.interval_grid and any(m in s.methods for m in ("set", "rigl")):
        for dt in s.interval_grid:
            cfg = method_config(s, vplan, "rigl", s.screen_sparsity, seed, lr, dt, val)
            res = runner.fit(cfg, val, key, f"screen {plan.model} rigl interval {dt}", vplan)
            interval_rows.append({"update_interval": dt,
                                  "val_acc_rigl": res["final"]["test_accuracy"],
                                  "mask_updates": res["mask_updates"]})
        interval = max(interval_rows,
                       key=lambda r: _score(r["val_acc_rigl"]))["update_interval"]
    log(f"{plan.model}: chosen on validation lr {lr}, update interval {interval}")
    return {"lr": lr, "update_interval": interval, "lr_screen": lr_rows,
            "interval_screen": interval_rows, "validation": {"n_train": val.n_train,
                                                             "n_validation": val.n_test}}


# ----------------------------------------------------------------------------- the run


def _error(res: dict[str, Any]) -> float:
    return 100.0 * (1.0 - res["final"]["test_accuracy"])


def _train_subset(data: Dataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if n >= data.n_train:
        return data.x_train, data.y_train
    idx = torch.randperm(data.n_train, generator=torch.Generator().manual_seed(0))[:n]
    return data.x_train[idx], data.y_train[idx]


def _init_state(cfg: RunConfig, data: Dataset) -> dict[str, torch.Tensor]:
    """The initial weights a run of `cfg` starts from (built exactly as `train.run` does)."""
    _, model, _ = prepare(cfg, data=data, method=PruningMethod())
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _gradflow(s: Settings, cfgs: dict[str, RunConfig], group: dict[str, dict[str, Any]],
              plan: ModelPlan, data: Dataset, seed: int) -> dict[str, Any]:
    """Gradient flow at initialisation per method: each method's starting weights under the
    mask it trains with (GMP starts dense; SET / RigL start from the very mask and weights of
    the same seed's `random` run, drawn from the same seeded generator, so are not repeated)."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    idx = torch.randperm(data.n_train, generator=gen)[:s.gradflow_batch]
    batch = (data.x_train[idx], data.y_train[idx])
    out = {}
    for m in ("gmp", "lottery", "scratch", "random", *INIT_METHODS, "small-dense"):
        if m not in group or group[m].get("diverged") or group.get("gmp", {}).get("diverged") \
                and m in ("lottery", "scratch"):
            continue
        cfg = cfgs[m]
        masks = group[m]["masks"]
        if m == "gmp":
            state, masks = _init_state(cfg, data), None
        elif m == "lottery":
            state = group["gmp"]["rewind_state"]
        else:
            state = _init_state(cfg, data)
        model = build_model(cfg.model, data.input_shape, data.num_classes, **cfg.model_options)
        model.load_state_dict(state)
        flow = gradient_flow(model, batch, masks, max_samples=s.jacobian_samples)
        out[m] = {"global": flow["gradient_norms"]["global"],
                  "layers": flow["gradient_norms"]["layers"],
                  "jacobian": flow["jacobian"]["summary"]}
    return out


def _rule(s: Settings) -> str:
    lrs = list(s.lr_grid) if s.lr is None else [s.lr]
    return (f"per model, seed {s.seeds[0]}, {s.screen_sparsity:.0%} sparsity, validation = "
            f"{VALIDATION_FRACTION:.3g} of the training set: lr of {lrs} with the highest mean "
            f"validation accuracy of {list(s.screen_methods)}; then the RigL/SET update "
            f"interval of {list(s.interval_grid) or [s.update_interval]} with RigL's highest "
            "validation accuracy")


@torch_threads(1)
def run(out: Path, *, quick: bool = False, progress: bool | None = None,
        log: Callable[[str], None] = print, plan: Settings | None = None) -> dict[str, Any]:
    """Choose the learning rate and update interval on validation data, freeze, train every
    method at every sparsity and seed, then the paths, curves, mask overlap and gradient flow;
    write report.md, results.json and figures/ into `out` atomically. `plan` replaces the
    quick / full settings (e.g. `medium_settings()`)."""
    s = plan if plan is not None else settings(quick)
    for m in s.models:
        if m not in MODEL_SPECS:
            raise ConfigError(f"sparse-training runs {', '.join(MODEL_SPECS)}; got '{m}'")
    start = time.perf_counter()
    out = Path(out)
    cache = SubrunCache(out.parent / f".{out.name}.subruns")
    runner = Runner(s, cache, progress, log)
    fw = Firewall(STUDY)
    try:
        data = fw.load("mnist", seed=0)
    except DataError as exc:
        raise DataError(f"sparse-training needs MNIST: {exc}") from None
    if s.n_train is not None:
        data = data.subset_train(s.n_train, seed=0)
    plans = {m: model_plan(s, m, data) for m in s.models}
    chosen = {m: select(s, plans[m], data, runner, log) for m in s.models}
    fw.freeze(**{m: {"lr": c["lr"], "update_interval": c["update_interval"]}
                 for m, c in chosen.items()},
              rule=_rule(s))
    n_runs = len(s.models) * len(s.seeds) * (1 + len(s.sparsities) * len(s.methods))
    data = fw.test(data, f"every training run ({n_runs})", "test accuracy after each epoch",
                   count=n_runs * s.epochs)
    key = _data_key(s, "train")

    rows: list[dict[str, Any]] = []
    masks_kept: dict[tuple[str, float, int], dict[str, Masks]] = {}
    gradflow: list[dict[str, Any]] = []
    lines: dict[str, dict[str, list[dict[str, Any]]]] = {}
    line_results: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    path_data = None
    for model in s.models:
        plan = plans[model]
        lr, interval = chosen[model]["lr"], chosen[model]["update_interval"]
        x_path, y_path = _train_subset(data, s.path_train_samples)
        path_data = {"train": (x_path, y_path), "test": (data.x_test, data.y_test)}
        lines[model] = {m: [] for m in PATH_METHODS}
        for seed in s.seeds:
            dense_cfg = method_config(s, plan, "dense", 0.0, seed, lr, interval, data)
            dense = runner.fit(dense_cfg, data, key, f"{model} seed {seed} dense", plan)
            rows.append(_row(model, 0.0, seed, "dense", dense))
            for sp in s.sparsities:
                group, cfgs = _run_group(s, plan, sp, seed, lr, interval, data, key, runner)
                for m, res in group.items():
                    rows.append(_row(model, sp, seed, m, res))
                masks_kept[(model, sp, seed)] = {m: group[m]["masks"] for m in MASKED
                                                 if m in group and group[m]["masks"]
                                                 is not None}
                flow = _gradflow(s, cfgs, group, plan, data, seed)
                gradflow += [{"model": model, "sparsity": sp, "seed": seed, "method": m, **v}
                             for m, v in flow.items()]
                if sp == s.landscape_sparsity and "gmp" in group \
                        and not group["gmp"].get("diverged"):
                    net = build_model(plan.model, data.input_shape, data.num_classes,
                                      **plan.options)
                    fw.record(f"{model} {sp:.0%} seed {seed}: lines to the pruned solution",
                              "test loss and accuracy", count=len(PATH_METHODS))
                    for m in PATH_METHODS:
                        if m not in group or group[m].get("diverged"):
                            continue
                        res = interpolate(group[m]["final_state"], group["gmp"]["final_state"],
                                          path_data, model=net, points=s.line_points)
                        lines[model][m].append({"seed": seed, **res.summary()["train"],
                                                "test_barrier": res.barrier("test")})
                        if seed == s.seeds[0]:
                            line_results[f"{model}:{m}->pruned"] = res
                    if (s.curves and model == LANDSCAPE_MODEL and seed == s.seeds[0]
                            and "scratch" in group and not group["scratch"].get("diverged")):
                        fw.record(f"{model} {sp:.0%} seed {seed}: Bezier curves",
                                  "test loss and accuracy", count=2)
                        curves = _curves(s, group, net, data, path_data, lr, progress, log)
                del group
    elapsed_runs = time.perf_counter() - start

    tables = summarise(s, rows, masks_kept, gradflow, lines)
    verdicts = judge_all(CLAIMS, measure(s, rows, lines, curves))
    elapsed = time.perf_counter() - start
    results = {
        "settings": asdict(s), "quick": quick, "setting": s.name, "seconds": elapsed,
        "seconds_training_and_paths": elapsed_runs, "chosen": chosen,
        "plans": {m: asdict(p) for m, p in plans.items()}, "dataset": data.summary(),
        "runs": rows, "tables": tables, "gradflow": gradflow,
        "lines": lines, "curves": {k: v["summary"] for k, v in curves.items()},
        "paths": {k: v.to_dict() for k, v in line_results.items()},
        "curve_paths": {k: v["path"].to_dict() for k, v in curves.items()},
        "claims": [v.to_dict() for v in verdicts],
        "subruns": {"stored_at": str(cache.directory), "read_back": cache.hits,
                    "run": cache.runs, "kept": s.keep_subruns},
        "figures": [], **fw.to_results(),
    }
    with atomic.staged_directory(out) as stage:
        (stage / "figures").mkdir()
        results["figures"] = _figures(s, results, line_results, curves, masks_kept, stage)
        atomic.write_json(stage / "results.json", results)
        atomic.write_text(stage / "report.md", _report(results, verdicts, fw))
    if not s.keep_subruns:
        cache.remove()
    for line in log_lines(verdicts, quick):
        log(line)
    log(f"wrote {out}/report.md ({elapsed:.0f} s)")
    return results


def _run_group(s: Settings, plan: ModelPlan, sp: float, seed: int, lr: float, interval: int,
               data: Dataset, key: dict[str, Any], runner: Runner):
    """Every method at one (model, sparsity, seed); returns results and configs by method."""
    group: dict[str, dict[str, Any]] = {}
    cfgs: dict[str, RunConfig] = {}
    tag = f"{plan.model} {sp:.0%} seed {seed}"
    needs_gmp = any(m in s.methods for m in ("gmp", "lottery", "scratch"))
    gmp_cfg = method_config(s, plan, "gmp", sp, seed, lr, interval, data)
    if needs_gmp:
        group["gmp"] = runner.fit(gmp_cfg, data, key, f"{tag} gmp", plan)
        cfgs["gmp"] = gmp_cfg
    for m in s.methods:
        if m == "gmp":
            continue
        if m in ("lottery", "scratch"):
            init = f"rewind:{plan.rewind_step}it" if m == "lottery" else "scratch"
            cfgs[m] = retrain_config(gmp_cfg, init)
            group[m] = runner.retrain(gmp_cfg, group["gmp"], group["gmp"]["spec_hash"], init,
                                      data, key, f"{tag} {m}", plan)
        else:
            cfgs[m] = method_config(s, plan, m, sp, seed, lr, interval, data)
            group[m] = runner.fit(cfgs[m], data, key, f"{tag} {m}", plan)
    if "gmp" not in s.methods:
        group.pop("gmp", None)
    return group, cfgs


def _row(model: str, sp: float, seed: int, method: str, res: dict[str, Any]) -> dict[str, Any]:
    fl = res["flops"]
    return {"model": model, "sparsity": sp, "seed": seed, "method": method,
            "test_error": _error(res), "test_accuracy": res["final"]["test_accuracy"],
            "train_loss": res["final"]["train_loss"], "seconds": res["seconds"],
            "flops": fl["total"], "flops_fraction": fl["fraction_of_dense"],
            "dense_gradient_steps": fl["dense_gradient_steps"],
            "mask_updates": res["mask_updates"], "moved": res["moved"],
            "params": _params(res), "diverged": res.get("diverged")}


def _params(res: dict[str, Any]) -> int:
    state = res["final_state"]
    if state is None:
        return -1
    masks = res["masks"] or {}
    return int(sum(int(masks[k].sum()) if k in masks else v.numel()
                   for k, v in state.items() if v.is_floating_point()
                   and not k.endswith(("running_mean", "running_var"))))


def _curves(s: Settings, group, net: nn.Module, data: Dataset, path_data, lr: float,
            progress, log) -> dict[str, Any]:
    """Quadratic Bezier curves scratch -> pruned, confined to the GMP mask and dense."""
    masks = group["gmp"]["masks"]
    out = {}
    for label, subspace in (("sparse quadratic", "sparse"), ("dense quadratic", "dense")):
        curve = BezierCurve.between(group["scratch"]["final_state"], group["gmp"]["final_state"],
                                    model=net, degree=2, subspace=subspace, masks_a=masks,
                                    masks_b=masks)
        history = train_curve(curve, net, data, epochs=s.curve_epochs, lr=lr,
                              momentum=s.momentum, weight_decay=s.weight_decay,
                              batch_size=s.batch_size, seed=0, progress=progress)
        res = evaluate_curve(curve, net, path_data, points=s.curve_points)
        summary = {**res.summary()["train"], "test_barrier": res.barrier("test"),
                   "curve_training": history}
        if subspace == "sparse":
            summary["inside_mask"] = all(not bool(cp[k][~m].any())
                                         for cp in curve.control_points()
                                         for k, m in masks.items())
        out[label] = {"path": res, "summary": summary}
        log(f"curve scratch -> pruned, {label}: barrier {summary['barrier']:.4f}")
    return out


# ----------------------------------------------------------------------------- claims


def _errors(rows, model: str, sp: float, method: str, seeds) -> list[float] | None:
    found = {r["seed"]: r["test_error"] for r in rows
             if r["model"] == model and r["sparsity"] == sp and r["method"] == method}
    if not found:
        return None
    return [found[k] for k in seeds if k in found]


def measure(s: Settings, rows: list[dict[str, Any]], lines, curves) -> dict[str, Measured]:
    """What each declared claim measured (test errors in points; barriers in nats)."""
    out: dict[str, Measured] = {}
    for model in ("lenet-300-100", "lenet5"):
        for sp in RIGL_SPARSITIES:
            name = f"rigl-gap:{model}:{sp:g}"
            err = {m: _errors(rows, model, sp, m, s.seeds) for m in ("random", "rigl", "gmp")}
            if any(v is None for v in err.values()):
                out[name] = missing(f"{model} at {sp:.0%} was not run in this setting")
                continue
            a = [r - g for r, g in zip(err["random"], err["rigl"])]
            gap = [r - g for r, g in zip(err["random"], err["gmp"])]
            mean_gap, mean_closed = statistics.fmean(gap), statistics.fmean(a)
            ratio = mean_closed / mean_gap if mean_gap else float("nan")
            out[name] = paired(a, [0.5 * g for g in gap],
                               f"gap random - GMP {mean_gap:+.3f} points, RigL closed "
                               f"{mean_closed:+.3f} ({ratio:.0%} of the mean gap)")
        if model != "lenet5":
            continue
        for m in INIT_METHODS:
            name = f"{m}-vs-gmp:lenet5:0.9"
            em, eg = _errors(rows, model, 0.9, m, s.seeds), _errors(rows, model, 0.9, "gmp",
                                                                   s.seeds)
            out[name] = (missing("lenet5 at 90% was not run in this setting")
                         if em is None or eg is None else paired(em, eg))
    lm = lines.get(LANDSCAPE_MODEL, {})
    static = [r["barrier"] for r in lm.get("scratch", [])]
    rigl = [r["barrier"] for r in lm.get("rigl", [])]
    why = f"{LANDSCAPE_MODEL} at {s.landscape_sparsity:.0%} was not run in this setting"
    out["static-line-barrier"] = samples(static) if static else missing(why)
    out["rigl-line-below-static"] = (paired(rigl, static) if static and rigl
                                     and len(rigl) == len(static) else missing(why))
    if curves:
        sq, dq = curves["sparse quadratic"]["summary"], curves["dense quadratic"]["summary"]
        out["sparse-curve-barrier"] = single(sq["barrier"], "inside the mask"
                                             if sq.get("inside_mask") else "LEFT the mask")
        line = lm["scratch"][0]["barrier"] if lm.get("scratch") else None
        out["dense-curve"] = single(dq["barrier"], "" if not line else
                                    f"line {line:.4f}, sparse curve {sq['barrier']:.4f}")
    else:
        out["sparse-curve-barrier"] = out["dense-curve"] = missing(why + " (or curves off)")
    return out


# ----------------------------------------------------------------------------- tables


def _mean_sd(values: list[float], digits: int = 2) -> str:
    """'mean ± SD' of the finite values, noting how many runs diverged (NaN)."""
    finite = [v for v in values if not math.isnan(v)]
    note = f" ({len(values) - len(finite)} diverged)" if len(finite) < len(values) else ""
    if not finite:
        return "-" + note
    if len(finite) == 1:
        return f"{finite[0]:.{digits}f}{note}"
    return (f"{statistics.fmean(finite):.{digits}f} ± {statistics.stdev(finite):.{digits}f}"
            f"{note}")


def summarise(s: Settings, rows, masks_kept, gradflow, lines) -> dict[str, Any]:
    """The report's tables, per model (Markdown-ready rows)."""
    tables: dict[str, Any] = {}
    for model in s.models:
        sub = [r for r in rows if r["model"] == model]
        methods = [m for m in s.methods]
        cols = [f"{sp:.0%}" for sp in s.sparsities]
        gap, flops, overlap, flow = [], [], [], []
        gmp_flops = {sp: [r["flops_fraction"] for r in sub if r["sparsity"] == sp
                          and r["method"] == "gmp" and not math.isnan(r["flops_fraction"])]
                     for sp in s.sparsities}
        for m in methods:
            g = {"method": LABELS[m]}
            f = {"method": LABELS[m]}
            for sp, c in zip(s.sparsities, cols):
                errs = [r["test_error"] for r in sub if r["sparsity"] == sp and r["method"] == m]
                g[c] = _mean_sd(errs)
                fr = [r["flops_fraction"] for r in sub if r["sparsity"] == sp
                      and r["method"] == m and not math.isnan(r["flops_fraction"])]
                text = f"{statistics.fmean(fr):.3f}" if fr else "-"
                if m in ("lottery", "scratch") and fr and gmp_flops[sp]:
                    text += f" (+{statistics.fmean(gmp_flops[sp]):.3f} GMP)"
                f[c] = text
            gap.append(g)
            flops.append(f)
        dense = [r["test_error"] for r in sub if r["method"] == "dense"]
        gap.append({"method": LABELS["dense"], **dict.fromkeys(cols, _mean_sd(dense))})
        for m in MASKED:
            if m not in methods:
                continue
            o = {"method": LABELS[m] + (" (= scratch, lottery)" if m == "gmp" else "")}
            for sp, c in zip(s.sparsities, cols):
                js = []
                for i, a in enumerate(s.seeds):
                    for b in s.seeds[i + 1:]:
                        ma, mb = (masks_kept.get((model, sp, k), {}).get(m) for k in (a, b))
                        if ma is not None and mb is not None:
                            js.append(jaccard(ma, mb)["global"])
                o[c] = (f"{statistics.fmean(js):.3f} (chance {random_jaccard(1 - sp, 1 - sp):.3f})"
                        if js else "-")
            overlap.append(o)
        for m in ("gmp", "lottery", "scratch", "random", *INIT_METHODS, "small-dense"):
            if m not in methods:
                continue
            row = {"method": LABELS[m] + (" (dense init)" if m == "gmp" else "")}
            for sp, c in zip(s.sparsities, cols):
                v = [x["global"] for x in gradflow if x["model"] == model
                     and x["sparsity"] == sp and x["method"] == m]
                row[c] = f"{statistics.fmean(v):.3g}" if v else "-"
            flow.append(row)
        layer_flow = []
        for m in ("gmp", "lottery", "scratch", "random", *INIT_METHODS, "small-dense"):
            v = [x for x in gradflow if x["model"] == model and x["sparsity"] ==
                 s.landscape_sparsity and x["method"] == m]
            if not v:
                continue
            row = {"method": LABELS[m] + (" (dense init)" if m == "gmp" else "")}
            for layer in v[0]["layers"]:
                row[layer] = f"{statistics.fmean(x['layers'][layer] for x in v):.3g}"
            row["jacobian sv mean"] = f"{statistics.fmean(x['jacobian']['mean'] for x in v):.3g}"
            layer_flow.append(row)
        method_overlap = None
        key = (model, s.landscape_sparsity, s.seeds[0])
        if key in masks_kept and len(masks_kept[key]) >= 2:
            mo = overlap_matrix(masks_kept[key])
            method_overlap = {"labels": mo["labels"], "global": mo["global"],
                              "chance": mo["chance"]}
        path_rows = []
        for m, entries in lines.get(model, {}).items():
            if entries:
                path_rows.append({"path": f"{LABELS[m]} -> pruned",
                                  "barrier (train loss)": _mean_sd([e["barrier"] for e in
                                                                    entries], 3),
                                  "loss at start": _mean_sd([e["loss_a"] for e in entries], 3),
                                  "loss pruned": _mean_sd([e["loss_b"] for e in entries], 3),
                                  "test barrier": _mean_sd([e["test_barrier"] for e in entries],
                                                           3),
                                  "seeds": len(entries)})
        gaps = []
        for sp in s.sparsities:
            e = {m: _errors(rows, model, sp, m, s.seeds) for m in ("random", "gmp", "rigl")}
            if any(v is None for v in e.values()):
                continue
            gap_v = [a - b for a, b in zip(e["random"], e["gmp"])]
            closed = [a - b for a, b in zip(e["random"], e["rigl"])]
            mg = statistics.fmean(gap_v)  # NaN when a run diverged
            gaps.append({"sparsity": f"{sp:.0%}", "random ERK": _mean_sd(e["random"]),
                         "GMP": _mean_sd(e["gmp"]), "RigL": _mean_sd(e["rigl"]),
                         "gap random - GMP": _mean_sd(gap_v),
                         "closed by RigL": _mean_sd(closed),
                         "closed / gap (means)": f"{statistics.fmean(closed) / mg:.0%}"
                         if mg and not math.isnan(mg) else "-"})
        tables[model] = {"columns": cols, "gap": gap, "flops": flops, "overlap_seeds": overlap,
                         "overlap_methods": method_overlap, "gradflow": flow,
                         "gradflow_layers": layer_flow, "paths": path_rows, "rigl_gap": gaps}
    return tables


# ----------------------------------------------------------------------------- figures


def _figures(s: Settings, r, line_results, curves, masks_kept, stage: Path) -> list[str]:
    names = []
    fig, axes = new_figure(len(s.models), size=(5.2, 3.8))
    for ax, model in zip(axes[0], s.models):
        sub = [x for x in r["runs"] if x["model"] == model]
        for m in s.methods:
            xs, ys, es = [], [], []
            for sp in s.sparsities:
                v = [x["test_error"] for x in sub if x["sparsity"] == sp and x["method"] == m
                     and not math.isnan(x["test_error"])]
                if v:
                    xs.append(100 * sp)
                    ys.append(statistics.fmean(v))
                    es.append(statistics.stdev(v) if len(v) > 1 else 0.0)
            ax.errorbar(xs, ys, yerr=es, marker="o", ms=3, capsize=2, label=LABELS[m])
        dense = [x["test_error"] for x in sub if x["method"] == "dense"
                 and not math.isnan(x["test_error"])]
        if dense:
            ax.axhline(statistics.fmean(dense), color="k", ls=":", lw=1, label="dense")
        ax.set(xlabel="sparsity (%)", ylabel="test error (%)", title=model, yscale="log")
    axes[0][0].legend(fontsize=6)
    save_figure(fig, stage / "figures" / "gap.png")
    names.append("figures/gap.png")
    if line_results or curves:
        fig, axes = new_figure(1, size=(6.0, 4.2))
        first = next(k.split(":")[0] for k in line_results) if line_results else None
        for key, res in line_results.items():
            model, path = key.split(":")
            if model == first:
                plot_path(axes[0][0], res, label=LABELS[path.split("->")[0]] + " -> pruned")
        for label, c in curves.items():
            plot_path(axes[0][0], c["path"], label=f"scratch -> pruned, {label} curve",
                      color="k", ls="--" if label.startswith("sparse") else ":")
        axes[0][0].set_yscale("log")
        axes[0][0].set_title(f"training loss, seed {s.seeds[0]}, {s.landscape_sparsity:.0%} "
                             "(t=1: pruned)", fontsize=9)
        axes[0][0].legend(fontsize=6)
        save_figure(fig, stage / "figures" / "paths.png")
        names.append("figures/paths.png")
    model = s.models[0]
    ov = r["tables"][model]["overlap_methods"]
    if ov:
        fig, axes = new_figure(1, size=(4.8, 4.2))
        ax = axes[0][0]
        im = ax.imshow(ov["global"], vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(ov["labels"])), [LABELS[x] for x in ov["labels"]], rotation=60,
                      fontsize=7, ha="right")
        ax.set_yticks(range(len(ov["labels"])), [LABELS[x] for x in ov["labels"]], fontsize=7)
        for i, row in enumerate(ov["global"]):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="w" if v < 0.5 else "k")
        ax.set_title(f"{model} {s.landscape_sparsity:.0%}: mask Jaccard, seed {s.seeds[0]}",
                     fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
        save_figure(fig, stage / "figures" / "overlap.png")
        names.append("figures/overlap.png")
    flow = r["tables"][model]["gradflow_layers"]
    if flow:
        fig, axes = new_figure(1, size=(6.0, 3.8))
        ax = axes[0][0]
        layers = [k for k in flow[0] if k not in ("method", "jacobian sv mean")]
        width = 0.8 / len(flow)
        for i, row in enumerate(flow):
            ax.bar([j + i * width for j in range(len(layers))],
                   [float(row.get(k, "nan")) for k in layers], width, label=row["method"])
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layers))], layers)
        ax.set(yscale="log", ylabel="||g * m|| at init", title=f"{model} "
               f"{s.landscape_sparsity:.0%}: gradient norm per layer at initialisation")
        ax.legend(fontsize=6)
        save_figure(fig, stage / "figures" / "gradflow.png")
        names.append("figures/gradflow.png")
    return names


# ----------------------------------------------------------------------------- report


def _acc(v: float) -> str:
    return "diverged" if math.isnan(v) else f"{v:.4f}"


def _report(r: dict[str, Any], verdicts: list[Verdict], fw: Firewall) -> str:
    s = r["settings"]
    n_train = s["n_train"] or r["dataset"]["n_train"]
    scale = ("full setting" if r["setting"] == "full" else
             f"{r['setting'].upper()} setting (reduced): not the full result")
    lines = [
        "# Sparse training from scratch vs pruning (issue 22)",
        "",
        f"**{scale}.** Models {', '.join(s['models'])}; sparsities "
        f"{', '.join(f'{x:.0%}' for x in s['sparsities'])}; seeds {s['seeds']}; MNIST "
        f"{n_train} training images, 10,000 test images; SGD momentum {s['momentum']}, weight "
        f"decay {s['weight_decay']}, batch {s['batch_size']}, {s['lr_schedule']} learning rate, "
        f"{s['epochs']} epochs. GMP: cubic schedule, global magnitude; lottery: GMP mask, "
        f"weights rewound to {s['rewind_fraction']:.0%} of training; scratch: GMP mask, new "
        f"init; random, SET, RigL: ERK budgets; SNIP/GraSP/SynFlow: global scores; SET/RigL "
        f"drop fraction {s['drop_fraction']} (cosine), last update at {s['dst_end']:.0%}; "
        "small dense: every hidden width scaled so the parameter count matches the sparse "
        "networks'.",
        "",
        "Chosen on validation (per model):",
        "",
    ]
    for model, c in r["chosen"].items():
        p = r["plans"][model]
        lines.append(f"- {model}: lr {c['lr']}, update interval {c['update_interval']} steps "
                     f"({p['total_steps']} steps in all; GMP from step {p['gmp'][0]} to "
                     f"{p['gmp'][1]} every {p['gmp'][2]}; rewind step {p['rewind_step']}). "
                     "lr screen: " + ("; ".join(f"{x['lr']}: {_acc(x['val_acc_mean'])}"
                                                for x in c["lr_screen"]) or "none")
                     + ". interval screen (RigL): "
                     + ("; ".join(f"{x['update_interval']}: {_acc(x['val_acc_rigl'])}"
                                  for x in c["interval_screen"]) or "none") + ".")
    lines += ["", "## Claims", "", claims_markdown(verdicts, r["quick"]), "",
              "The RigL statistic per seed is (err_random - err_rigl) - 0.5 (err_random - "
              "err_gmp) > 0, i.e. RigL's error below the midpoint of random ERK's and GMP's; "
              "the ratio 'fraction of the gap closed' is reported beside it (ratio of means), "
              "not judged, since per seed it is unstable when the gap is small.", "",
              "## Test-set firewall", "", *fw.report_lines(), ""]
    for model, t in r["tables"].items():
        cols = ["method", *t["columns"]]
        lines += [f"## {model}", "", "### Test error (%), mean ± SD over seeds", "",
                  markdown_table(t["gap"], cols), "",
                  "### Training FLOPs, fraction of dense training of the full network", "",
                  "Three forward passes per step at each layer's kept fraction "
                  "(`prunelab.flops`); GMP counted step by step as its mask shrinks; RigL adds "
                  "a dense forward/backward at each update step; lottery and scratch also need "
                  "the GMP run that found their mask (in brackets).", "",
                  markdown_table(t["flops"], cols), ""]
        if t["rigl_gap"]:
            lines += ["### The gap between random ERK and GMP, and RigL (test error, points)",
                      "", markdown_table(t["rigl_gap"], list(t["rigl_gap"][0])), ""]
        if t["paths"]:
            lines += [f"### Lines to the pruned solution at {s['landscape_sparsity']:.0%} "
                      f"({s['line_points']} points, t in [-0.2, 1.2]; training loss on "
                      f"{min(s['path_train_samples'], n_train)} training images)", "",
                      "Barrier B = max over t in [0, 1] of L(t) - ((1 - t) L(0) + t L(1)).", "",
                      markdown_table(t["paths"], list(t["paths"][0])), ""]
        if model == LANDSCAPE_MODEL and r["curves"]:
            crow = [{"curve (scratch -> pruned)": k, "barrier": v["barrier"],
                     "loss scratch": v["loss_a"], "loss pruned": v["loss_b"],
                     "max loss": v["max_loss"], "test barrier": v["test_barrier"]}
                    for k, v in r["curves"].items()]
            lines += [f"### Bezier curves (seed {s['seeds'][0]}, quadratic, trained "
                      f"{s['curve_epochs']} epochs, {s['curve_points']} points)", "",
                      markdown_table(crow, list(crow[0])), ""]
        lines += ["### Mask overlap across seeds (mean pairwise Jaccard, global)", "",
                  markdown_table(t["overlap_seeds"], cols), ""]
        if t["overlap_methods"]:
            ov = t["overlap_methods"]
            orows = [{"": LABELS[a], **{LABELS[b]: f"{ov['global'][i][j]:.3f}"
                                        for j, b in enumerate(ov["labels"])}}
                     for i, a in enumerate(ov["labels"])]
            lines += [f"### Mask overlap across methods ({s['landscape_sparsity']:.0%}, seed "
                      f"{s['seeds'][0]}; chance {ov['chance'][0][1]:.3f})", "",
                      markdown_table(orows, ["", *[LABELS[b] for b in ov["labels"]]]), ""]
        lines += ["### Gradient flow at initialisation: global ||g * m|| (mean over seeds)", "",
                  "Each method's starting weights under the mask it trains with, one batch of "
                  f"{s['gradflow_batch']} training images; GMP starts dense; SET and RigL start "
                  "from the random ERK run's mask of the same seed (the random row).", "",
                  markdown_table(t["gradflow"], cols), ""]
        if t["gradflow_layers"]:
            lines += [f"Per layer at {s['landscape_sparsity']:.0%} (and the mean singular value "
                      f"of the input-output Jacobian, {s['jacobian_samples']} samples):", "",
                      markdown_table(t["gradflow_layers"], list(t["gradflow_layers"][0])), ""]
    lines += ["## Figures", ""]
    lines += [f"![{Path(f).stem}]({f})" for f in r["figures"]]
    lines += ["", f"Total time: {r['seconds']:.0f} s (sub-runs trained {r['subruns']['run']}, "
              f"read back from the store {r['subruns']['read_back']}).", ""]
    return "\n".join(lines)


__all__ = ["CLAIMS", "METHODS", "Settings", "medium_settings", "measure", "run", "settings",
           "small_dense_model", "sparse_param_count"]
