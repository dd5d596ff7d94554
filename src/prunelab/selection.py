"""Selection: turn per-parameter scores into masks (global or per layer, by fraction or count).

Scores and selection are separate: any score (magnitude, Taylor, ...) plugs in here. Higher
score = more important = kept. Entries already pruned (False in `current`) stay pruned.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from prunelab.errors import ConfigError, MaskError, check_range
from prunelab.masks import Masks


def _keep_top(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if n_keep > 0:
        # topk on a flat tensor; ties broken by index order (stable and deterministic).
        idx = torch.topk(scores.flatten(), n_keep, sorted=False).indices
        mask[idx] = True
    return mask.view_as(scores)


def select_masks(
    scores: Mapping[str, torch.Tensor],
    *,
    sparsity: float | None = None,
    keep: int | None = None,
    scope: str = "global",
    current: Mapping[str, torch.Tensor] | None = None,
    min_keep_per_layer: int = 1,
) -> Masks:
    """Keep the highest-scoring entries so that a fraction `sparsity` (or all but `keep`) of
    all scored entries is pruned, ranked over all layers (`global`) or within each (`layer`).

    Already pruned entries never come back. Every layer keeps at least `min_keep_per_layer`
    entries; a target that would empty a layer raises ConfigError naming the layer.
    """
    if (sparsity is None) == (keep is None):
        raise ConfigError("give exactly one of sparsity or keep")
    if scope not in ("global", "layer"):
        raise ConfigError(f"scope must be 'global' or 'layer', got '{scope}'")
    if sparsity is not None:
        check_range("sparsity", sparsity, 0.0, 1.0, high_inclusive=False)
    total = sum(s.numel() for s in scores.values())
    masked: dict[str, torch.Tensor] = {}
    for name, s in scores.items():
        s = s.detach().float()
        if current is not None and name in current:
            if current[name].shape != s.shape:
                raise MaskError(f"mask for '{name}' has shape {tuple(current[name].shape)}, "
                                f"scores have {tuple(s.shape)}")
            s = s.masked_fill(~current[name].to(s.device), float("-inf"))
        masked[name] = s
    if scope == "layer":
        out: Masks = {}
        for name, s in masked.items():
            n_keep = (
                int(round(s.numel() * (1.0 - sparsity)))
                if sparsity is not None
                else int(round(keep * s.numel() / total))
            )
            alive = int(torch.isfinite(s).sum())
            n_keep = min(n_keep, alive)
            if n_keep < min_keep_per_layer:
                raise ConfigError(
                    f"target leaves no weight in layer '{name}' ({s.numel()} weights); "
                    "lower the sparsity"
                )
            out[name] = _keep_top(s, n_keep)
        return out
    n_keep = int(round(total * (1.0 - sparsity))) if sparsity is not None else int(keep)
    if not 0 < n_keep <= total:
        raise ConfigError(f"keep count must be in [1, {total}], got {n_keep}")
    flat = torch.cat([s.flatten().cpu() for s in masked.values()])
    n_keep = min(n_keep, int(torch.isfinite(flat).sum()))
    keep_flat = _keep_top(flat, n_keep)
    out = {}
    offset = 0
    for name, s in masked.items():
        m = keep_flat[offset : offset + s.numel()].view_as(s).to(s.device)
        offset += s.numel()
        if int(m.sum()) < min_keep_per_layer:
            raise ConfigError(
                f"target leaves no weight in layer '{name}' ({s.numel()} weights); lower the "
                "sparsity or use scope 'layer'"
            )
        out[name] = m
    return out


# ----------------------------------------------------------------------------- layer budgets

BUDGETS = ("uniform", "erk", "er")


def _raw_density(shape: tuple[int, ...], budget: str) -> float:
    """Erdos-Renyi(-Kernel) scale of a weight shape (out, in, *kernel): ER counts the two
    unit dimensions, ERK every dimension (Evci et al. 2020, eq. in sec. 3)."""
    dims = [int(d) for d in shape] if budget == "erk" else [int(shape[0]), int(shape[1])]
    return sum(dims) / math.prod(dims)


def check_budget(budget: str) -> str:
    """Raise ConfigError (listing the valid ones) unless `budget` names a layer budget."""
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget '{budget}'; valid budgets: {', '.join(BUDGETS)}")
    return budget


def layer_densities(
    shapes: Mapping[str, Sequence[int]], density: float, budget: str = "erk"
) -> dict[str, float]:
    """Per-layer densities (kept fractions) whose count-weighted mean is `density`.

    `uniform`: every layer at `density`. `er`/`erk`: layer l gets eps * raw_l with raw_l =
    (n_in + n_out) / (n_in n_out) (ER) or sum(shape) / prod(shape) (ERK); while some layer
    would exceed density 1 (eps * raw_l > 1) the one with the largest raw_l is made dense and
    eps re-solved over the rest (as the RigL authors do; without it the total is wrong)."""
    check_budget(budget)
    check_range("density", density, 0.0, 1.0, low_inclusive=False)
    shapes = {n: tuple(int(d) for d in s) for n, s in shapes.items()}
    for name, shape in shapes.items():
        if budget != "uniform" and len(shape) < 2:
            raise ConfigError(f"budget '{budget}' needs weight matrices or kernels; "
                              f"'{name}' has shape {shape}")
    if budget == "uniform":
        return dict.fromkeys(shapes, float(density))
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: _raw_density(s, budget) for n, s in shapes.items()}
    total = sum(sizes.values())
    dense: set[str] = set()
    while True:
        free = [n for n in shapes if n not in dense]
        budget_left = density * total - sum(sizes[n] for n in dense)
        eps = budget_left / sum(raw[n] * sizes[n] for n in free)
        over = [n for n in free if eps * raw[n] > 1.0]
        if not over:
            break
        dense.add(max(over, key=lambda n: raw[n]))
    return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}


def layer_keep_counts(
    shapes: Mapping[str, Sequence[int]], density: float, budget: str = "erk"
) -> dict[str, int]:
    """Integer kept counts per layer following `layer_densities`, summing to
    round(density * total) exactly (largest remainders get the leftover units); a layer left
    with no weight raises ConfigError naming it."""
    dens = layer_densities(shapes, density, budget)
    sizes = {n: math.prod(int(d) for d in s) for n, s in shapes.items()}
    target = int(round(density * sum(sizes.values())))
    exact = {n: dens[n] * sizes[n] for n in shapes}
    counts = {n: min(sizes[n], int(math.floor(exact[n] + 1e-9))) for n in shapes}
    order = sorted(shapes, key=lambda n: exact[n] - counts[n], reverse=True)
    left = target - sum(counts.values())
    for n in order * 2:  # a second pass only when caps skipped some layers
        if left <= 0:
            break
        if counts[n] < sizes[n]:
            counts[n] += 1
            left -= 1
    for n, c in counts.items():
        if c < 1:
            raise ConfigError(f"budget '{budget}' at density {density:g} leaves no weight in "
                              f"layer '{n}' ({sizes[n]} weights); raise the density")
    return counts


def select_by_counts(
    scores: Mapping[str, torch.Tensor],
    counts: Mapping[str, int],
    *,
    current: Mapping[str, torch.Tensor] | None = None,
) -> Masks:
    """Keep exactly `counts[name]` highest-scoring entries of each layer (ties broken by
    index, never over-pruning). Entries already pruned in `current` are never kept; a count
    above the entries still alive raises ConfigError."""
    out: Masks = {}
    for name, s in scores.items():
        if name not in counts:
            raise ConfigError(f"no kept count given for layer '{name}'")
        s = s.detach().float()
        n_keep = int(counts[name])
        if current is not None and name in current:
            s = s.masked_fill(~current[name].to(s.device), float("-inf"))
            alive = int(current[name].sum())
        else:
            alive = s.numel()
        if not 0 <= n_keep <= alive:
            raise ConfigError(f"layer '{name}': cannot keep {n_keep} of {alive} entries")
        out[name] = _keep_top(s, n_keep)
    return out
