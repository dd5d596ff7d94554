"""Declared claims and their verdicts, the same rules for every reproduction.

Each reproduction declares its claims in one table at import time (`declare(...)`), before
anything runs: what is measured, the comparison, its direction and threshold, the statistic
and how many seeds (or splits) the full setting needs. After the run, `judge_all` turns the
measured values into verdicts with one set of rules:

- Paired comparisons (`paired_bootstrap`, `sign_test`) take one value per seed, split or test
  example for each side; the estimate is the mean difference A - B with a 95% percentile
  interval from a seeded paired bootstrap (10,000 resamples). `bootstrap_mean` is the same for
  one quantity measured several times. The exact sign test is reported beside every paired
  comparison over seeds or splits and decides `sign_test` claims.
- "held" only when the 95% interval lies entirely on the claimed side of the threshold; "not
  held" when it lies entirely on the other side; "inconclusive" when it straddles the threshold.
  A straddling interval is never held.
- Fewer values than the declaration asks for give "too few runs (n=3 < 10)", never held.
- `single` claims have one measurement and no interval: value against threshold, labelled as
  such in every report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from prunelab.report import markdown_table

DIRECTIONS = (">", ">=", "<", "<=")
STATISTICS = {
    "paired_bootstrap": "paired bootstrap of the mean difference",
    "sign_test": "exact sign test (paired)",
    "bootstrap_mean": "bootstrap of the mean",
    "single": "single measurement, no interval",
}
HELD, NOT_HELD, INCONCLUSIVE, NOT_MEASURED = "held", "not held", "inconclusive", "not measured"
RESAMPLES = 10_000
LEVEL = 0.95


@dataclass(frozen=True)
class Claim:
    """One declared claim. `comparison` names what is measured ("annealed - dense" for a
    paired difference, or one quantity); the claim is `comparison direction threshold`, judged
    by `statistic` on at least `n` values (seeds, splits or test examples: `unit`) at the full
    setting. `quick_expected` says whether the quick setting is big enough to test it."""

    name: str
    statement: str
    metric: str
    comparison: str
    direction: str
    threshold: float
    statistic: str
    n: int = 1
    unit: str = "seeds"
    quick_expected: bool = True
    source: str = ""

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"claim {self.name}: direction must be one of {DIRECTIONS}, got "
                             f"{self.direction!r}")
        if self.statistic not in STATISTICS:
            raise ValueError(f"claim {self.name}: statistic must be one of "
                             f"{sorted(STATISTICS)}, got {self.statistic!r}")
        if self.n < 1:
            raise ValueError(f"claim {self.name}: n must be >= 1, got {self.n}")
        if self.statistic == "single" and self.n != 1:
            raise ValueError(f"claim {self.name}: a single measurement has n = 1")

    @property
    def test(self) -> str:
        """The declared test in one line, e.g. 'annealed - dense > 0'."""
        return f"{self.comparison} {self.direction} {self.threshold:g}"

    @property
    def paired(self) -> bool:
        return self.statistic in ("paired_bootstrap", "sign_test")

    @property
    def per_run(self) -> bool:
        """Values are one per seed or split (not per test example): the sign test applies."""
        return self.unit in ("seeds", "splits", "runs")


@dataclass(frozen=True)
class ClaimTable:
    """A reproduction's claims, in report order; names are unique."""

    claims: tuple[Claim, ...]

    def __post_init__(self) -> None:
        names = [c.name for c in self.claims]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"claim names must be unique, repeated: {', '.join(dupes)}")

    def __getitem__(self, name: str) -> Claim:
        for c in self.claims:
            if c.name == name:
                return c
        raise KeyError(name)

    def __iter__(self):
        return iter(self.claims)

    def __len__(self) -> int:
        return len(self.claims)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.claims]


def declare(*claims: Claim) -> ClaimTable:
    """The claims table of a reproduction (call at module level, before anything runs)."""
    return ClaimTable(tuple(claims))


@dataclass
class Measured:
    """What was measured for one claim: `values` (one number for a single claim, else one
    per seed / split / example) and, for paired claims, `baseline` paired with them."""

    values: Sequence[float] | float | None
    baseline: Sequence[float] | None = None
    note: str = ""
    missing: str | None = None


def single(value: float, note: str = "") -> Measured:
    """One measured number."""
    return Measured(float(value), note=note)


