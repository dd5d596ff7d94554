"""Selection: turn per-parameter scores into masks (global or per layer, by fraction or count).

Scores and selection are separate: any score (magnitude, Taylor, ...) plugs in here. Higher
score = more important = kept. Entries already pruned (False in `current`) stay pruned.
"""

from __future__ import annotations

from collections.abc import Mapping

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
