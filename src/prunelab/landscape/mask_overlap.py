"""Mask overlap: how much two sparse networks share, as the Jaccard index of their kept sets,
per layer and globally, across seeds, rewind points, IMP rounds or methods.

J(A, B) = |A & B| / |A | B| over kept (True) entries; two empty masks have J = 1. Two
independent random masks of densities p and q over the same entries have expected
J ~ pq / (p + q - pq) (`random_jaccard`), the chance level a measured overlap is read
against. Masks come as dicts or from disk: a masks.pt file, a run directory (its masks.pt)
or an IMP directory (every level_K with masks, K >= 1, labelled `DIR/level_K`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from prunelab.errors import ConfigError, DataError, MaskError, check_range
from prunelab.masks import Masks, load_masks

__all__ = ["collect_masks", "jaccard", "overlap_matrix", "random_jaccard"]


def _ratio(inter: int, union: int) -> float:
    return 1.0 if union == 0 else inter / union


def jaccard(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Jaccard index of two masks over the parameters both cover: {"global": J, "layers":
    {name: J}, "intersection", "union", "kept_a", "kept_b"}. Masks that share no parameter, or
    hold one with two shapes, raise MaskError."""
    common = [n for n in a if n in b]
    if not common:
        raise MaskError("the two masks cover no common parameter")
    layers: dict[str, float] = {}
    inter_total = union_total = kept_a = kept_b = 0
    for n in common:
        ma, mb = a[n].bool(), b[n].bool().to(a[n].device)
        if ma.shape != mb.shape:
            raise MaskError(f"mask '{n}' has shape {tuple(ma.shape)} in one and "
                            f"{tuple(mb.shape)} in the other")
        inter = int((ma & mb).sum())
        union = int((ma | mb).sum())
        layers[n] = _ratio(inter, union)
        inter_total += inter
        union_total += union
        kept_a += int(ma.sum())
        kept_b += int(mb.sum())
    return {"global": _ratio(inter_total, union_total), "layers": layers,
            "intersection": inter_total, "union": union_total, "kept_a": kept_a,
            "kept_b": kept_b}


def random_jaccard(density_a: float, density_b: float) -> float:
    """Expected Jaccard index of two independent random masks of these densities (large
    layers): pq / (p + q - pq)."""
    check_range("density_a", density_a, 0.0, 1.0)
    check_range("density_b", density_b, 0.0, 1.0)
    p, q = density_a, density_b
    denom = p + q - p * q
    return 1.0 if denom == 0 else p * q / denom


def overlap_matrix(masks: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, Any]:
    """Pairwise Jaccard indices of labelled masks: {"labels", "global": matrix, "layers":
    {name: matrix}, "density": {label: kept fraction}, "chance": matrix of random_jaccard}."""
    labels = list(masks)
    if len(labels) < 2:
        raise ConfigError("mask overlap needs at least two masks")
    k = len(labels)
    glob = [[1.0] * k for _ in range(k)]
    chance = [[1.0] * k for _ in range(k)]
    layer_names = [n for n in masks[labels[0]] if all(n in masks[lb] for lb in labels)]
    layers = {n: [[1.0] * k for _ in range(k)] for n in layer_names}
    density = {}
    for lb in labels:
        m = masks[lb]
        total = sum(m[n].numel() for n in layer_names)
        density[lb] = sum(int(m[n].sum()) for n in layer_names) / max(total, 1)
    for i in range(k):
        for j in range(i + 1, k):
            res = jaccard({n: masks[labels[i]][n] for n in layer_names},
                          {n: masks[labels[j]][n] for n in layer_names})
            glob[i][j] = glob[j][i] = res["global"]
            chance[i][j] = chance[j][i] = random_jaccard(density[labels[i]],
                                                         density[labels[j]])
            for n, v in res["layers"].items():
                layers[n][i][j] = layers[n][j][i] = v
    return {"labels": labels, "global": glob, "layers": layers, "density": density,
            "chance": chance}


def collect_masks(paths: Sequence[str | Path], labels: Sequence[str] | None = None
                  ) -> dict[str, Masks]:
    """Masks from masks.pt files, run directories or IMP directories (each level >= 1), by
    label (the path, `DIR/level_K` for IMP levels, or `labels` when given, one per path)."""
    if labels is not None and len(labels) != len(paths):
        raise ConfigError(f"{len(labels)} labels for {len(paths)} paths")
    out: dict[str, Masks] = {}
    for i, raw in enumerate(paths):
        path = Path(raw)
        label = labels[i] if labels is not None else str(raw)
        if label in out:
            raise ConfigError(f"label '{label}' given twice; label the masks apart")
        if path.is_file():
            out[label] = load_masks(path)
        elif (path / "masks.pt").is_file():
            out[label] = load_masks(path / "masks.pt")
        elif path.is_dir() and any(path.glob("level_*")):
            levels = sorted((int(p.name.split("_")[1]), p) for p in path.glob("level_*")
                            if p.name.split("_")[1].isdigit() and (p / "masks.pt").is_file())
            if not levels:
                raise DataError(f"{path} has IMP levels but none with masks.pt")
            for k, p in levels:
                out[f"{label}/level_{k}"] = load_masks(p / "masks.pt")
        else:
            raise DataError(f"no masks at {path}: expected a masks.pt file, a run directory "
                            "with masks.pt, or an IMP directory with level_K subdirectories")
    return out
