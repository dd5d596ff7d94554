"""Knee search on the (CE, l1) front by adaptive dichotomic weighted sums (Reiners et al.).

Each evaluation trains one network on lambda * f1 + (1 - lambda) * f2 (`BiobjectiveTraining`)
for a short budget and measures (f1, f2) = (validation CE, l1 of the dense kernels). The search:

1. evaluates the starting weights (1, 0) and (0.9, 0.1);
2. repeatedly takes the pair of neighbouring non-dominated points A, B (A with the smaller
   f1) whose segment is longest after scaling each objective by the front's range, and
   evaluates the weight normal to AB, lambda = (A2 - B2) / ((A2 - B2) + (B1 - A1)), at which
   A and B have the same weighted sum; a result strictly below segment AB (by `tol` of the
   weighted sum) is a new supported point and splits the pair in two; otherwise the pair is
   done;
3. drops dominated points (training is stochastic, so a new run can dominate an old one);
4. stops when no pair is left or after `budget` evaluations (the paper: at most ~20).

Knee selection (`select_knee`): along the front sorted by f1, the slope of segment i,
s_i = (f1_{i+1} - f1_i) / (f2_i - f2_{i+1}), is the ratio (1 - lambda) / lambda of the weight
normal to it. The knee is the interior point where that weight ratio jumps most,
argmax_i s_i / s_{i-1}: to its left l1 falls for little CE, to its right each further unit of
l1 costs much more CE. The ratio of slopes is invariant to rescaling either objective. With
fewer than three front points the knee is the point closest to the ideal point in the
range-normalised objective space.

Selection uses validation data only (`validation_split` carves it from the training set, seeded);
the test set is for reporting the final, retrained knee.

Fine-tune (`WeightedSumRunner(finetune=TrainConfig(...))`, `finetune_sparse`): after the
weighted-sum training, a second phase with its own learning-rate schedule trains the solution on
CE (+ the conv L2 term) only, its l1-set zeros frozen as a persistent mask: the nonzero count
stays exactly that of the weighted-sum solution while the accuracy recovers (the short runs of
the searches do not use it; the Pareto reproduction reports it as a labelled variant, not the
paper's protocol). `WeightedSumRunner(keep_epochs=(E,))` keeps the weights after epoch E of a
longer weighted-sum run and `finetune_from(point, E)` fine-tunes them: at a constant learning
rate this is bit for bit an E-epoch run with `finetune` set, so one weighted-sum run serves both
the full-length network and the shorter run plus fine-tune.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from prunelab.config import TrainConfig
from prunelab.data import Dataset
from prunelab.errors import ConfigError, check_range
from prunelab.methods.biobjective import BiobjectiveTraining, check_weight, l1_norm
from prunelab.multiobjective.pareto import non_dominated

START_WEIGHTS = (1.0, 0.9)


@dataclass
class FrontPoint:
    """One weighted-sum solution: its weight lambda (on CE), objective values and extras."""

    weight: float
    f1: float
    f2: float
    extra: dict[str, Any] = field(default_factory=dict)
    index: int = -1  # evaluation order
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    # weights after the epochs named in `WeightedSumRunner.keep_epochs` (not in `to_dict`)
    epoch_states: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def objectives(self) -> tuple[float, float]:
        return (self.f1, self.f2)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (without the weights)."""
        return {"index": self.index, "weight": self.weight, "f1": self.f1, "f2": self.f2,
                **self.extra}


@dataclass
class KneeSearch:
    """The outcome of a search: every evaluation, the non-dominated front, the knee and a log
    of which pair each weight came from."""

    points: list[FrontPoint]
    front: list[FrontPoint]
    knee: FrontPoint | None
    history: list[dict[str, Any]]
    strategy: str

    @property
    def runs(self) -> int:
        return len(self.points)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "runs": self.runs,
            "points": [p.to_dict() for p in self.points],
            "front": [p.index for p in self.front],
            "knee": None if self.knee is None else self.knee.index,
            "history": self.history,
        }


def normal_weight(a: tuple[float, float], b: tuple[float, float]) -> float:
    """The lambda at which a and b have equal weighted sums lambda f1 + (1 - lambda) f2
    (a, b on a front: one better in f1, the other in f2)."""
    (a1, a2), (b1, b2) = sorted([a, b])
    d2, d1 = a2 - b2, b1 - a1
    if d1 < 0 or d2 < 0 or d1 + d2 == 0:
        raise ConfigError("normal_weight needs two mutually non-dominated, distinct points")
    return d2 / (d1 + d2)


