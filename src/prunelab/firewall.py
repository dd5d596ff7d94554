"""The test-set firewall: every choice is made on validation data, the test split is handed out
only after the choices are frozen, and every hand-out is recorded.

A reproduction creates one `Firewall`, loads its data through it (`fw.load(...)` or
`fw.guard(dataset)`: a `GuardedDataset` whose `x_test` / `y_test` cannot be read), makes its
choices on `fw.validation(data, fraction)` (the training set minus a held-out part that plays
the test split, so a Trainer evaluating "test" every epoch sees only validation data), then
calls `fw.freeze(**choices)`. From then on `fw.test(data, what=..., metric=...)` returns the
dataset with its test split and records the access; before the freeze it raises
`FirewallError`. `fw.to_results()` goes into results.json: the frozen choices and the list of
test evaluations, in order, with what was evaluated, which metric and when.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timezone
from typing import Any

from prunelab.data import Dataset

_SEALED = ("x_test", "y_test")


class FirewallError(RuntimeError):
    """The test split was read before the selection was frozen, or outside `Firewall.test`:
    a defect of the reproduction, not a user error."""


def _sealed(name: str) -> property:
    key = f"_sealed_{name}"

    def get(self: GuardedDataset) -> Any:
        fw = self.__dict__.get("_firewall")
        study = fw.study if fw is not None else "?"
        raise FirewallError(
            f"{study}: {name} of '{self.name}' was read directly; the test split is only "
            "handed out by Firewall.test(data, what=...) after Firewall.freeze()")

    def put(self: GuardedDataset, value: Any) -> None:
        self.__dict__[key] = value

    return property(get, put)


class GuardedDataset(Dataset):
    """A Dataset whose test split is sealed: reading `x_test` or `y_test` raises
    `FirewallError`. Training data, sizes and metadata stay readable; `holdout_validation`
    and `subset_train` work (the latter returns a guarded copy); `dataclasses.replace` reads
    the test split and so raises too."""

    x_test = _sealed("x_test")
    y_test = _sealed("y_test")

    @property
    def n_test(self) -> int:
        return int(self.__dict__["_sealed_x_test"].shape[0])

    def subset_train(self, n: int, seed: int = 0) -> Dataset:
        return self.__dict__["_firewall"].guard(_unsealed(self).subset_train(n, seed))

    def __repr__(self) -> str:
        return (f"GuardedDataset(name={self.name!r}, n_train={self.n_train}, "
                f"n_test={self.n_test}, test split sealed)")


def _unsealed(data: Dataset) -> Dataset:
    """The plain Dataset behind `data` (itself when it is not guarded); tensors are shared."""
    if not isinstance(data, GuardedDataset):
        return data
    values = {f.name: (data.__dict__[f"_sealed_{f.name}"] if f.name in _SEALED
                       else getattr(data, f.name)) for f in dataclasses.fields(Dataset)}
    return Dataset(**values)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Firewall:
    """Seals a study's test split until its choices are frozen and records every test
    evaluation (see the module docstring)."""

    def __init__(self, study: str):
        self.study = study
        self._start = time.perf_counter()
        self._choices: dict[str, Any] | None = None
        self._frozen_at: str | None = None
        self._frozen_after: float | None = None
        self._evaluations: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ data

    def guard(self, data: Dataset) -> GuardedDataset:
        """`data` with its test split sealed by this firewall (tensors shared, not copied)."""
        if isinstance(data, GuardedDataset) and data.__dict__.get("_firewall") is not self:
            raise FirewallError(f"{self.study}: '{data.name}' is guarded by another firewall")
        plain = _unsealed(data)
        guarded = GuardedDataset(**{f.name: getattr(plain, f.name)
                                    for f in dataclasses.fields(Dataset)})
        guarded.__dict__["_firewall"] = self
        return guarded

    def load(self, name: str, **options: Any) -> GuardedDataset:
        """`prunelab.data.load_dataset(name, **options)` with the test split sealed."""
        from prunelab.data import load_dataset

        return self.guard(load_dataset(name, **options))

    @staticmethod
    def validation(data: Dataset, fraction: float, seed: int = 0) -> Dataset:
        """The training set minus a seeded, stratified `fraction` that takes the test split's
        place (`Dataset.holdout_validation`): choices are made here; no test data inside."""
        return data.holdout_validation(fraction, seed)

    # ------------------------------------------------------------------ selection

    def freeze(self, **choices: Any) -> None:
        """Record the choices made (on validation data); the test split opens after this."""
        if self.frozen:
            raise FirewallError(f"{self.study}: the selection was frozen twice")
        self._choices = _jsonable(choices)
        self._frozen_at = _now()
        self._frozen_after = time.perf_counter() - self._start

    @property
    def frozen(self) -> bool:
        return self._choices is not None

    @property
    def choices(self) -> dict[str, Any]:
        return dict(self._choices or {})

    # ------------------------------------------------------------------ test access

    def _check(self, what: str) -> None:
        if not self.frozen:
            raise FirewallError(
                f"{self.study}: test metrics were asked for ({what}) before the selection was "
                "frozen; make every choice on validation data and call Firewall.freeze() first")

    def record(self, what: str, metric: str, count: int = 1) -> None:
        """Record test evaluations made on data the firewall did not hand out (e.g. data a
        library function draws itself); refused before the freeze like `test`."""
        self._check(what)
        self._evaluations.append({
            "index": len(self._evaluations) + 1, "what": what, "metric": metric,
            "count": int(count), "at": _now(),
            "seconds_after_start": round(time.perf_counter() - self._start, 3)})

    def test(self, data: Dataset, what: str, metric: str = "test accuracy",
             count: int = 1) -> Dataset:
        """`data` with its test split readable, for the final numbers only: recorded with
        `what` is evaluated (model or run), the `metric` and how many evaluations (`count`)."""
        if isinstance(data, GuardedDataset) and data.__dict__.get("_firewall") is not self:
            raise FirewallError(f"{self.study}: '{data.name}' is guarded by another firewall")
        self.record(what, metric, count)
        return _unsealed(data)

    @property
    def evaluations(self) -> list[dict[str, Any]]:
        return [dict(e) for e in self._evaluations]

    def to_results(self) -> dict[str, Any]:
        """For results.json: the frozen selection and every test evaluation, in order."""
        return {"selection": {"study": self.study, "frozen": self.frozen,
                              "frozen_at": self._frozen_at,
                              "frozen_after_seconds": None if self._frozen_after is None
                              else round(self._frozen_after, 3),
                              "choices": self.choices},
                "test_evaluations": self.evaluations}

    def report_lines(self) -> list[str]:
        """The report's firewall section: the choices, then the test evaluations."""
        lines = [f"Choices frozen {self._frozen_after or 0:.0f} s into the run, before any "
                 "test data was read: `" + ", ".join(f"{k}={v}" for k, v in
                                                    self.choices.items()) + "`.", ""]
        total = sum(e["count"] for e in self._evaluations)
        lines.append(f"Test evaluations afterwards ({len(self._evaluations)} records, "
                     f"{total} evaluations; all in results.json `test_evaluations`):")
        lines.append("")
        lines += [f"{e['index']}. {e['what']} ({e['metric']}"
                  + (f", {e['count']} evaluations" if e["count"] != 1 else "") + ")"
                  for e in self._evaluations]
        return lines


__all__ = ["Firewall", "FirewallError", "GuardedDataset"]
