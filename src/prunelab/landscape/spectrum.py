"""Spectra of a `HessianOperator`: exact eigenvalues, extremal eigenpairs, density, trace,
and the number of outliers above the bulk.

- exact: the dense matrix and `numpy.linalg.eigh` (small models; memory checked first);
- extremal pairs: SciPy's ARPACK Lanczos (`eigsh`) on a LinearOperator of products;
- density: stochastic Lanczos quadrature (several Lanczos runs from random Rademacher vectors,
  run side by side so each step is one batched product; full reorthogonalisation);
- trace: Hutchinson and Hutch++ (Meyer, Musco, Musco, Woodruff 2021);
- outliers: the eigenvalues beyond the bulk's upper fence Q90 + 3 (Q90 - Q50) of the spectral
  distribution (`count_outliers`; the earlier largest-log-gap rule is kept by name).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from prunelab.errors import ConfigError, PrunelabError, check_range
from prunelab.landscape.hessian import DEFAULT_MAX_BYTES, HessianOperator

WHICH = ("largest", "smallest")


@dataclass
class EigenResult:
    """Eigenvalues (largest first for 'largest', smallest first for 'smallest'), optional
    eigenvectors as columns, and the cost: products used and seconds."""

    values: np.ndarray
    vectors: np.ndarray | None
    n_products: int
    seconds: float
    method: str

    def to_dict(self) -> dict[str, Any]:
        return {"eigenvalues": [float(v) for v in self.values], "n_products": self.n_products,
                "seconds": self.seconds, "method": self.method}


def exact_eigenvalues(op: HessianOperator, *, max_bytes: int = DEFAULT_MAX_BYTES,
                      vectors: bool = False) -> EigenResult:
    """All eigenvalues (ascending) of the dense matrix, and the eigenvectors if asked."""
    start, before = time.perf_counter(), op.n_products
    h = op.dense(max_bytes=max_bytes)
    if vectors:
        vals, vecs = torch.linalg.eigh(h)
        vec_np: np.ndarray | None = vecs.numpy()
    else:
        vals, vec_np = torch.linalg.eigvalsh(h), None
    return EigenResult(vals.numpy(), vec_np, op.n_products - before,
                       time.perf_counter() - start, "exact")


def _check_k(k: int, dim: int) -> int:
    if not isinstance(k, (int, np.integer)) or k < 1 or k > dim:
        raise ConfigError(f"k (number of eigenvalues) must be in [1, {dim}] (the dimension of "
                          f"the operator), got {k}")
    return int(k)


def extreme_eigenpairs(
    op: HessianOperator,
    k: int,
    *,
    which: str = "largest",
    tol: float = 1e-6,
    seed: int = 0,
    maxiter: int | None = None,
    ncv: int | None = None,
    vectors: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> EigenResult:
    """The k largest (algebraic) or smallest eigenpairs by ARPACK Lanczos (`eigsh`).

    `tol` is ARPACK's relative accuracy of the Ritz values. When k is the whole dimension,
    the exact dense eigendecomposition is used instead (ARPACK needs k < dim).
    """
    if which not in WHICH:
        raise ConfigError(f"which must be one of {', '.join(WHICH)}; got '{which}'")
    k = _check_k(k, op.dim)
    check_range("tol", tol, 0.0)
    if k >= op.dim - 1:
        res = exact_eigenvalues(op, max_bytes=max_bytes, vectors=vectors)
        order = np.argsort(-res.values) if which == "largest" else np.argsort(res.values)
        order = order[:k]
        vecs = res.vectors[:, order] if res.vectors is not None else None
        return EigenResult(res.values[order], vecs, res.n_products, res.seconds, "exact")
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    start, before = time.perf_counter(), op.n_products
    v0 = np.random.default_rng(seed).standard_normal(op.dim)
    try:
        vals, vecs = eigsh(op.as_linear_operator(), k=k, which="LA" if which == "largest"
                           else "SA", tol=tol, v0=v0, maxiter=maxiter, ncv=ncv)
    except ArpackNoConvergence as exc:
        raise PrunelabError(
            f"Lanczos found only {len(exc.eigenvalues)} of {k} eigenvalues within maxiter="
            f"{maxiter}; raise maxiter or loosen tol ({tol:g})"
        ) from None
    order = np.argsort(-vals) if which == "largest" else np.argsort(vals)
    return EigenResult(vals[order], vecs[:, order] if vectors else None,
                       op.n_products - before, time.perf_counter() - start, "lanczos-arpack")


def top_eigenvalues(op: HessianOperator, k: int, **options: Any) -> EigenResult:
    """The k largest eigenvalues (see `extreme_eigenpairs`)."""
    return extreme_eigenpairs(op, k, which="largest", **options)


def bottom_eigenvalues(op: HessianOperator, k: int, **options: Any) -> EigenResult:
    """The k smallest (most negative) eigenvalues (see `extreme_eigenpairs`)."""
    return extreme_eigenpairs(op, k, which="smallest", **options)


# ----------------------------------------------------------------------------- Lanczos / SLQ


def _rademacher(dim: int, m: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, (dim, m), generator=gen, dtype=torch.int64).to(torch.float64) \
        * 2.0 - 1.0


def lanczos(
    op: HessianOperator, n_steps: int, start: torch.Tensor
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Lanczos tridiagonalisation from each column of `start` (dim, m), run side by side.

    Returns per column the diagonal `alpha` and off-diagonal `beta` of the tridiagonal matrix
    T (truncated at an invariant subspace). Full reorthogonalisation (two Gram-Schmidt passes)
    keeps the Ritz values free of ghost copies.
    """
    dim, m = start.shape
    steps = min(int(n_steps), dim)
    v = start.to(torch.float64)
    v = v / v.norm(dim=0, keepdim=True)
    basis = torch.zeros(steps, dim, m, dtype=torch.float64)
    alphas = torch.zeros(steps, m, dtype=torch.float64)
    betas = torch.zeros(steps, m, dtype=torch.float64)
    lengths = np.full(m, steps)
    q_prev = torch.zeros_like(v)
    b_prev = torch.zeros(m, dtype=torch.float64)
    scale = torch.zeros(m, dtype=torch.float64)
    for j in range(steps):
        basis[j] = v
        w = op.matmat(v).to(torch.float64).cpu()
        a = (w * v).sum(0)
        w = w - a * v - b_prev * q_prev
        for _ in range(2):
            coeff = torch.einsum("jdm,dm->jm", basis[: j + 1], w)
            w = w - torch.einsum("jdm,jm->dm", basis[: j + 1], coeff)
        b = w.norm(dim=0)
        alphas[j], betas[j] = a, b
        scale = torch.maximum(scale, a.abs() + b)
        dead = (b <= 1e-10 * torch.clamp(scale, min=1e-300)).numpy()
        for c in np.flatnonzero(dead):
            lengths[c] = min(lengths[c], j + 1)
        if bool((lengths <= j + 1).all()):
            break
        safe = torch.where(b > 0, b, torch.ones_like(b))
        q_prev, v, b_prev = v, torch.where(torch.from_numpy(dead), 0.0, w / safe), b
    a_list = [alphas[: lengths[c], c].numpy().copy() for c in range(m)]
    b_list = [betas[: lengths[c] - 1, c].numpy().copy() for c in range(m)]
    return a_list, b_list


