"""Magnitude pruning: one-shot (prune once, then fine-tune), gradual (Zhu & Gupta's cubic
schedule) and a fixed mask (retraining a given sparse sub-network)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from prunelab.errors import ConfigError, check_range
from prunelab.masks import Masks, validate_masks
from prunelab.methods.base import MaskedMethod, TrainContext
from prunelab.schedules import PolynomialSchedule


def _check_scope(scope: str) -> None:
    if scope not in ("global", "layer"):
        raise ConfigError(f"scope must be 'global' or 'layer', got '{scope}'")


@dataclass
class OneShotMagnitude(MaskedMethod):
    """Prune the smallest |w| to `sparsity` once, after epoch `at_epoch` (0: before training;
    default: half way), then keep training with the mask enforced."""

    sparsity: float = 0.9
    at_epoch: int | None = None

    name = "magnitude"

    def __post_init__(self) -> None:
        check_range("sparsity", self.sparsity, 0.0, 1.0, high_inclusive=False)
        _check_scope(self.scope)
        if self.at_epoch is not None:
            check_range("at_epoch", self.at_epoch, 0)

    def attach(self, ctx: TrainContext) -> None:
        super().attach(ctx)
        self._at = ctx.epochs // 2 if self.at_epoch is None else self.at_epoch
        if self._at > ctx.epochs:
            raise ConfigError(f"at_epoch ({self._at}) is after the last epoch ({ctx.epochs})")
        if self._at == 0:
            self.prune_by_magnitude(self.sparsity)

    def after_epoch(self, epoch: int) -> None:
        if epoch == self._at:
            self.prune_by_magnitude(self.sparsity)


def _resolve_step(value: float | int, total: int, option: str) -> int:
    """A float in [0, 1] is a fraction of training; an int is a step number."""
    if isinstance(value, float):
        check_range(option, value, 0.0, 1.0)
        return int(round(value * total))
    check_range(option, value, 0)
    return int(value)


@dataclass
class GradualMagnitude(MaskedMethod):
    """Gradual magnitude pruning (Zhu & Gupta 2017): the sparsity target follows a polynomial
    (cubic) schedule from `initial_sparsity` at `begin` to `sparsity` at `end`, applied every
    `frequency` steps. `begin`/`end` are steps (int) or fractions of training (float)."""

    sparsity: float = 0.9
    initial_sparsity: float = 0.0
    begin: float | int = 0.2
    end: float | int = 0.6
    frequency: int = 100
    power: float = 3.0

    name = "gmp"

    def __post_init__(self) -> None:
        check_range("sparsity", self.sparsity, 0.0, 1.0, high_inclusive=False)
        check_range("initial_sparsity", self.initial_sparsity, 0.0, self.sparsity)
        check_range("frequency", self.frequency, 1)
        _check_scope(self.scope)

    def attach(self, ctx: TrainContext) -> None:
        super().attach(ctx)
        begin = _resolve_step(self.begin, ctx.total_steps, "begin")
        end = _resolve_step(self.end, ctx.total_steps, "end")
        if end > ctx.total_steps:
            raise ConfigError(f"pruning end step {end} is after training ends ({ctx.total_steps})")
        self.schedule = PolynomialSchedule(
            self.initial_sparsity, self.sparsity, begin, end, self.frequency, self.power
        )
        if begin == 0:
            self.prune_by_magnitude(self.schedule(0))

    def after_step(self, step: int) -> None:
        if self.schedule.is_update_step(step):
            self.prune_by_magnitude(self.schedule(step))

    def metrics(self) -> dict[str, float]:
        return {"mask_sparsity": self.current_sparsity()}


@dataclass
class FixedMask(MaskedMethod):
    """Train with a given mask held fixed (retraining baselines, lottery tickets). The mask
    comes from `masks_in` or is loaded from `masks_path` (a masks.pt file)."""

    masks_path: str | None = None
    masks_in: Masks | None = field(default=None, repr=False)

    name = "fixed-mask"

    def __post_init__(self) -> None:
        if self.masks_in is None and self.masks_path is None:
            raise ConfigError("method 'fixed-mask' needs masks_path (a masks.pt file)")
        if self.keep_first_last:
            raise ConfigError("method 'fixed-mask' takes its layers from the mask file; "
                              "keep_first_last does not apply (leave those layers out of it)")

    def initial_masks(self, model: nn.Module) -> Masks:
        if self.masks_in is None:
            from prunelab.masks import load_masks

            self.masks_in = load_masks(self.masks_path, model)
        validate_masks(model, self.masks_in)
        return dict(self.masks_in)

    def options(self) -> dict:
        return {"scope": self.scope, "masks_path": self.masks_path}
