"""Gradient flow through a sparse network at initialisation (or any point), per mask.

Two views of how well signal and gradient pass through the masked network f(x; w * m):

- `gradient_norms`: the norm of the loss gradient of each masked layer's effective weights,
  g_l * m_l (what a masked optimizer step sees), on a batch, and the global norm. Layers that
  a mask starves show up as near-zero norms (e.g. Lee et al. 2020, Evci et al. 2020).
- `jacobian_singular_values`: the singular values of the input-output Jacobian
  d f(x) / d x (outputs x input features) of each of a few samples; dynamical isometry
  (Saxe et al.; Pennington et al.) wants them near 1. Cost: per sample one vector-Jacobian
  product per output (vmapped reverse mode, i.e. about n_out backward passes) plus an SVD of
  an n_out x n_in matrix, O(n_out^2 n_in); `max_samples` bounds it (default 16: a LeNet-5 on
  MNIST takes well under a second). Meant for small models.

Both work on a private copy with the mask applied (the model is never mutated); the Jacobian
is taken in eval mode (BatchNorm with running statistics: per-sample Jacobians do not exist
with batch statistics), the gradient norms in the model's own mode on the copy.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap
from torch.nn import functional as F

from prunelab.errors import ConfigError, check_range
from prunelab.masks import apply_masks, prunable_parameters, validate_masks

__all__ = ["gradient_flow", "gradient_norms", "jacobian_singular_values"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _masked_copy(model: nn.Module, masks: Mapping[str, torch.Tensor] | None) -> nn.Module:
    probe = copy.deepcopy(model)
    if masks is not None:
        validate_masks(probe, masks)
        apply_masks(probe, masks)
    return probe


def gradient_norms(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
                   masks: Mapping[str, torch.Tensor] | None = None, *,
                   loss_fn: LossFn | None = None) -> dict[str, Any]:
    """{"layers": {name: ||g * m||}, "global": sqrt(sum of squares)} for the masked network on
    `batch`: the prunable weights (those in `masks`, or every Linear/Conv weight) of a copy
    with the masks applied."""
    loss_fn = loss_fn or F.cross_entropy
    probe = _masked_copy(model, masks)
    params = dict(probe.named_parameters())
    names = list(masks) if masks is not None else list(prunable_parameters(probe))
    dev = next(probe.parameters()).device
    x, y = batch[0].to(dev), batch[1].to(dev)
    with torch.enable_grad():
        loss = loss_fn(probe(x), y)
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
    layers = {}
    for n, g in zip(names, grads):
        if g is None:
            layers[n] = 0.0
            continue
        if masks is not None:
            g = g * masks[n].to(g.device, g.dtype)
        layers[n] = float(g.norm())
    return {"layers": layers, "global": math.sqrt(sum(v * v for v in layers.values())),
            "loss": float(loss.detach())}


def jacobian_singular_values(model: nn.Module, x: torch.Tensor,
                             masks: Mapping[str, torch.Tensor] | None = None, *,
                             max_samples: int = 16) -> torch.Tensor:
    """Singular values (descending) of d f(x_i) / d x_i for the first `max_samples` samples
    of `x`, shape (samples, min(n_out, n_in)), on an eval-mode copy with `masks` applied."""
    check_range("max_samples", max_samples, 1)
    probe = _masked_copy(model, masks).eval()
    dev = next(probe.parameters()).device
    x = x[:max_samples].to(dev).detach()
    if x.shape[0] == 0:
        raise ConfigError("the Jacobian needs at least one sample")
    state = {**{n: p.detach() for n, p in probe.named_parameters()},
             **dict(probe.named_buffers())}

    def f(xi: torch.Tensor) -> torch.Tensor:
        return functional_call(probe, state, (xi.unsqueeze(0),)).squeeze(0)

    with torch.no_grad():
        jac = vmap(jacrev(f))(x)  # (samples, *out, *in)
    jac = jac.reshape(x.shape[0], -1, x[0].numel())  # (samples, outputs, input features)
    return torch.linalg.svdvals(jac.double()).to(torch.float32)


def gradient_flow(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
                  masks: Mapping[str, torch.Tensor] | None = None, *,
                  loss_fn: LossFn | None = None, max_samples: int = 16) -> dict[str, Any]:
    """Both analyses on one batch, with a summary of the singular values (mean, max, min,
    the mean condition number max/min and the fraction within [0.5, 2])."""
    norms = gradient_norms(model, batch, masks, loss_fn=loss_fn)
    sv = jacobian_singular_values(model, batch[0], masks, max_samples=max_samples)
    smallest = sv[:, -1].clamp_min(1e-30)
    summary = {
        "mean": float(sv.mean()), "max": float(sv.max()), "min": float(sv.min()),
        "condition_mean": float((sv[:, 0] / smallest).mean()),
        "fraction_near_one": float(((sv >= 0.5) & (sv <= 2.0)).float().mean()),
        "samples": int(sv.shape[0]),
    }
    return {"gradient_norms": norms, "jacobian": {"summary": summary,
                                                  "singular_values": sv.tolist()}}