def _tridiagonal_eig(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.linalg import eigh_tridiagonal

    if len(alpha) == 1:
        return alpha.copy(), np.ones(1)
    nodes, vecs = eigh_tridiagonal(alpha, beta)
    return nodes, vecs[0] ** 2


@dataclass
class SpectralDensity:
    """A smoothed eigenvalue density from stochastic Lanczos quadrature.

    `nodes[i]`, `weights[i]`: the Gauss quadrature of run i (weights sum to 1); `grid` and
    `density` the Gaussian-smoothed average (integrates to ~1 over the grid).
    """

    nodes: list[np.ndarray]
    weights: list[np.ndarray]
    grid: np.ndarray
    density: np.ndarray
    sigma: float
    n_products: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"grid": self.grid.tolist(), "density": self.density.tolist(),
                "sigma": self.sigma, "nodes": [n.tolist() for n in self.nodes],
                "weights": [w.tolist() for w in self.weights], "n_products": self.n_products,
                "seconds": self.seconds, **self.extra}


def spectral_density(
    op: HessianOperator,
    *,
    n_steps: int = 80,
    n_vectors: int = 4,
    seed: int = 0,
    n_grid: int = 1000,
    sigma: float | None = None,
    sigma_rel: float = 0.01,
    max_basis_bytes: int = 512 * 1024**2,
) -> SpectralDensity:
    """Eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019's recipe).

    Each of `n_vectors` Rademacher start vectors gives a Lanczos run of `n_steps`; its Ritz
    values are quadrature nodes with weights = squared first components of the Ritz vectors.
    The density is the average of Gaussians of width `sigma` (default `sigma_rel` times the
    spread of the nodes) placed at the nodes. Runs are batched in groups whose Lanczos basis
    fits in `max_basis_bytes`.
    """
    check_range("n_steps", n_steps, 1)
    check_range("n_vectors", n_vectors, 1)
    check_range("sigma_rel", sigma_rel, 0.0, low_inclusive=False)
    start, before = time.perf_counter(), op.n_products
    gen = torch.Generator().manual_seed(seed)
    steps = min(n_steps, op.dim)
    per_group = max(1, int(max_basis_bytes // max(steps * op.dim * 8, 1)))
    nodes: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    done = 0
    while done < n_vectors:
        m = min(per_group, n_vectors - done)
        a_list, b_list = lanczos(op, steps, _rademacher(op.dim, m, gen))
        for a, b in zip(a_list, b_list):
            nd, wt = _tridiagonal_eig(a, b)
            nodes.append(nd)
            weights.append(wt)
        done += m
    all_nodes = np.concatenate(nodes)
    lo, hi = float(all_nodes.min()), float(all_nodes.max())
    spread = max(hi - lo, abs(hi), 1e-12)
    s = float(sigma) if sigma is not None else sigma_rel * spread
    grid = np.linspace(lo - 5 * s, hi + 5 * s, n_grid)
    dens = np.zeros_like(grid)
    for nd, wt in zip(nodes, weights):
        dens += (wt[None, :] * np.exp(-0.5 * ((grid[:, None] - nd[None, :]) / s) ** 2)).sum(1)
    dens /= len(nodes) * s * math.sqrt(2 * math.pi)
    return SpectralDensity(nodes, weights, grid, dens, s, op.n_products - before,
                           time.perf_counter() - start, {"n_steps": steps,
                                                         "n_vectors": n_vectors})


# ----------------------------------------------------------------------------- trace


@dataclass
class TraceEstimate:
    """A stochastic trace estimate, its standard error and the products it used."""

    estimate: float
    stderr: float
    n_products: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "stderr": self.stderr,
                "n_products": self.n_products, "method": self.method}


def hutchinson_trace(op: HessianOperator, n_samples: int = 32, *, seed: int = 0,
                     block: int = 16) -> TraceEstimate:
    """Hutchinson's estimator mean_i z_i^T A z_i with Rademacher z_i."""
    check_range("n_samples", n_samples, 1)
    gen = torch.Generator().manual_seed(seed)
    before = op.n_products
    z = _rademacher(op.dim, n_samples, gen)
    az = op.matmat(z, block=block).to(torch.float64).cpu()
    samples = (z * az).sum(0).numpy()
    stderr = float(samples.std(ddof=1) / math.sqrt(n_samples)) if n_samples > 1 else math.nan
    return TraceEstimate(float(samples.mean()), stderr, op.n_products - before, "hutchinson")


def hutchpp_trace(op: HessianOperator, n_products: int = 48, *, seed: int = 0,
                  block: int = 16) -> TraceEstimate:
    """Hutch++: exact trace on a sketched top subspace plus Hutchinson on the rest.

    Uses n_products products: a third to sketch Q = orth(A S), a third for tr(Q^T A Q), a
    third for Hutchinson on (I - Q Q^T) A (I - Q Q^T). The standard error is that of the
    Hutchinson part.
    """
    check_range("n_products", n_products, 3)
    k = n_products // 3
    gen = torch.Generator().manual_seed(seed)
    before = op.n_products
    s = _rademacher(op.dim, k, gen)
    g = _rademacher(op.dim, k, gen)
    q, _ = torch.linalg.qr(op.matmat(s, block=block).to(torch.float64).cpu())
    t_top = float((q * op.matmat(q, block=block).to(torch.float64).cpu()).sum())
    g = g - q @ (q.T @ g)
    samples = (g * op.matmat(g, block=block).to(torch.float64).cpu()).sum(0).numpy()
    stderr = float(samples.std(ddof=1) / math.sqrt(k)) if k > 1 else math.nan
    return TraceEstimate(t_top + float(samples.mean()), stderr, op.n_products - before,
                         "hutch++")


# ----------------------------------------------------------------------------- outliers


OUTLIER_RULES = ("bulk-edge", "largest-gap")


@dataclass
class OutlierCount:
    """How many eigenvalues stand above the bulk, and how clearly.

    bulk-edge rule: `bulk_edge` is the fence the outliers exceed and `gap_ratio` the smallest
    outlier over the fence (the largest eigenvalue over the fence when there is none).
    largest-gap rule: `bulk_edge` is the largest eigenvalue below the gap and `gap_ratio` the
    gap. `saturated`: every eigenvalue given is an outlier, so a partial (top-k) list may hold
    fewer than there are.
    """

    n_outliers: int
    gap_ratio: float
    bulk_edge: float
    top: list[float]
    rule: str = "largest-gap"
    saturated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"n_outliers": self.n_outliers, "gap_ratio": self.gap_ratio,
                "bulk_edge": self.bulk_edge, "top": self.top, "rule": self.rule,
                "saturated": self.saturated}


