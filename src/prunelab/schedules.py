"""Sparsity schedules: pure, serialisable functions of the training step.

- `ConstantSchedule`: one value.
- `PolynomialSchedule` (Zhu & Gupta 2017): s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^p
  for t0 <= t <= t1, updated every `frequency` steps; p = 3 is their cubic schedule.
- `AnnealingSchedule` (Barbu et al.'s Feature Selection with Annealing, used by Guo et al.):
  the number of kept weights M_e = k + (M - k) max(0, (N - 2e) / (2 e mu + N)) after
  iteration e; reaches k at e = N / 2.
- `CosineSchedule` (RigL's drop fraction, Evci et al. 2020): f_t = f_0 (1 + cos(pi t / T_end)) / 2
  for t < T_end, with updates every `frequency` steps before T_end.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from prunelab.errors import ConfigError, UnknownNameError, check_range


@dataclass(frozen=True)
class ConstantSchedule:
    """Always `value`."""

    value: float

    def __call__(self, step: int) -> float:
        return self.value

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "constant", **asdict(self)}


@dataclass(frozen=True)
class PolynomialSchedule:
    """Sparsity rising from `initial` at step `begin` to `final` at step `end`, changing only
    every `frequency` steps (Zhu & Gupta's gradual pruning with `power`=3)."""

    initial: float
    final: float
    begin: int
    end: int
    frequency: int = 100
    power: float = 3.0

    def __post_init__(self) -> None:
        check_range("initial sparsity", self.initial, 0.0, 1.0, high_inclusive=False)
        check_range("final sparsity", self.final, 0.0, 1.0, high_inclusive=False)
        check_range("pruning begin step", self.begin, 0)
        if self.end < self.begin:
            raise ConfigError(f"pruning end step ({self.end}) must be >= begin ({self.begin})")
        check_range("pruning frequency", self.frequency, 1)

    def __call__(self, step: int) -> float:
        if step < self.begin:
            return 0.0
        if step >= self.end or self.end == self.begin:
            return self.final
        t = self.begin + ((step - self.begin) // self.frequency) * self.frequency
        frac = 1.0 - (t - self.begin) / (self.end - self.begin)
        return self.final + (self.initial - self.final) * frac**self.power

    def is_update_step(self, step: int) -> bool:
        """True at the steps where the target changes: begin, every `frequency`, and end."""
        if step < self.begin or step > self.end:
            return False
        return (step - self.begin) % self.frequency == 0 or step == self.end

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "polynomial", **asdict(self)}


@dataclass(frozen=True)
class AnnealingSchedule:
    """Kept-weight count after annealing iteration e: k + (M - k) max(0, (N - 2e)/(2 e mu + N))."""

    total: int  # M
    keep: int  # k
    length: int  # N
    mu: float = 20.0

    def __post_init__(self) -> None:
        check_range("keep count", self.keep, 1)
        if self.keep > self.total:
            raise ConfigError(f"keep count ({self.keep}) exceeds the weights ({self.total})")
        check_range("annealing length", self.length, 1)
        check_range("mu", self.mu, 0.0, low_inclusive=False)

    def keep_count(self, e: int) -> int:
        n, k, m = self.length, self.keep, self.total
        frac = max(0.0, (n - 2 * e) / (2 * e * self.mu + n))
        return k + int(math.floor((m - k) * frac + 1e-9))

    def __call__(self, e: int) -> float:
        """Sparsity after iteration e."""
        return 1.0 - self.keep_count(e) / self.total

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "annealing", **asdict(self)}


@dataclass(frozen=True)
class CosineSchedule:
    """A value decaying from `initial` at step 0 to `final` at step `end` along half a cosine
    (RigL's drop fraction), `final` from `end` on; `is_update_step` marks every `frequency`-th
    step strictly between 0 and `end` (the mask updates of dynamic sparse training)."""

    initial: float
    end: int
    frequency: int = 100
    final: float = 0.0

    def __post_init__(self) -> None:
        check_range("initial value", self.initial, 0.0, 1.0)
        check_range("final value", self.final, 0.0, self.initial)
        check_range("end step", self.end, 1)
        check_range("update frequency", self.frequency, 1)

    def __call__(self, step: int) -> float:
        if step >= self.end:
            return self.final
        t = max(step, 0) / self.end
        return self.final + (self.initial - self.final) * 0.5 * (1.0 + math.cos(math.pi * t))

    def is_update_step(self, step: int) -> bool:
        """True at steps frequency, 2 frequency, ... below `end`."""
        return 0 < step < self.end and step % self.frequency == 0

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "cosine", **asdict(self)}


SCHEDULES = {
    "constant": ConstantSchedule,
    "polynomial": PolynomialSchedule,
    "annealing": AnnealingSchedule,
    "cosine": CosineSchedule,
}


def schedule_from_dict(d: dict[str, Any]):
    """Inverse of `to_dict`."""
    d = dict(d)
    kind = d.pop("kind", None)
    if kind not in SCHEDULES:
        raise UnknownNameError("schedule", str(kind), SCHEDULES)
    return SCHEDULES[kind](**d)