def paired(a: Sequence[float], b: Sequence[float], note: str = "") -> Measured:
    """Values of A and B paired by position (same seed, split or test example)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    return Measured([float(v) for v in a], [float(v) for v in b], note=note)


def samples(values: Sequence[float], note: str = "") -> Measured:
    """Repeated measurements of one quantity (one per seed, split or example)."""
    return Measured([float(v) for v in values], note=note)


def missing(reason: str) -> Measured:
    """Nothing could be measured (e.g. a data set was not found); the reason is reported."""
    return Measured(None, missing=reason)


@dataclass
class Verdict:
    """A claim's verdict with what it rests on. `held` is True only for "held"."""

    claim: Claim
    verdict: str
    estimate: float | None = None
    ci: tuple[float, float] | None = None
    n: int = 0
    wins: int | None = None
    losses: int | None = None
    sign_p: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def held(self) -> bool:
        return self.verdict == HELD

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Verdict:
        """The verdict back from `to_dict` (e.g. read from results.json to render a report)."""
        claim = Claim(**{f: d[f] for f in Claim.__dataclass_fields__})
        ci = None if d.get("ci_low") is None else (d["ci_low"], d["ci_high"])
        return cls(claim, d["verdict"], d.get("estimate"), ci, d.get("n_measured", 0),
                   d.get("wins"), d.get("losses"), d.get("sign_test_p"), d.get("note", ""))

    def to_dict(self) -> dict[str, Any]:
        """The declaration next to the measurement (JSON-friendly)."""
        return {
            **asdict(self.claim), "test": self.claim.test,
            "statistic_label": STATISTICS[self.claim.statistic],
            "verdict": self.verdict, "held": self.held, "estimate": self.estimate,
            "ci_low": None if self.ci is None else self.ci[0],
            "ci_high": None if self.ci is None else self.ci[1],
            "n_measured": self.n, "wins": self.wins, "losses": self.losses,
            "sign_test_p": self.sign_p, "note": self.note, **self.extra,
        }