def _weighted_quantiles(values: np.ndarray, weights: np.ndarray,
                        qs: tuple[float, ...]) -> list[float]:
    order = np.argsort(values)
    v, w = values[order], weights[order]
    cum = np.cumsum(w) / w.sum()
    return [float(v[min(int(np.searchsorted(cum, q)), v.size - 1)]) for q in qs]


def bulk_edge(eigenvalues: np.ndarray | list[float] | None = None, *,
              density: SpectralDensity | None = None, quantile: float = 0.9,
              fence: float = 3.0) -> float:
    """The upper fence of the bulk, Q_q + fence * (Q_q - Q_0.5), from quantiles of the
    spectral distribution: the eigenvalues (the whole spectrum, equally weighted) or, for
    operators too large for that, the quadrature of a stochastic Lanczos density.

    A Tukey-style fence on the bulk's own spread, so it needs fewer than 1 - q of the
    eigenvalues to be outliers. q = 0.9 and fence = 3 were chosen on constructed spectra
    (Marchenko-Pastur, rank-deficient Wishart plus noise, and exponential bulks with planted
    spikes; see docs/hessian.md), not on the measured Hessians.
    """
    check_range("quantile", quantile, 0.5, 1.0, low_inclusive=False, high_inclusive=False)
    check_range("fence", fence, 0.0)
    if density is not None:
        nodes = np.concatenate(density.nodes)
        weights = np.concatenate([w / len(density.weights) for w in density.weights])
        q_mid, q_hi = _weighted_quantiles(nodes, weights, (0.5, quantile))
    else:
        lam = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)
        if lam.size < 10:
            raise ConfigError(f"the bulk edge needs the whole spectrum (at least 10 "
                              f"eigenvalues) or a spectral density; got {lam.size} values")
        q_mid, q_hi = (float(v) for v in np.quantile(lam, (0.5, quantile)))
    return q_hi + fence * (q_hi - q_mid)


