"""Annealed connection pruning (Guo, She, Wu, Barbu; schedule from Barbu et al.'s Feature
Selection with Annealing).

With M prunable weights, target k, annealing length N and rate mu, after annealing iteration
e (e = 1, 2, ...) the M_e = k + (M - k) max(0, (N - 2e) / (2 e mu + N)) weights of largest |w|
are kept and the rest zeroed for good (never revived). M_e reaches k at e = N / 2; training
then goes on at k weights. Biases are not pruned.

Choices where the papers leave room (all options):
- `unit`: an annealing iteration is an epoch (default) or an optimizer step. Iterations are
  counted from the end of the dense warm-up (`warmup` epochs or steps in the same unit).
- `length` (N): defaults to the training length left after the warm-up, so the target is
  reached half way through the remaining training.
- `scope="global"` ranks all layers' weights together; `scope="layer"` runs the schedule in
  each layer with its own M_l and k_l (k_l = round(M_l (1 - sparsity)), or the `keep` count
  shared in proportion to layer size, as `prunelab.selection` does).
- The annealing must fit in training: warmup + ceil(N / 2) <= training length (in `unit`).
- `min_layer_keep` (global scope only, default 0): each layer's that-many largest surviving
  weights are always among the kept ones, so a global target cannot empty a small layer (e.g.
  the output layer of a net on thousands of inputs). With 0, a global step that would empty a
  layer raises ConfigError.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from prunelab.errors import ConfigError, check_range
from prunelab.masks import prunable_parameters
from prunelab.methods.base import MaskedMethod, TrainContext
from prunelab.schedules import AnnealingSchedule
from prunelab.selection import select_masks

UNITS = ("epoch", "step")


@dataclass
class AnnealingPlan:
    """The resolved annealing: when it prunes and to how many weights (global or per layer)."""

    unit: str
    warmup: int
    length: int
    scope: str
    schedules: dict[str, AnnealingSchedule]  # {"*": schedule} for global scope

    @property
    def end(self) -> int:
        """The iteration (in `unit`, counted from the start of training) reaching the target."""
        return self.warmup + math.ceil(self.length / 2)

    def keep_counts(self, t: int) -> dict[str, int] | None:
        """Keep counts after iteration t of training (t in `unit`, from 1); None: no pruning."""
        e = t - self.warmup
        if e < 1 or e > math.ceil(self.length / 2):
            return None
        return {name: s.keep_count(e) for name, s in self.schedules.items()}


def resolve_keep(
    sizes: Mapping[str, int], *, sparsity: float | None, keep: int | None, scope: str
) -> dict[str, int]:
    """Target keep counts: {"*": k} for global scope, {layer: k_l} per layer. A target that
    leaves a layer (or the net) without weights raises ConfigError."""
    total = sum(sizes.values())
    if scope == "global":
        k = int(keep) if keep is not None else int(round(total * (1.0 - sparsity)))
        if not 1 <= k <= total:
            raise ConfigError(f"annealed target keep count must be in [1, {total}] (the prunable "
                              f"weights), got {k}")
        return {"*": k}
    out = {}
    for name, m in sizes.items():
        k = (int(round(m * (1.0 - sparsity))) if sparsity is not None
             else int(round(keep * m / total)))
        if k < 1:
            raise ConfigError(f"target leaves no weight in layer '{name}' ({m} weights); lower "
                              "the sparsity or raise keep")
        out[name] = min(k, m)
    return out


def protect_top(scores: torch.Tensor, m: int, *, stacked: bool = False) -> torch.Tensor:
    """Scores with the m largest surviving (> -inf) entries raised to the largest finite float
    so a selection keeps them; per member along dim 0 when `stacked`, else over the tensor."""
    flat = scores.reshape(scores.shape[0], -1) if stacked else scores.reshape(1, -1)
    vals, idx = torch.topk(flat, min(m, flat.shape[1]), dim=1)
    top = torch.full_like(vals, torch.finfo(scores.dtype).max)
    out = flat.clone()
    out.scatter_(1, idx, torch.where(torch.isfinite(vals), top, vals))
    return out.view_as(scores)


@dataclass
class AnnealedPruning(MaskedMethod):
    """Annealed magnitude pruning to `keep` weights (or `sparsity`), rate `mu`, over `length`
    iterations (`unit`: epoch or step) after `warmup` dense iterations; see the module doc."""

    sparsity: float | None = None
    keep: int | None = None
    mu: float = 20.0
    length: int | None = None
    unit: str = "epoch"
    warmup: int = 0
    min_layer_keep: int = 0

    name = "annealed"
    resume_attributes = ("keep_target",)

    def __post_init__(self) -> None:
        if self.sparsity is not None and self.keep is not None:
            raise ConfigError("method 'annealed' takes sparsity or keep, not both")
        if self.sparsity is None and self.keep is None:
            self.sparsity = 0.9
        if self.sparsity is not None:
            check_range("sparsity", self.sparsity, 0.0, 1.0, high_inclusive=False)
        if self.keep is not None:
            check_range("keep", self.keep, 1)
        check_range("mu", self.mu, 0.0, low_inclusive=False)
        if self.length is not None:
            check_range("length", self.length, 1)
        check_range("warmup", self.warmup, 0)
        check_range("min_layer_keep", self.min_layer_keep, 0)
        if self.unit not in UNITS:
            raise ConfigError(f"unit must be one of {', '.join(UNITS)}; got '{self.unit}'")
        if self.scope not in ("global", "layer"):
            raise ConfigError(f"scope must be 'global' or 'layer', got '{self.scope}'")

    def plan(self, sizes: Mapping[str, int], *, epochs: int, total_steps: int) -> AnnealingPlan:
        """Resolve the schedule for layers of `sizes` and a training length; checks that the
        annealing fits in training."""
        horizon = epochs if self.unit == "epoch" else total_steps
        if self.warmup >= horizon:
            raise ConfigError(f"warmup ({self.warmup} {self.unit}s) must be shorter than "
                              f"training ({horizon} {self.unit}s)")
        length = self.length if self.length is not None else horizon - self.warmup
        if self.warmup + math.ceil(length / 2) > horizon:
            raise ConfigError(
                f"annealing longer than training: warmup + length/2 = {self.warmup} + "
                f"{math.ceil(length / 2)} {self.unit}s > {horizon}; length must be <= "
                f"{2 * (horizon - self.warmup)}"
            )
        keeps = resolve_keep(sizes, sparsity=self.sparsity, keep=self.keep, scope=self.scope)
        if self.scope == "global" and self.min_layer_keep * len(sizes) > keeps["*"]:
            raise ConfigError(f"min_layer_keep ({self.min_layer_keep}) x {len(sizes)} layers "
                              f"exceeds the keep count ({keeps['*']})")
        total = sum(sizes.values())
        schedules = {
            name: AnnealingSchedule(total if name == "*" else sizes[name], k, length, self.mu)
            for name, k in keeps.items()
        }
        return AnnealingPlan(self.unit, self.warmup, length, self.scope, schedules)

    def attach(self, ctx: TrainContext) -> None:
        super().attach(ctx)
        sizes = {n: m.numel() for n, m in self.enforcer.masks.items()}
        self.annealing = self.plan(sizes, epochs=ctx.epochs, total_steps=ctx.total_steps)
        self.keep_target = sum(sizes.values())

    def after_step(self, step: int) -> None:
        if self.annealing.unit == "step":
            self._anneal(step)

    def after_epoch(self, epoch: int) -> None:
        if self.annealing.unit == "epoch":
            self._anneal(epoch)

    @torch.no_grad()
    def _anneal(self, t: int) -> None:
        counts = self.annealing.keep_counts(t)
        if counts is None:
            return
        self.keep_target = sum(counts.values())
        params = prunable_parameters(self.ctx.model)
        current = self.enforcer.masks
        if sum(int(m.sum()) for m in current.values()) <= self.keep_target:
            return
        scores = {n: params[n].detach().abs() for n in current}
        if self.annealing.scope == "global" and self.min_layer_keep > 0:
            scores = {n: protect_top(s.masked_fill(~current[n], -math.inf), self.min_layer_keep)
                      for n, s in scores.items()}
        if self.annealing.scope == "global":
            new = select_masks(scores, keep=counts["*"], scope="global", current=current)
        else:
            new = {n: select_masks({n: scores[n]}, keep=counts[n], scope="global",
                                   current={n: current[n]})[n] for n in scores}
        self.enforcer.update(new)

    def metrics(self) -> dict[str, float]:
        out = super().metrics()
        if hasattr(self, "annealing"):
            out["annealing_keep"] = float(self.keep_target)
        return out

    def options(self) -> dict[str, Any]:
        return {"scope": self.scope, "sparsity": self.sparsity, "keep": self.keep, "mu": self.mu,
                "length": self.length, "unit": self.unit, "warmup": self.warmup,
                "keep_first_last": self.keep_first_last}
