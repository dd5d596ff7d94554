"""Linear mode connectivity and instability (Frankle, Dziugaite, Roy & Carbin 2020).

From one point of training (the weights at step k: a checkpoint or rewind point, optionally
restricted to a mask), two copies are trained for the rest of the recipe (the remaining
T - k steps) with different data orders, i.e. different SGD noise, and the loss and error are
evaluated along the straight line between the two results (`prunelab.landscape.paths.
interpolate`). Frankle et al.'s barrier ("instability") is

    max over a in [0, 1] of  E((1 - a) w_A + a w_B)  -  (E(w_A) + E(w_B)) / 2

for E the error (their headline) or the loss (both are reported): the highest point of the
line above the *mean* of the endpoints. (`paths.barrier_height` subtracts the chord
(1 - a) E_A + a E_B instead; the two agree when E_A = E_B.) A network is stable at k when the
barrier is about zero; `instability` returns it as a function of the rewind point k.

The copies are ordinary `prunelab.train.run` runs of the same config with `steps` = T - k, a
fresh optimizer (as in Frankle et al.'s code, which keeps weights only), the data split of the
original seed, and data-order seeds `seeds` (default: seed + 1 and seed + 2). The learning-rate
schedule continues from step k rather than restarting: the copies' method is wrapped so that
each step's learning rate is the original run's at step k + s (set in `batch_loss`, which the
Trainer calls after its own learning-rate assignment and before the optimizer step).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.config import RunConfig
from prunelab.errors import ConfigError, check_range
from prunelab.landscape.paths import PathResult, _unit_interval, interpolate, line_points
from prunelab.masks import Masks
from prunelab.methods import FixedMask, PruningMethod, TrainContext

__all__ = ["ContinuedSchedule", "LMCResult", "frankle_barrier", "instability",
           "instability_from_run", "linear_mode_connectivity", "total_steps"]


def frankle_barrier(ts: Sequence[float], values: Sequence[float]) -> float:
    """max over t in [0, 1] of values(t) minus the mean of values(0) and values(1)."""
    _, v = _unit_interval(ts, values)
    return max(v) - 0.5 * (v[0] + v[-1])


@dataclass
class LMCResult:
    """The line between two copies trained from step `start_step`, and its barriers."""

    start_step: int
    seeds: tuple[int, int]
    path: PathResult
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)

    def barrier(self, split: str = "test", metric: str = "error") -> float:
        """Frankle's barrier of the error ('error') or the loss ('loss') on `split`."""
        if metric == "loss":
            values = self.path.loss(split)
        elif metric == "error":
            values = [1.0 - a for a in self.path.accuracy(split)]
        else:
            raise ConfigError(f"metric must be 'error' or 'loss', got '{metric}'")
        return frankle_barrier(self.path.t, values)

    def barriers(self) -> dict[str, dict[str, float]]:
        return {s: {"error": self.barrier(s, "error"), "loss": self.barrier(s, "loss")}
                for s in self.path.metrics}

    def to_dict(self) -> dict[str, Any]:
        return {"start_step": self.start_step, "seeds": list(self.seeds),
                "barriers": self.barriers(), "endpoints": self.endpoints,
                "path": self.path.to_dict()}


class ContinuedSchedule(PruningMethod):
    """Wraps a method so a run of the last T - k steps follows the original run's learning
    rate at steps k, k + 1, ... (see the module docstring); every hook is delegated."""

    def __init__(self, inner: PruningMethod, train_cfg, offset: int, total: int):
        self.inner, self.train_cfg, self.offset, self.total = inner, train_cfg, offset, total
        self.name = inner.name
        self._done = 0

    def attach(self, ctx: TrainContext) -> None:
        self.ctx = ctx
        self.inner.attach(ctx)

    def batch_loss(self, model, x, y, loss_fn):
        from prunelab.train import lr_factor

        lr = self.train_cfg.lr * lr_factor(self.train_cfg, self.offset + self._done, self.total)
        for group in self.ctx.optimizer.param_groups:
            group["lr"] = lr
        return self.inner.batch_loss(model, x, y, loss_fn)

    def penalty(self, model):
        return self.inner.penalty(model)

    def after_step(self, step: int) -> None:
        self._done = step
        self.inner.after_step(step)

    def after_epoch(self, epoch: int) -> None:
        self.inner.after_epoch(epoch)

    @property
    def masks(self):
        return self.inner.masks

    def metrics(self):
        return self.inner.metrics()

    def write_outputs(self, out_dir: Path) -> None:
        self.inner.write_outputs(out_dir)

    def options(self):
        return self.inner.options()

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state) -> None:
        self.inner.load_state_dict(state)

    def __getattr__(self, name: str):  # anything else a trainer may ask the inner method
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def total_steps(cfg: RunConfig, data: Any) -> int:
    """The number of optimizer steps of the config's training on `data`."""
    if cfg.train.steps is not None:
        return int(cfg.train.steps)
    if hasattr(data, "steps_per_epoch"):
        per_epoch = int(data.steps_per_epoch(cfg.train.batch_size))
    else:
        per_epoch = max(1, math.ceil(int(data.n_train) / cfg.train.batch_size))
    return cfg.train.epochs * per_epoch


def _build_model(cfg: RunConfig, data: Any) -> nn.Module:
    from prunelab.models import build_model

    return build_model(cfg.model, data.input_shape, data.num_classes, **cfg.model_options)


