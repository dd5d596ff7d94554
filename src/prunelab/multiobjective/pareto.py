"""Pareto-front utilities for two objectives to minimise: non-dominated filtering, the exact
2-D hypervolume, a normalised dominance gap, and the two plots of the paper (CE vs l1 and
accuracy vs nonzero weights) with the knee and the SMGD point marked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from prunelab.errors import ConfigError

PointLike = Sequence[float] | np.ndarray


def _as_points(points: Sequence[PointLike] | np.ndarray) -> np.ndarray:
    arr = np.asarray(points, dtype=float)
    if arr.size == 0:
        return arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ConfigError(f"points must be an (n, 2) array of objective pairs, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError("points must be finite")
    return arr


def dominates(a: PointLike, b: PointLike) -> bool:
    """True if a is no worse than b in both objectives and better in one (minimisation)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return bool(np.all(a <= b) and np.any(a < b))


def non_dominated(points: Sequence[PointLike] | np.ndarray) -> list[int]:
    """Indices of the points no other point dominates, sorted by the first objective.

    Exact duplicates do not dominate each other, so all copies of a front point are kept."""
    arr = _as_points(points)
    keep = []
    for i in range(arr.shape[0]):
        le = np.all(arr <= arr[i], axis=1)
        lt = np.any(arr < arr[i], axis=1)
        if not np.any(le & lt):
            keep.append(i)
    return sorted(keep, key=lambda i: (arr[i, 0], arr[i, 1]))


def hypervolume_2d(points: Sequence[PointLike] | np.ndarray, reference: PointLike) -> float:
    """Area dominated by `points` and bounded by `reference` (minimisation), exactly.

    Points not strictly better than the reference in both objectives contribute nothing."""
    arr = _as_points(points)
    ref = np.asarray(reference, dtype=float)
    if ref.shape != (2,):
        raise ConfigError(f"reference must be a pair of numbers, got shape {ref.shape}")
    arr = arr[np.all(arr < ref, axis=1)]
    if arr.shape[0] == 0:
        return 0.0
    front = arr[non_dominated(arr)]
    front = front[np.lexsort((front[:, 1], front[:, 0]))]
    area, prev_f2 = 0.0, ref[1]
    for f1, f2 in front:
        if f2 < prev_f2:
            area += (ref[0] - f1) * (prev_f2 - f2)
            prev_f2 = f2
    return float(area)


def dominance_gap(
    point: PointLike, front: Sequence[PointLike] | np.ndarray, scale: PointLike | None = None
) -> float:
    """By how much the front dominates `point`: max over front points q of
    min_k (point_k - q_k) / scale_k (the additive epsilon indicator, normalised).

    <= 0: no front point dominates `point` (it is on or beyond the front); > 0: some q is
    better in both objectives by at least that fraction of `scale` (default: the front's
    range per objective)."""
    p = np.asarray(point, dtype=float)
    arr = _as_points(front)
    if arr.shape[0] == 0:
        return float("-inf")
    if scale is None:
        span = arr.max(axis=0) - arr.min(axis=0)
        scale = np.where(span > 0, span, 1.0)
    s = np.asarray(scale, dtype=float)
    if np.any(s <= 0):
        raise ConfigError("scale must be positive in both objectives")
    return float(np.max(np.min((p - arr) / s, axis=1)))


def _mark(ax: Any, xy: PointLike | None, label: str, marker: str, color: str) -> None:
    if xy is not None:
        ax.scatter([xy[0]], [xy[1]], marker=marker, s=160, color=color, zorder=5,
                   edgecolor="k", label=label)


def plot_loss_front(
    ax: Any,
    points: Sequence[PointLike] | np.ndarray,
    *,
    knee: PointLike | None = None,
    smgd: PointLike | None = None,
    extra: dict[str, PointLike] | None = None,
    xlabel: str = "l1 of dense kernels",
    ylabel: str = "cross-entropy (validation)",
) -> None:
    """Objective space: all points (x = l1, y = CE), the non-dominated ones joined, the knee
    and the SMGD point marked. `points` are (CE, l1) pairs."""
    arr = _as_points(points)
    if arr.shape[0]:
        ax.scatter(arr[:, 1], arr[:, 0], color="0.6", s=20, label="weighted-sum runs")
        nd = arr[non_dominated(arr)]
        ax.plot(nd[:, 1], nd[:, 0], "o-", color="C0", label="non-dominated")
    _mark(ax, None if knee is None else (knee[1], knee[0]), "knee", "*", "C3")
    _mark(ax, None if smgd is None else (smgd[1], smgd[0]), "SMGD", "D", "C2")
    for label, xy in (extra or {}).items():
        _mark(ax, (xy[1], xy[0]), label, "P", "C1")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.legend(fontsize=8)


def plot_accuracy_front(
    ax: Any,
    nonzero: Sequence[float],
    accuracy: Sequence[float],
    *,
    knee: PointLike | None = None,
    smgd: PointLike | None = None,
    extra: dict[str, PointLike] | None = None,
    xlabel: str = "nonzero dense weights",
    ylabel: str = "accuracy",
) -> None:
    """Accuracy vs nonzero weights; the points that are non-dominated in (-accuracy, nonzero)
    joined, the knee and SMGD (pairs (nonzero, accuracy)) marked; log x axis (symlog when a
    solution has no nonzero weight)."""
    nz, acc = np.asarray(nonzero, dtype=float), np.asarray(accuracy, dtype=float)
    if nz.size:
        ax.scatter(nz, acc, color="0.6", s=20, label="weighted-sum runs")
        nd = non_dominated(np.stack([nz, -acc], axis=1))
        ax.plot(nz[nd], acc[nd], "o-", color="C0", label="non-dominated")
    _mark(ax, knee, "knee", "*", "C3")
    _mark(ax, smgd, "SMGD", "D", "C2")
    for label, xy in (extra or {}).items():
        _mark(ax, xy, label, "P", "C1")
    if nz.size and np.all(nz > 0):
        ax.set_xscale("log")
    elif nz.size:  # an all-zero solution: linear near 0, logarithmic beyond
        ax.set_xscale("symlog", linthresh=100)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.legend(fontsize=8)
