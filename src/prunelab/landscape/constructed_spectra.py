"""Spectra with a known number of outliers, to validate an outlier-counting rule.

A bulk (Marchenko-Pastur, a rank-deficient Wishart plus symmetric noise like a Gauss-Newton
part plus a small residual, or an exponential tail) with k planted spikes a chosen factor
beyond the bulk's largest value and spread geometrically over a chosen range. `score_rule`
runs a rule over a grid of them; the outlier rule's parameters were chosen with it
(docs/hessian.md), never on measured Hessians.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable

import numpy as np

from prunelab.errors import ConfigError


def marchenko_pastur_bulk(p: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Eigenvalues of X^T X / n for X (n, p) standard normal, n = p / ratio (ratio > 1
    leaves p - n exact zeros, like a rank-deficient Gauss-Newton matrix)."""
    n = max(1, int(round(p / ratio)))
    x = rng.standard_normal((n, p))
    return np.linalg.eigvalsh(x.T @ x / n)


def gauss_newton_like_bulk(p: int, rng: np.random.Generator, *, rank_fraction: float = 0.4,
                           noise: float = 0.05) -> np.ndarray:
    """A rank-deficient Wishart matrix (rank `rank_fraction` p) plus `noise` times a GOE
    matrix: a bulk at zero with both signs and a positive shoulder."""
    r = max(1, int(rank_fraction * p))
    j = rng.standard_normal((r, p)) / math.sqrt(r)
    a = rng.standard_normal((p, p))
    return np.linalg.eigvalsh(j.T @ j + noise * (a + a.T) / math.sqrt(2 * p))


def exponential_bulk(p: int, rng: np.random.Generator) -> np.ndarray:
    """p draws of an exponential law: a bulk with a tail and no hard edge."""
    return np.sort(rng.exponential(1.0, p))


BULKS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    **{f"marchenko-pastur {r:g}": (lambda p, rng, r=r: marchenko_pastur_bulk(p, r, rng))
       for r in (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)},
    "gauss-newton-like": gauss_newton_like_bulk,
    "exponential": exponential_bulk,
}


def plant_spikes(bulk: np.ndarray, k: int, separation: float, spread: float) -> np.ndarray:
    """Replace the k largest bulk values by k spikes from `separation` x max(bulk) up to
    `spread` times that (geometric), so the spectrum has exactly k outliers."""
    if k < 0 or k >= bulk.size:
        raise ConfigError(f"k must be in [0, {bulk.size - 1}], got {k}")
    base = np.sort(bulk)
    if k == 0:
        return base
    low = separation * float(base.max())
    return np.concatenate([base[: base.size - k], low * np.geomspace(spread, 1.0, k)])


def score_rule(
    rule: Callable[[np.ndarray], int],
    *,
    seed: int = 0,
    sizes: Iterable[int] = (60, 150, 500),
    repeats: int = 3,
    ks: Iterable[int] = (1, 2, 3, 5, 9, 10),
    separations: Iterable[float] = (2.0, 3.0, 5.0, 20.0),
    spreads: Iterable[float] = (1.0, 10.0, 100.0),
    max_fraction: float = 0.1,
) -> dict[str, dict[str, int]]:
    """How often `rule` (eigenvalues -> count) returns the planted count, over every bulk,
    size, repeat, k (up to `max_fraction` of the size), separation and spread; keyed by
    "no spikes" and "separation >= S" rows, each {"right": int, "total": int}."""
    rng = np.random.default_rng(seed)
    seps = tuple(separations)
    out = {"no spikes": {"right": 0, "total": 0},
           **{f"separation {s:g}x": {"right": 0, "total": 0} for s in seps}}
    for make in BULKS.values():
        for p, _ in itertools.product(sizes, range(repeats)):
            bulk = make(p, rng)
            row = out["no spikes"]
            row["right"] += rule(bulk) == 0
            row["total"] += 1
            for k, sep, spread in itertools.product(ks, seps, spreads):
                if k > max_fraction * p:
                    continue
                row = out[f"separation {sep:g}x"]
                row["right"] += rule(plant_spikes(bulk, k, sep, spread)) == k
                row["total"] += 1
    return out


__all__ = ["BULKS", "exponential_bulk", "gauss_newton_like_bulk", "marchenko_pastur_bulk",
           "plant_spikes", "score_rule"]