def _front(points: list[FrontPoint]) -> list[FrontPoint]:
    if not points:
        return []
    idx = non_dominated([p.objectives for p in points])
    out: list[FrontPoint] = []
    for i in idx:  # keep one copy of exact duplicates
        if not out or out[-1].objectives != points[i].objectives:
            out.append(points[i])
    return out


def select_knee(front: Sequence[FrontPoint]) -> FrontPoint | None:
    """The point where the weight ratio (the front's slope) jumps most; see the module doc."""
    pts = sorted(front, key=lambda p: (p.f1, -p.f2))
    if not pts:
        return None
    if len(pts) < 3:
        arr = np.array([p.objectives for p in pts])
        lo, span = arr.min(axis=0), np.ptp(arr, axis=0)
        span = np.where(span > 0, span, 1.0)
        d = np.linalg.norm((arr - lo) / span, axis=1)
        return pts[int(np.argmin(d))]
    slopes = []
    for a, b in zip(pts[:-1], pts[1:]):
        slopes.append((b.f1 - a.f1) / max(a.f2 - b.f2, 1e-300))
    best, best_jump = None, -math.inf
    for i in range(1, len(pts) - 1):
        jump = math.log(max(slopes[i], 1e-300)) - math.log(max(slopes[i - 1], 1e-300))
        if jump > best_jump:
            best, best_jump = pts[i], jump
    return best


def _check_budget(budget: int) -> None:
    check_range("budget", budget, 2, 1000)


def dichotomic_search(
    evaluate: Callable[[float], FrontPoint],
    budget: int = 20,
    *,
    start: Sequence[float] = START_WEIGHTS,
    tol: float = 1e-3,
    min_weight_gap: float = 1e-7,
    resolution: float = 0.0,
    log: Callable[[str], None] | None = None,
) -> KneeSearch:
    """Adaptive dichotomic weighted-sum search (module doc); `evaluate(lambda)` trains one
    short run and returns its FrontPoint (validation objectives). At most `budget` runs.

    `resolution` > 0 leaves unsplit any pair whose difference in either objective is below
    that fraction of the front's range (differences of the order of run-to-run noise, e.g.
    on the flat, nearly dense part of a CE-l1 front); 0 is the paper's rule."""
    _check_budget(budget)
    check_range("tol", tol, 0.0)
    check_range("resolution", resolution, 0.0, 1.0)
    for w in start:
        check_weight(w)
    points: list[FrontPoint] = []
    history: list[dict[str, Any]] = []

    def run(weight: float, why: str) -> FrontPoint:
        p = evaluate(weight)
        p.index = len(points)
        points.append(p)
        history.append({"run": p.index, "weight": weight, "from": why,
                        "f1": p.f1, "f2": p.f2})
        if log is not None:
            log(f"run {p.index + 1}/{budget}: lambda={weight:.6g} ({why}) -> CE {p.f1:.4f}, "
                f"l1 {p.f2:.4g}")
        return p

    for w in list(start)[:budget]:
        run(float(w), "start")
    done: set[tuple[int, int]] = set()
    tried = [p.weight for p in points]
    while len(points) < budget:
        front = _front(points)
        arr = np.array([p.objectives for p in front])
        span = np.ptp(arr, axis=0) if len(front) > 1 else np.ones(2)
        span = np.where(span > 0, span, 1.0)
        pairs = []
        for a, b in zip(front[:-1], front[1:]):
            key = (a.index, b.index)
            if key in done:
                continue
            d1, d2 = (b.f1 - a.f1) / span[0], (a.f2 - b.f2) / span[1]
            if min(d1, d2) < resolution:
                continue
            pairs.append((float(np.hypot(d1, d2)), a, b))
        if not pairs:
            break
        _, a, b = max(pairs, key=lambda t: t[0])
        done.add((a.index, b.index))
        lam = normal_weight(a.objectives, b.objectives)
        if lam <= 0.0 or any(abs(lam - t) <= min_weight_gap for t in tried):
            history.append({"run": None, "weight": lam, "from": f"{a.index}-{b.index}",
                            "skipped": "weight already tried or zero"})
            continue
        tried.append(lam)
        new = run(lam, f"normal to {a.index}-{b.index}")
        ws = lambda p: lam * p.f1 + (1.0 - lam) * p.f2  # noqa: E731
        scale = max(abs(ws(a)), abs(ws(b)), 1e-12)
        history[-1]["below_segment"] = bool(ws(new) < ws(a) - tol * scale)
    front = _front(points)
    return KneeSearch(points, front, select_knee(front), history, "dichotomic")