def bootstrap_means(values: Sequence[float], *, resamples: int = RESAMPLES,
                    seed: int = 0) -> np.ndarray:
    """Means of `resamples` bootstrap resamples of `values` (seeded). Drawn as multinomial
    counts over the distinct values, which has exactly the distribution of resampling with
    replacement and costs nothing for 10,000 test examples taking a few distinct values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("cannot bootstrap an empty sample")
    uniq, counts = np.unique(x, return_counts=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(x.size, counts / x.size, size=resamples)
    return draws @ uniq / x.size


def percentile_interval(values: Sequence[float], *, level: float = LEVEL,
                        resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """The `level` percentile bootstrap interval of the mean of `values`."""
    means = bootstrap_means(values, resamples=resamples, seed=seed)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def sign_test(differences: Sequence[float], threshold: float = 0.0) -> tuple[int, int, float,
                                                                              float]:
    """Exact sign test of the differences against `threshold` (ties dropped): returns (wins
    above, losses below, one-sided p for 'above', one-sided p for 'below')."""
    from scipy.stats import binom

    d = np.asarray(differences, dtype=np.float64) - threshold
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    m = wins + losses

    def tail(k: int) -> float:  # P(X >= k), X ~ Binomial(m, 1/2)
        return float(binom.sf(k - 1, m, 0.5)) if m else 1.0

    return wins, losses, tail(wins), tail(losses)


def _side(direction: str, lo: float, hi: float, t: float) -> str:
    """held / not held / inconclusive for an interval [lo, hi] against `direction t`."""
    if direction == ">":
        return HELD if lo > t else NOT_HELD if hi <= t else INCONCLUSIVE
    if direction == ">=":
        return HELD if lo >= t else NOT_HELD if hi < t else INCONCLUSIVE
    if direction == "<":
        return HELD if hi < t else NOT_HELD if lo >= t else INCONCLUSIVE
    return HELD if hi <= t else NOT_HELD if lo > t else INCONCLUSIVE


def too_few(n: int, needed: int) -> str:
    """The verdict of a claim measured on fewer values than it declares."""
    return f"too few runs (n={n} < {needed})"


def judge(claim: Claim, measured: Measured, *, seed: int = 0,
          resamples: int = RESAMPLES) -> Verdict:
    """The verdict of one claim from what was measured (rules in the module docstring)."""
    if measured.missing is not None or measured.values is None:
        return Verdict(claim, NOT_MEASURED, note=measured.missing or "no measurement")
    note = measured.note
    if claim.statistic == "single":
        if not isinstance(measured.values, (int, float)):
            raise ValueError(f"claim {claim.name} is a single measurement; got a sequence")
        v = float(measured.values)
        if math.isnan(v):
            return Verdict(claim, NOT_MEASURED, note=note or "measured value is NaN")
        return Verdict(claim, _side(claim.direction, v, v, claim.threshold), estimate=v, n=1,
                       note=note)
    if isinstance(measured.values, (int, float)):
        raise ValueError(f"claim {claim.name} ({claim.statistic}) needs one value per "
                         f"{claim.unit}; got a single number")
    a = np.asarray(measured.values, dtype=np.float64)
    if claim.paired:
        if measured.baseline is None:
            raise ValueError(f"claim {claim.name} is paired; give both sides (paired(a, b))")
        a = a - np.asarray(measured.baseline, dtype=np.float64)
    elif measured.baseline is not None:
        raise ValueError(f"claim {claim.name} ({claim.statistic}) takes no baseline")
    if a.size == 0 or np.isnan(a).any():
        return Verdict(claim, NOT_MEASURED, n=int(a.size),
                       note=note or "no values, or a value is NaN")
    estimate = float(a.mean())
    ci = percentile_interval(a, resamples=resamples, seed=seed)
    out = Verdict(claim, INCONCLUSIVE, estimate=estimate, ci=ci, n=int(a.size), note=note)
    if claim.paired and (claim.per_run or claim.statistic == "sign_test"):
        wins, losses, p_above, p_below = sign_test(a, claim.threshold)
        claimed_above = claim.direction in (">", ">=")
        out.wins, out.losses = (wins, losses) if claimed_above else (losses, wins)
        out.sign_p = p_above if claimed_above else p_below
        if claim.statistic == "sign_test":
            p_other = p_below if claimed_above else p_above
            alpha = (1 - LEVEL) / 2
            out.verdict = HELD if out.sign_p < alpha else NOT_HELD if p_other < alpha \
                else INCONCLUSIVE
    if claim.statistic != "sign_test":
        out.verdict = _side(claim.direction, ci[0], ci[1], claim.threshold)
    if a.size < claim.n:
        out.verdict = too_few(int(a.size), claim.n)
    return out


def judge_all(table: ClaimTable, measured: Mapping[str, Measured], *,
              seed: int = 0) -> list[Verdict]:
    """Verdicts of every declared claim, in table order. A claim with no measurement is
    "not measured"; a measurement of an undeclared claim is a bug and raises."""
    unknown = sorted(set(measured) - set(table.names))
    if unknown:
        raise ValueError(f"measured claims that were never declared: {', '.join(unknown)}")
    return [judge(c, measured.get(c.name, missing("no measurement")), seed=seed)
            for c in table]


# ----------------------------------------------------------------------------- reporting


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    if v == 0 or 1e-3 <= abs(v) < 1e5:
        return f"{v:.4g}"
    return f"{v:.3g}"


def measured_text(v: Verdict) -> str:
    """The measured value with what it rests on, e.g. '0.0022 (wins 5/10, sign p 0.62)'."""
    if v.estimate is None:
        return v.note or "-"
    text = _num(v.estimate)
    if v.wins is not None:
        text += f" (wins {v.wins}/{v.n}, sign test p {v.sign_p:.3g})"
    if v.note:
        text += f"; {v.note}"
    return text


def verdict_text(v: Verdict, quick: bool) -> str:
    """The verdict, marked when the claim is not expected to hold at the quick scale."""
    if quick and not v.claim.quick_expected:
        return f"{v.verdict} (not expected at quick scale)"
    return v.verdict


def verdict_rows(verdicts: Sequence[Verdict], quick: bool = False) -> list[dict[str, Any]]:
    """One row per claim for a report table: the declaration next to the measurement."""
    rows = []
    for v in verdicts:
        c = v.claim
        n_decl = "1 (single)" if c.statistic == "single" else f"{c.n} {c.unit}"
        rows.append({
            "claim": c.statement, "test": c.test, "statistic": STATISTICS[c.statistic],
            "n declared": n_decl, "measured": measured_text(v),
            "95% CI": "-" if v.ci is None else f"[{_num(v.ci[0])}, {_num(v.ci[1])}]",
            "n": v.n, "verdict": verdict_text(v, quick),
        })
    return rows


CLAIM_COLUMNS = ["claim", "test", "statistic", "n declared", "measured", "95% CI", "n",
                 "verdict"]


def claims_markdown(verdicts: Sequence[Verdict], quick: bool = False) -> str:
    """The report's claims section body: the table, how verdicts are made, and (quick runs)
    which claims the quick scale is not expected to support."""
    lines = [markdown_table(verdict_rows(verdicts, quick), CLAIM_COLUMNS), "",
             "Declared before the run (`CLAIMS` in the reproduction's module); verdicts by "
             "`prunelab.claims.judge`: held only when the 95% interval lies entirely on the "
             "claimed side of the threshold, inconclusive when it straddles it; single "
             "measurements are compared with the threshold as they are, with no interval."]
    if quick:
        not_expected = [v.claim.statement for v in verdicts if not v.claim.quick_expected]
        if not_expected:
            lines += ["", "Not expected to hold at the quick scale (declared with the claims; "
                      "the quick setting is too small to test them):", "",
                      *[f"- {s}" for s in not_expected]]
    return "\n".join(lines)


def log_lines(verdicts: Sequence[Verdict], quick: bool = False) -> list[str]:
    """One line per claim for the terminal."""
    return [f"[{verdict_text(v, quick)}] {v.claim.statement}: {v.claim.test}; measured "
            f"{measured_text(v)}" + ("" if v.ci is None else
                                     f", 95% CI [{_num(v.ci[0])}, {_num(v.ci[1])}]")
            for v in verdicts]


__all__ = ["Claim", "ClaimTable", "Measured", "Verdict", "bootstrap_means", "claims_markdown",
           "declare", "judge", "judge_all", "log_lines", "missing", "paired",
           "percentile_interval", "samples", "sign_test", "single", "too_few",
           "verdict_rows"]