def _train_copy(cfg: RunConfig, state: Mapping[str, torch.Tensor], start: int, total: int,
                seed: int, masks: Masks | None, data: Any, progress: bool | None):
    from prunelab.train import run

    new = copy.deepcopy(cfg)
    new.train.steps = total - start
    new.train.seed = seed
    new.train.checkpoint_steps = []
    new.train.checkpoint_epochs = False
    new.train.eval_train = False
    if masks is not None:
        new.method, new.method_options = "fixed-mask", {}
        inner: PruningMethod = FixedMask(masks_in={k: v.clone() for k, v in masks.items()})
    else:
        new.method, new.method_options = "dense", {}
        inner = PruningMethod()
    method = ContinuedSchedule(inner, cfg.train, start, total)
    return run(new, None, progress=progress, data=data, method=method,
               initial_state={k: v.clone() for k, v in state.items()})


def linear_mode_connectivity(
    cfg: RunConfig,
    state: Mapping[str, torch.Tensor],
    start_step: int,
    *,
    data: Any = None,
    masks: Masks | None = None,
    seeds: tuple[int, int] | None = None,
    points: int = 11,
    splits: Sequence[str] = ("train", "test"),
    bn: str = "recompute",
    progress: bool | None = False,
) -> LMCResult:
    """Train two copies of `state` (the weights at step `start_step` of `cfg`'s training,
    restricted to `masks` when given) for the remaining steps with data-order seeds `seeds`,
    and evaluate the line between them at `points` values of t in [0, 1]."""
    from prunelab.train import load_data

    check_range("points", points, 2)
    data = load_data(cfg) if data is None else data
    total = total_steps(cfg, data)
    if not 0 <= start_step < total:
        raise ConfigError(f"start step {start_step} must be in [0, {total}) (training has "
                          f"{total} steps)")
    seeds = seeds or (cfg.train.seed + 1, cfg.train.seed + 2)
    if len(seeds) != 2:
        raise ConfigError(f"seeds must be two data-order seeds, got {list(seeds)}")
    runs = [_train_copy(cfg, state, start_step, total, int(s), masks, data, progress)
            for s in seeds]
    model = _build_model(cfg, data)
    path = interpolate(runs[0].final_state, runs[1].final_state, data, model=model,
                       ts=line_points(points, 0.0, 1.0), splits=splits, bn=bn)
    path.info.update({"start_step": start_step, "seeds": list(seeds)})
    ends = {label: {"test_accuracy": r.final["test_accuracy"], "test_loss": r.final["test_loss"]}
            for label, r in zip(("a", "b"), runs)}
    return LMCResult(start_step, (int(seeds[0]), int(seeds[1])), path, ends)


def instability(
    cfg: RunConfig,
    rewind_steps: Sequence[int],
    *,
    data: Any = None,
    masks: Masks | None = None,
    states: Mapping[int, Mapping[str, torch.Tensor]] | None = None,
    seeds: tuple[int, int] | None = None,
    points: int = 11,
    splits: Sequence[str] = ("train", "test"),
    bn: str = "recompute",
    progress: bool | None = False,
) -> list[LMCResult]:
    """Frankle et al.'s instability as a function of the rewind point: for each step k in
    `rewind_steps`, `linear_mode_connectivity` from the weights at step k. Those come from
    `states` ({k: state}) or from one parent run of `cfg` saving them (`checkpoint_steps`)."""
    from prunelab.train import load_data, run

    if not rewind_steps:
        raise ConfigError("give at least one rewind step")
    data = load_data(cfg) if data is None else data
    total = total_steps(cfg, data)
    for k in rewind_steps:
        if not 0 <= int(k) < total:
            raise ConfigError(f"rewind step {k} must be in [0, {total})")
    if states is None:
        parent = copy.deepcopy(cfg)
        parent.train.checkpoint_steps = sorted({*cfg.train.checkpoint_steps,
                                                *[int(k) for k in rewind_steps if k > 0]})
        result = run(parent, None, progress=progress, data=data)
        states = {int(k): result.checkpoints[f"step{int(k)}"] for k in rewind_steps}
    missing = [k for k in rewind_steps if int(k) not in states]
    if missing:
        raise ConfigError(f"no weights for rewind step {missing[0]}")
    return [linear_mode_connectivity(cfg, states[int(k)], int(k), data=data, masks=masks,
                                     seeds=seeds, points=points, splits=splits, bn=bn,
                                     progress=progress)
            for k in rewind_steps]


def instability_from_run(
    run_dir: str | Path,
    rewind: Sequence[str],
    *,
    masks: Masks | None = None,
    data: Any = None,
    seeds: tuple[int, int] | None = None,
    points: int = 11,
    splits: Sequence[str] = ("train", "test"),
    bn: str = "recompute",
    progress: bool | None = False,
) -> list[LMCResult]:
    """`instability` from a finished run's saved weights: `rewind` points as `retrain` takes
    them ('0' the init, 'K' epoch K, 'Kit' step K; the run must have saved them)."""
    from prunelab.retrain import parse_init
    from prunelab.runs import load_run
    from prunelab.train import load_data

    loaded = load_run(run_dir)
    cfg = loaded.config
    data = load_data(cfg) if data is None else data
    per_epoch = max(1, total_steps(cfg, data) // cfg.train.epochs) \
        if cfg.train.steps is None else None
    states: dict[int, Mapping[str, torch.Tensor]] = {}
    steps = []
    for spec in rewind:
        _, ckpt = parse_init(f"rewind:{spec}")
        if ckpt == "step0":
            k, state = 0, loaded.state("init")
        elif ckpt.startswith("step"):
            k, state = int(ckpt[4:]), loaded.state(ckpt)
        else:
            if per_epoch is None:
                raise ConfigError(f"run {run_dir} was trained by steps; give rewind points in "
                                  "steps (e.g. 100it)")
            k, state = int(ckpt[5:]) * per_epoch, loaded.state(ckpt)
        states[k] = state
        steps.append(k)
    return instability(cfg, steps, data=data, masks=masks, states=states, seeds=seeds,
                       points=points, splits=splits, bn=bn, progress=progress)
