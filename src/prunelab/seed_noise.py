"""How much of the run-to-run spread of a test error is test-set sampling.

Runs that differ only in their seed make different mistakes on a finite test set. If every
test example i were misclassified by a run with its own probability p_i, independently of the
other examples (the "independent errors" model of K. Jordan, "On the Variance of Neural Network
Training with respect to Test Sets and Distributions", ICLR 2024), the variance of the
test error across runs would be sum_i p_i (1 - p_i) / n^2: the examples on the decision
boundary flip from run to run while the error on the distribution stays put. The sample
variance of the runs' errors splits exactly into that diagonal part (estimated from the
per-example flip rates) and the covariances between examples; the covariance part is what a
run's being better or worse as a whole (a real difference between runs) contributes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


@torch.no_grad()
def misclassified(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  batch_size: int = 2048) -> list[int]:
    """Indices of the examples of (x, y) that `model` gets wrong (eval mode, restored after)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    wrong: list[int] = []
    for i in range(0, x.shape[0], batch_size):
        out = model(x[i:i + batch_size].to(device))
        miss = (out.argmax(dim=1) != y[i:i + batch_size].to(device)).nonzero().flatten()
        wrong += (miss + i).tolist()
    model.train(was_training)
    return wrong


def error_variance_split(mistakes: Sequence[Sequence[int]], n: int) -> dict[str, float]:
    """Split the sample variance of the test errors of several runs (each given by the indices
    it misclassifies out of `n` test examples) into the per-example part and the rest.

    Returns, in percentage points: `error_std_pts` (sample SD of the runs' errors),
    `independent_std_pts` (the SD the runs would have if every example flipped independently
    with its observed rate: sqrt of the sum of per-example sample variances), and
    `between_run_var_share`, the share of the variance the covariances between examples carry
    (1 - diagonal / total; near 0 when the spread is test-set sampling alone, negative values
    are sampling error of an estimate from few runs, which reports print as "too few runs").
    Needs at least two runs."""
    runs = len(mistakes)
    if runs < 2:
        raise ValueError(f"need at least two runs to split a variance, got {runs}")
    if n <= 0:
        raise ValueError(f"the test set size must be positive, got {n}")
    counts = torch.zeros(n, dtype=torch.float64)
    errors = []
    for wrong in mistakes:
        idx = torch.as_tensor(list(wrong), dtype=torch.long)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise ValueError(f"misclassified indices must lie in [0, {n}), got "
                             f"{int(idx.min())}..{int(idx.max())}")
        if idx.unique().numel() != idx.numel():
            raise ValueError("a run lists the same misclassified example twice")
        counts[idx] += 1
        errors.append(idx.numel() / n)
    rate = counts / runs
    diagonal = float((rate * (1 - rate)).sum()) * runs / (runs - 1) / n ** 2
    mean = sum(errors) / runs
    total = sum((e - mean) ** 2 for e in errors) / (runs - 1)
    return {"error_std_pts": 100 * math.sqrt(total),
            "independent_std_pts": 100 * math.sqrt(diagonal),
            "between_run_var_share": 1 - diagonal / total if total > 0 else float("nan")}


def normal_range_probability(runs: int, limit: float) -> float:
    """P(max - min of `runs` independent standard normal draws <= `limit`): the chance that a
    study of `runs` runs with error SD s shows a spread of at most limit * s. Computed as
    runs * integral phi(x) (Phi(x + limit) - Phi(x))^(runs - 1) dx on a fine grid."""
    if runs < 2:
        raise ValueError(f"a range needs at least two runs, got {runs}")
    if limit <= 0:
        return 0.0
    x = torch.linspace(-12.0, 12.0, 48001, dtype=torch.float64)
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
    density = normal.log_prob(x).exp()
    inside = (normal.cdf(x + limit) - normal.cdf(x)).clamp_min(0.0)
    value = runs * torch.trapezoid(density * inside ** (runs - 1), x)
    return float(value.clamp(0.0, 1.0))
