"""Training FLOPs of sparse and dense training, from the per-layer forward FLOPs of
`masks.sparsity_report` (2 x multiply-accumulates of each Linear/Conv weight per sample).

The convention is the one of Evci et al. (2020, RigL, appendix H): a training step costs three
forward passes (the forward, the gradient with respect to the activations and the gradient with
respect to the weights, each about one forward), and a sparse layer costs its kept fraction of
the dense one. Bias additions, activations, pooling and the optimizer update are not counted
(they are the same for every method and small next to the matrix products).

`training_flops` adds up phases of training with different masks (gradual magnitude pruning
shrinks its mask as it trains; a fixed mask or SET/RigL keep one kept count per layer) and
`dense_gradient_steps` extra dense forward/backward passes: RigL's update steps, where
`prunelab.methods.dst` computes the dense gradient by a separate pass over the step's minibatch
(the paper counts 2 f_S + f_D for such a step instead of our 3 f_S + 3 f_D, since it replaces
the step's backward pass; we count what our implementation does).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from prunelab.errors import ConfigError, check_range
from prunelab.masks import sparsity_report

STEP_PASSES = 3  # forward + backward to activations + backward to weights, each ~ one forward

KeptCounts = Mapping[str, int | torch.Tensor]


def layer_forward_flops(model: nn.Module,
                        input_shape: Iterable[int]) -> dict[str, tuple[int, int]]:
    """{weight parameter name: (weight count, dense forward FLOPs per sample)} for every
    Linear/Conv layer, as `masks.sparsity_report` counts them."""
    report = sparsity_report(model, None, tuple(input_shape))
    out = {}
    for entry in report["layers"]:
        if "flops_dense" not in entry:
            raise ConfigError(f"layer '{entry['layer']}' was not reached by a forward pass of "
                              "the input shape; its FLOPs are unknown")
        name = f"{entry['layer']}.weight" if entry["layer"] else "weight"
        out[name] = (int(entry["weights"]), int(entry["flops_dense"]))
    return out


def _kept(value: int | torch.Tensor) -> int:
    return int(value.sum()) if isinstance(value, torch.Tensor) else int(value)


def kept_forward_flops(layers: Mapping[str, tuple[int, int]], kept: KeptCounts | None = None
                       ) -> int:
    """Forward FLOPs per sample of the layers from `layer_forward_flops`: dense, or with each
    weight in `kept` (a kept count or a bool mask) at its kept fraction (2 x kept x positions);
    layers not in `kept` count dense."""
    total = 0
    for name, (weights, dense) in layers.items():
        if kept is not None and name in kept:
            k = _kept(kept[name])
            if not 0 <= k <= weights:
                raise ConfigError(f"kept count of '{name}' is {k}, outside [0, {weights}]")
            total += dense * k // weights  # dense = 2 x weights x positions: exact
        else:
            total += dense
    unknown = sorted(set(kept or {}) - set(layers))
    if unknown:
        raise ConfigError(f"kept counts for unknown layer(s): {', '.join(unknown)}")
    return total


def training_flops(model: nn.Module, input_shape: Iterable[int], batch_size: int,
                   phases: Sequence[tuple[int, KeptCounts | None]], *,
                   dense_gradient_steps: int = 0) -> dict[str, Any]:
    """Training FLOPs: each phase (steps, kept counts or masks; None = dense) costs steps x
    batch_size x 3 forward FLOPs at its kept counts; each dense-gradient step adds batch_size
    x 3 dense forward FLOPs. Returns the total, the dense training of the same steps
    (`dense_total`), their `ratio`, the step counts and the per-sample forward FLOPs."""
    check_range("batch_size", batch_size, 1)
    check_range("dense_gradient_steps", dense_gradient_steps, 0)
    layers = layer_forward_flops(model, input_shape)
    dense = kept_forward_flops(layers)
    total = steps = 0
    for n, kept in phases:
        check_range("phase steps", n, 0)
        total += n * batch_size * STEP_PASSES * kept_forward_flops(layers, kept)
        steps += n
    total += dense_gradient_steps * batch_size * STEP_PASSES * dense
    dense_total = steps * batch_size * STEP_PASSES * dense
    return {"total": total, "dense_total": dense_total,
            "ratio": total / dense_total if dense_total else float("nan"),
            "steps": steps, "dense_gradient_steps": dense_gradient_steps,
            "forward_dense": dense,
            "forward_final": kept_forward_flops(layers, phases[-1][1]) if phases else dense}


def phases_from_trace(trace: Sequence[tuple[int, Mapping[str, int]]],
                      total_steps: int) -> list[tuple[int, Mapping[str, int]]]:
    """Phases for `training_flops` from a trace of (first step, kept counts) in step order:
    each entry holds until the next one's step, the last until `total_steps`. The counts
    recorded after step s hold from step s on (a mask updated after step s is used by step
    s + 1, the (s+1)-th step, which the phase starting at s counts)."""
    phases = []
    for i, (start, counts) in enumerate(trace):
        end = trace[i + 1][0] if i + 1 < len(trace) else total_steps
        if end < start:
            raise ConfigError("a kept-count trace must be in step order")
        phases.append((end - start, counts))
    return phases


__all__ = ["STEP_PASSES", "kept_forward_flops", "layer_forward_flops", "phases_from_trace",
           "training_flops"]