def grid_search(
    evaluate: Callable[[float], FrontPoint],
    weights: Sequence[float],
    *,
    log: Callable[[str], None] | None = None,
) -> KneeSearch:
    """Evaluate a fixed list of weights (the comparison to the adaptive search)."""
    if not weights:
        raise ConfigError("grid_search needs at least one weight")
    points: list[FrontPoint] = []
    history = []
    for w in weights:
        check_weight(w)
        p = evaluate(float(w))
        p.index = len(points)
        points.append(p)
        history.append({"run": p.index, "weight": float(w), "from": "grid", "f1": p.f1,
                        "f2": p.f2})
        if log is not None:
            log(f"grid run {p.index + 1}/{len(weights)}: lambda={w:.6g} -> CE {p.f1:.4f}, "
                f"l1 {p.f2:.4g}")
    front = _front(points)
    return KneeSearch(points, front, select_knee(front), history, "grid")


def validation_split(data: Dataset, n_val: int, seed: int = 0) -> Dataset:
    """A Dataset whose training set is `data`'s minus `n_val` seeded-random examples and whose
    *test* tensors are those held-out examples (the validation split): a Trainer evaluating
    "test" every epoch then only ever sees validation data; the real test set is not in it."""
    if not 0 < n_val < data.n_train:
        raise ConfigError(f"n_val must be in [1, {data.n_train - 1}], got {n_val}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(data.n_train, generator=g)
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    x_val, y_val = data.x_train[val_idx], data.y_train[val_idx]
    meta = dict(data.meta, validation=n_val, validation_seed=seed)
    train = Dataset(f"{data.name}-train", data.x_train[tr_idx], data.y_train[tr_idx], x_val,
                    y_val, data.num_classes, data.feature_names, data.relevant_features,
                    data.class_names, meta)
    return train


def dense_nonzero(model: nn.Module, names: Sequence[str]) -> dict[str, int]:
    """Nonzero entries per named parameter."""
    params = dict(model.named_parameters())
    return {n: int(params[n].detach().ne(0).sum()) for n in names}


def finetune_sparse(
    model: nn.Module,
    train: Dataset,
    config: TrainConfig,
    method_options: dict[str, Any] | None = None,
    progress: bool | None = False,
) -> Any:
    """Fine-tune a weighted-sum solution in place on CE (+ conv L2) with the l1 set's current
    zeros frozen (persistent mask, no l1 term, no thresholding); returns the TrainResult."""
    from prunelab.train import Trainer

    keep = {k: v for k, v in (method_options or {}).items() if k in ("l1_params", "conv_l2")}
    method = BiobjectiveTraining(weight=1.0, tau=0.0, persistent_mask=True, **keep)
    return Trainer(model, train, config, method, progress=progress).fit()


@dataclass
class WeightedSumRunner:
    """`evaluate(lambda)` for the searches: build a fresh model (`model_fn`, seeded inside),
    train it with `BiobjectiveTraining(weight=lambda, **method_options)` on `train` (whose
    test tensors are the validation split), then, with `finetune` set, fine-tune it with
    `finetune_sparse` for that config, and measure the validation objectives. `keep_epochs`
    keeps the weights after those epochs of the weighted sum in `FrontPoint.epoch_states`
    (for `finetune_from`)."""

    model_fn: Callable[[], nn.Module]
    train: Dataset
    config: TrainConfig
    method_options: dict[str, Any] = field(default_factory=dict)
    progress: bool | None = False
    keep_state: bool = True
    finetune: TrainConfig | None = None
    keep_epochs: tuple[int, ...] = ()
    cache: dict[float, FrontPoint] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.keep_epochs = tuple(int(e) for e in self.keep_epochs)
        for e in self.keep_epochs:
            check_range("keep_epochs", e, 1, self.config.epochs)

    def __call__(self, weight: float) -> FrontPoint:
        """Train at `weight` (runs are seeded, so a weight already trained is answered from
        the cache, as a copy, without training again)."""
        if weight in self.cache:
            hit = self.cache[weight]
            return replace(hit, extra=dict(hit.extra, cached=True))
        point = self._train(weight)
        self.cache[weight] = point
        return replace(point, extra=dict(point.extra))

    def finetune_from(self, point: FrontPoint, epoch: int,
                      config: TrainConfig | None = None) -> FrontPoint:
        """The weighted-sum solution of `point` after `epoch` epochs (kept by `keep_epochs`),
        fine-tuned with `finetune_sparse` under `config` (default: `self.finetune`) and
        measured on validation: the same network, bit for bit, as an `epoch`-epoch run with
        that fine-tune, provided the weighted sum's learning rate is constant (a decaying
        schedule depends on the run's length, so it is refused)."""
        config = config if config is not None else self.finetune
        if config is None:
            raise ConfigError("finetune_from needs a fine-tune TrainConfig")
        if self.config.lr_schedule != "constant":
            raise ConfigError("finetune_from needs a constant learning rate for the weighted "
                              f"sum (got lr_schedule={self.config.lr_schedule!r}): otherwise "
                              "epoch E of a longer run is not an E-epoch run")
        if epoch not in point.epoch_states:
            raise ConfigError(f"no weights kept after epoch {epoch} (kept: "
                              f"{sorted(point.epoch_states) or 'none'}); set keep_epochs")
        model = self.model_fn()
        model.load_state_dict(point.epoch_states[epoch])
        names = list(point.extra["nonzero_per_layer"])
        before = self._summary(model, names)
        seconds = point.extra.get("epoch_seconds", {}).get(epoch, 0.0)
        result = finetune_sparse(model, self.train, config, self.method_options, self.progress)
        extra = {"before_finetune": before, "weighted_sum_epochs": epoch,
                 "finetune_seconds": result.final["train_seconds"]}
        return self._point(point.weight, model, names, extra,
                           seconds + result.final["train_seconds"], result.final_state)

    def _summary(self, model: nn.Module, names: Sequence[str]) -> dict[str, Any]:
        from prunelab.train import evaluate

        val = evaluate(model, self.train.x_test, self.train.y_test)
        return {"val_accuracy": val["accuracy"], "val_ce": val["loss"],
                "nonzero": sum(dense_nonzero(model, names).values())}

    def _train(self, weight: float) -> FrontPoint:
        from prunelab.train import Trainer

        method = BiobjectiveTraining(weight=weight, **self.method_options)
        model = self.model_fn()
        config = replace(self.config, checkpoint_epochs=True) if self.keep_epochs \
            else self.config
        result = Trainer(model, self.train, config, method, progress=self.progress).fit()
        names = list(method.l1_set)
        kept = {e: result.checkpoints[f"epoch{e}"] for e in self.keep_epochs}
        extra: dict[str, Any] = {}
        if kept:
            extra["epoch_seconds"] = {e: result.metrics[e - 1]["seconds"] for e in kept}
        seconds = result.final["train_seconds"]
        if self.finetune is not None:
            extra["before_finetune"] = self._summary(model, names)
            result = finetune_sparse(model, self.train, self.finetune, self.method_options,
                                     self.progress)
            seconds += result.final["train_seconds"]
        point = self._point(weight, model, names, extra, seconds, result.final_state)
        point.epoch_states = kept
        return point

    def _point(self, weight: float, model: nn.Module, names: Sequence[str],
               extra: dict[str, Any], seconds: float,
               state: dict[str, torch.Tensor]) -> FrontPoint:
        """The FrontPoint of a trained `model`: validation CE, l1 of the parameters `names`."""
        from prunelab.train import evaluate

        val = evaluate(model, self.train.x_test, self.train.y_test)
        params = dict(model.named_parameters())
        l1_set = {n: params[n] for n in names}
        with torch.no_grad():
            l1 = float(l1_norm(l1_set))
        nz = dense_nonzero(model, names)
        total = sum(p.numel() for p in l1_set.values())
        extra = {
            **extra,
            "val_accuracy": val["accuracy"],
            "nonzero": sum(nz.values()),
            "l1_set_size": total,
            "pruned_fraction": 1.0 - sum(nz.values()) / max(total, 1),
            "nonzero_per_layer": nz,
            "train_seconds": seconds,
        }
        return FrontPoint(weight, val["loss"], l1, extra,
                          state=state if self.keep_state else None)