def count_outliers(eigenvalues: np.ndarray | list[float], *, rule: str = "bulk-edge",
                   density: SpectralDensity | None = None, quantile: float = 0.9,
                   fence: float = 3.0, rel_floor: float = 1e-3,
                   max_outliers: int | None = None) -> OutlierCount:
    """Outliers = eigenvalues beyond the bulk edge (`bulk_edge`) and above `rel_floor` times
    the largest (anything closer to zero is bulk, as in `near_zero_fraction`).

    `eigenvalues` must be the whole spectrum unless `density` (an SLQ density of the same
    operator) is given: then the edge comes from the density and `eigenvalues` may be the top
    k only (`saturated` says when all k are outliers). rule="largest-gap" is the earlier rule
    (`count_outliers_largest_gap`), kept for comparison: it misses outliers spread over
    several orders of magnitude (it cuts at the widest gap among them).
    """
    if rule not in OUTLIER_RULES:
        raise ConfigError(f"rule must be one of {', '.join(OUTLIER_RULES)}; got '{rule}'")
    if rule == "largest-gap":
        return count_outliers_largest_gap(eigenvalues, rel_floor=rel_floor,
                                          max_outliers=max_outliers)
    check_range("rel_floor", rel_floor, 0.0, 1.0, high_inclusive=False)
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64).reshape(-1))[::-1]
    if lam.size == 0:
        raise ConfigError("count_outliers needs at least one eigenvalue")
    edge = bulk_edge(None if density is not None else lam, density=density,
                     quantile=quantile, fence=fence)
    if lam[0] <= 0:
        return OutlierCount(0, 1.0, edge, [], "bulk-edge")
    cut = max(edge, rel_floor * lam[0])
    n = int((lam > cut).sum())
    if max_outliers is not None:
        n = min(n, int(max_outliers))
    ratio = float(lam[n - 1] / cut) if n and cut > 0 else \
        float(lam[0] / cut) if cut > 0 else math.inf
    return OutlierCount(n, ratio, float(cut), [float(v) for v in lam[:n]], "bulk-edge",
                        saturated=bool(n == lam.size and density is not None))


