"""Scores for pruning at initialisation: SNIP, GraSP, SynFlow (iterative), random.

Higher score = kept, as everywhere in prunelab (feed them to `prunelab.selection`).

- SNIP (Lee et al. 2019): connection sensitivity |g * w|, g the gradient of the loss on a few
  training batches (averaged over batches before the absolute value).
- GraSP (Wang et al. 2020): the paper scores S = -w * (H g) and removes the highest S, which
  preserves the gradient norm; the kept score here is therefore w * (H g) (H the Hessian, g the
  gradient of the loss with logits divided by `temperature`, 200 in the authors' code).
- SynFlow (Tanaka et al. 2020): |w * dR/dw| for the synaptic flow R = 1^T (prod_l |W_l|) 1,
  computed data-free on a linearised copy (weights |w| times the current mask, every bias and
  BatchNorm shift 0, input all ones, float64) and applied iteratively: `iterations` rounds,
  the kept density falling geometrically to the target (d^(k/n) in round k), each round
  re-scoring the masked network. BatchNorm (`bn`): "identity" removes it during scoring
  (default); "eval" keeps it as its positive per-channel scale |gamma| / sqrt(var + eps);
  "none" evaluates it as it is, which is refused while it is in training mode (the batch
  statistics of one all-ones input are degenerate: zero variance, every output the shift).

Data-driven scores (SNIP, GraSP) run on a private copy of the model in the model's own mode
(a network in training mode uses batch statistics, as its first training step would), so the
model, its running statistics and its gradients are never touched. Gradients are taken with
`torch.autograd.grad`, never through `.grad`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from prunelab.errors import ConfigError, check_range
from prunelab.masks import Masks
from prunelab.selection import (
    check_budget,
    layer_keep_counts,
    select_by_counts,
    select_masks,
)

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SYNFLOW_BN = ("identity", "eval", "none")


# ----------------------------------------------------------------------------- data


def sample_batches(data: Any, batches: int, batch_size: int,
                   generator: torch.Generator | None = None) -> list[Batch]:
    """`batches` training batches of `batch_size` drawn without replacement from `data`: an
    in-memory Dataset (x_train, y_train), an (x, y) pair, or any source with
    `train_batches(epoch, batch_size, seed)` (its first batches of epoch 0)."""
    check_range("batches", batches, 1)
    check_range("batch_size", batch_size, 1)
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
    elif hasattr(data, "x_train"):
        x, y = data.x_train, data.y_train
    elif hasattr(data, "train_batches"):
        seed = 0 if generator is None else int(torch.randint(2**31 - 1, (1,),
                                                             generator=generator))
        out = []
        for xb, yb in data.train_batches(0, batch_size, seed):
            out.append((xb, yb))
            if len(out) == batches:
                break
        if not out:
            raise ConfigError("the data source gave no training batch to score on")
        return out
    else:
        raise ConfigError("scoring needs training data: a Dataset, an (x, y) pair or a data "
                          f"source; got {type(data).__name__}")
    n = int(x.shape[0])
    if n == 0:
        raise ConfigError("scoring needs training data, the training set is empty")
    order = torch.randperm(n, generator=generator)[: batches * batch_size]
    return [(x[order[i:i + batch_size]], y[order[i:i + batch_size]])
            for i in range(0, order.numel(), batch_size)]


def _to(batch: Batch, device: torch.device) -> Batch:
    return batch[0].to(device), batch[1].to(device)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_names(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise ConfigError(f"no parameter '{missing[0]}' in the model")
    return {n: params[n] for n in names}


def _check_finite(scores: Mapping[str, torch.Tensor], what: str) -> None:
    for n, s in scores.items():
        if not torch.isfinite(s).all():
            raise ConfigError(f"{what} scores of '{n}' are not finite (the loss overflowed); "
                              "check the model's initialisation and the data scale")


# ----------------------------------------------------------------------------- SNIP, GraSP


def _grad(copy_model: nn.Module, params: list[torch.Tensor], batch: Batch, loss_fn: LossFn,
          temperature: float = 1.0, create_graph: bool = False) -> tuple[torch.Tensor, ...]:
    x, y = batch
    out = copy_model(x)
    loss = loss_fn(out / temperature if temperature != 1.0 else out, y)
    return torch.autograd.grad(loss, params, create_graph=create_graph)


def snip_scores(model: nn.Module, batches: Batch | Iterable[Batch], names: Sequence[str], *,
                loss_fn: LossFn | None = None) -> dict[str, torch.Tensor]:
    """SNIP connection sensitivity |g * w| of the named parameters, g the loss gradient
    averaged over `batches` (weighted by batch size). The model is left untouched."""
    loss_fn = loss_fn or F.cross_entropy
    batches = [batches] if isinstance(batches, tuple) else list(batches)
    probe = copy.deepcopy(model)
    params = list(_check_names(probe, names).values())
    dev = _device(probe)
    total = [torch.zeros_like(p) for p in params]
    seen = 0
    with torch.enable_grad():
        for batch in batches:
            x, y = _to(batch, dev)
            for acc, g in zip(total, _grad(probe, params, (x, y), loss_fn)):
                acc.add_(g.detach(), alpha=x.shape[0])
            seen += x.shape[0]
    scores = {n: (acc / seen * p.detach()).abs() for n, acc, p in zip(names, total, params)}
    _check_finite(scores, "SNIP")
    return scores


def grasp_scores(model: nn.Module, batches: Batch | Iterable[Batch], names: Sequence[str], *,
                 loss_fn: LossFn | None = None, temperature: float = 200.0
                 ) -> dict[str, torch.Tensor]:
    """GraSP kept score w * (H g) of the named parameters: g the gradient of the loss of
    logits / `temperature` averaged over `batches`, H g the Hessian-gradient product (reverse
    over reverse, batch by batch). Keeping the highest w * Hg is removing the highest
    S = -w * Hg, the paper's rule. The model is left untouched."""
    check_range("temperature", temperature, 0.0, low_inclusive=False)
    loss_fn = loss_fn or F.cross_entropy
    batches = [batches] if isinstance(batches, tuple) else list(batches)
    probe = copy.deepcopy(model)
    params = list(_check_names(probe, names).values())
    dev = _device(probe)
    batches = [_to(b, dev) for b in batches]
    weights = [b[0].shape[0] for b in batches]
    seen = sum(weights)
    g = [torch.zeros_like(p) for p in params]
    hg = [torch.zeros_like(p) for p in params]
    with torch.enable_grad():
        for batch, w in zip(batches, weights):
            for acc, gi in zip(g, _grad(probe, params, batch, loss_fn, temperature)):
                acc.add_(gi.detach(), alpha=w / seen)
        for batch, w in zip(batches, weights):
            grads = _grad(probe, params, batch, loss_fn, temperature, create_graph=True)
            z = sum((gi * gv).sum() for gi, gv in zip(grads, g))
            for acc, h in zip(hg, torch.autograd.grad(z, params)):
                acc.add_(h.detach(), alpha=w / seen)
    scores = {n: p.detach() * h for n, p, h in zip(names, params, hg)}
    _check_finite(scores, "GraSP")
    return scores