def count_outliers_largest_gap(eigenvalues: np.ndarray | list[float], *,
                               rel_floor: float = 1e-3,
                               max_outliers: int | None = None) -> OutlierCount:
    """The earlier rule: outliers = the eigenvalues above the largest gap (on a log scale) in
    the top of the spectrum.

    Eigenvalues below `rel_floor` times the largest are bulk (clipped to that floor), so the
    ratio between two near-zero bulk values can't win. `max_outliers` limits where the gap
    may fall. `bulk_edge` is the largest eigenvalue below the gap. It takes the single widest
    gap anywhere, so with outliers spread over decades it returns the first of them only
    (kept for comparison; `count_outliers` uses the bulk edge).
    """
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))[::-1]
    if lam.size < 2:
        raise ConfigError(f"count_outliers needs at least 2 eigenvalues, got {lam.size}")
    if lam[0] <= 0:
        return OutlierCount(0, 1.0, float(lam[0]), [])
    check_range("rel_floor", rel_floor, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    floor = rel_floor * lam[0]
    logs = np.log(np.maximum(lam, floor))
    gaps = logs[:-1] - logs[1:]
    limit = len(gaps) if max_outliers is None else max(1, min(int(max_outliers), len(gaps)))
    i = int(np.argmax(gaps[:limit]))
    return OutlierCount(i + 1, float(math.exp(gaps[i])), float(lam[i + 1]),
                        [float(v) for v in lam[: i + 1]])


def near_zero_fraction(eigenvalues: np.ndarray | list[float], *, rel: float = 1e-3) -> float:
    """Fraction of eigenvalues with |lambda| <= rel * max |lambda| (the bulk at ~0)."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if lam.size == 0:
        return math.nan
    scale = float(np.abs(lam).max())
    return float((np.abs(lam) <= rel * scale).mean()) if scale > 0 else 1.0


__all__ = ["OUTLIER_RULES", "EigenResult", "OutlierCount", "SpectralDensity", "TraceEstimate",
           "bottom_eigenvalues", "bulk_edge", "count_outliers", "count_outliers_largest_gap",
           "exact_eigenvalues", "extreme_eigenpairs",
           "hutchinson_trace", "hutchpp_trace", "lanczos", "near_zero_fraction",
           "plot_density", "plot_eigenvalues", "spectral_density", "top_eigenvalues"]


# ----------------------------------------------------------------------------- figures


def plot_eigenvalues(ax: Any, eigenvalues: np.ndarray | list[float], *,
                     label: str | None = None, title: str | None = None) -> None:
    """Eigenvalues sorted largest first, magnitude on a log scale (negative ones hollow);
    magnitudes below 1e-10 of the largest are drawn at that floor (numerically zero)."""
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))[::-1]
    idx = np.arange(1, lam.size + 1)
    mag = np.abs(lam)
    mag = np.maximum(mag, max(float(mag.max()) * 1e-10, 1e-300))
    pos = lam > 0
    line = ax.plot(idx[pos], mag[pos], ".", ms=4, label=label)
    if (~pos).any():
        ax.plot(idx[~pos], mag[~pos], "o", ms=3, mfc="none", color=line[0].get_color(),
                label=None if label is None else f"{label} (negative, |λ|)")
    ax.set_yscale("log")
    ax.set_xlabel("rank")
    ax.set_ylabel("|eigenvalue|")
    if title:
        ax.set_title(title)


def plot_density(ax: Any, density: SpectralDensity, *, label: str | None = None,
                 title: str | None = None) -> None:
    """A spectral density on a log y-axis, drawn only where it is above 1e-12 of its peak:
    between separated eigenvalue groups the smoothed density falls to numerical zero, and the
    plot leaves a gap there rather than a flat floor that looks like spectrum."""
    cut = max(float(density.density.max()) * 1e-12, 1e-300)
    values = np.where(density.density > cut, density.density, np.nan)
    ax.plot(density.grid, values, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    if title:
        ax.set_title(title)