# ----------------------------------------------------------------------------- SynFlow


def _bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def check_synflow_bn(model: nn.Module, bn: str) -> None:
    """Raise ConfigError for an unknown BatchNorm handling, or for `bn='none'` on a model with
    BatchNorm in training mode."""
    if bn not in SYNFLOW_BN:
        raise ConfigError(f"bn must be one of {', '.join(SYNFLOW_BN)}; got '{bn}'")
    if bn == "none":
        training = [n for n, m in _bn_layers(model) if m.training]
        if training:
            raise ConfigError(
                f"synflow on a model with BatchNorm in training mode ('{training[0]}') and "
                "bn='none': batch statistics of the all-ones probe are degenerate; use "
                "bn='identity' (BatchNorm removed while scoring) or bn='eval'")


class SynFlowProbe:
    """The linearised float64 copy SynFlow scores on: |w| times a mask for the named weights,
    |.| for every other weight, biases and BatchNorm shifts 0, BatchNorm per `bn`."""

    def __init__(self, model: nn.Module, input_shape: Sequence[int], names: Sequence[str],
                 bn: str = "identity"):
        check_synflow_bn(model, bn)
        probe = copy.deepcopy(model).double()
        if bn == "identity":
            for name, _ in _bn_layers(probe):
                *path, leaf = name.split(".")
                parent = probe.get_submodule(".".join(path)) if path else probe
                setattr(parent, leaf, nn.Identity())
        if bn != "none":
            probe.eval()  # dropout off; "eval" BatchNorm uses running statistics
        with torch.no_grad():
            for m in probe.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and bn == "eval" \
                        and m.running_mean is not None:
                    m.running_mean.zero_()  # BatchNorm = positive per-channel scale
            for pname, p in probe.named_parameters():
                if pname.endswith("bias"):
                    p.zero_()
                else:
                    p.abs_()
        self.model = probe
        self.params = _check_names(probe, names)
        self.base = {n: p.detach().clone() for n, p in self.params.items()}
        self.input = torch.ones(1, *[int(s) for s in input_shape], dtype=torch.float64,
                                device=_device(probe))

    def scores(self, masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """|w * dR/dw| with the weights masked by `masks` (pruned entries score 0)."""
        with torch.no_grad():
            for n, p in self.params.items():
                m = masks.get(n) if masks is not None else None
                p.copy_(self.base[n] if m is None else self.base[n] * m.to(p.device))
        names = list(self.params)
        with torch.enable_grad():
            r = self.model(self.input).sum()
            grads = torch.autograd.grad(r, [self.params[n] for n in names], allow_unused=True)
        out = {}
        for n, g in zip(names, grads):
            p = self.params[n].detach()
            out[n] = torch.zeros_like(p) if g is None else (g * p).abs()
        _check_finite(out, "SynFlow")
        return out


def synflow_scores(model: nn.Module, input_shape: Sequence[int], names: Sequence[str], *,
                   masks: Mapping[str, torch.Tensor] | None = None, bn: str = "identity"
                   ) -> dict[str, torch.Tensor]:
    """One round of SynFlow scores (float64) of the named weights under `masks`."""
    return SynFlowProbe(model, input_shape, names, bn).scores(masks)


def select_with_budget(scores: Mapping[str, torch.Tensor], sparsity: float, *,
                       scope: str = "global", budget: str | None = None,
                       current: Mapping[str, torch.Tensor] | None = None) -> Masks:
    """Masks keeping exactly the requested number of entries: with a `budget` (uniform, erk,
    er) each layer keeps its budget's count (`selection.layer_keep_counts`); without one,
    `scope` ranks globally or per layer (`selection.select_masks`)."""
    check_range("sparsity", sparsity, 0.0, 1.0, high_inclusive=False)
    if budget is None:
        return select_masks(scores, sparsity=sparsity, scope=scope, current=current)
    counts = layer_keep_counts({n: tuple(s.shape) for n, s in scores.items()}, 1.0 - sparsity,
                               check_budget(budget))
    return select_by_counts(scores, counts, current=current)


def synflow_masks(model: nn.Module, input_shape: Sequence[int], names: Sequence[str],
                  sparsity: float, *, iterations: int = 100, scope: str = "global",
                  budget: str | None = None, bn: str = "identity") -> Masks:
    """Iterative SynFlow: `iterations` rounds of scoring and pruning, the kept fraction
    d^(k/n) after round k of n (d = 1 - sparsity), ending with exactly the requested counts
    (globally, per layer with `scope='layer'`, or per layer of a `budget`)."""
    check_range("iterations", iterations, 1)
    check_range("sparsity", sparsity, 0.0, 1.0, high_inclusive=False)
    probe = SynFlowProbe(model, input_shape, names, bn)
    shapes = {n: tuple(probe.params[n].shape) for n in names}
    final_counts = None
    if budget is not None:
        final_counts = layer_keep_counts(shapes, 1.0 - sparsity, check_budget(budget))
    density = 1.0 - sparsity
    masks: Masks | None = None
    for k in range(1, iterations + 1):
        scores = probe.scores(masks)
        if final_counts is not None:
            counts = {n: final_counts[n] if k == iterations else max(
                final_counts[n], int(round(math.prod(shapes[n])
                                           * (final_counts[n] / math.prod(shapes[n]))
                                           ** (k / iterations))))
                for n in names}
            masks = select_by_counts(scores, counts, current=masks)
        else:
            s_k = sparsity if k == iterations else 1.0 - density ** (k / iterations)
            masks = select_masks(scores, sparsity=s_k, scope=scope, current=masks)
    assert masks is not None
    return {n: m.to(dict(model.named_parameters())[n].device) for n, m in masks.items()}


# ----------------------------------------------------------------------------- random


def random_scores(model: nn.Module, names: Sequence[str],
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Independent uniform scores (a random mask once selected), drawn on the CPU from
    `generator` so the same seed gives the same mask on any device."""
    params = _check_names(model, names)
    return {n: torch.rand(p.shape, generator=generator).to(p.device) for n, p in params.items()}
