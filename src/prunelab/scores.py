"""Saliency scores for parameters and units (Evci 2018; Mean Replacement Pruning).

Higher score = more important = kept (feed parameter scores to `prunelab.selection.
select_masks`, unit scores to `select_units`). Pruning sets one weight to 0 (delta w = -w),
which changes the loss by -w*g + 1/2 w^2 H_ii + O(w^3), so

- magnitude |w|; Taylor-1 `-w*g` (signed first-order loss change) and `|w*g|`;
- Hessian term `w^2 * H_ii` and Taylor-2 `-w*g + scale * 1/2 w^2 H_ii` (Optimal Brain Damage,
  LeCun et al. 1990), with the diagonal of the Hessian computed exactly (`hessian_diagonal`);
- `hessian-full` `w*(Hw)` and `taylor2-full` `-w*g + scale * 1/2 w*(Hw)` with Hw a
  Hessian-vector product of the full Hessian: each weight's share of w^T H w, the second-order
  change of zeroing *all* weights at once, with every cross term; as a ranking of single
  weights it is worse (Spearman 0.69 against the oracle where the diagonal form gives 0.995,
  issue 20.6c);
- oracle: the exact loss change of zeroing each weight alone (one forward per weight,
  vectorised; small networks only); random.

Unit scores (a_{n,i} the post-activation output of unit i on sample n, a_bar_i its mean,
g = dL/da): incoming-weight norm; mean-replacement saliency MRS_i = sum_n |g_{n,i}(a_{n,i} -
a_bar_i)| for all units of all layers from one forward and one backward pass; removal saliency
sum_n |a g|; oracle = exact loss change of replacing the unit by its mean; random. For conv
filters the products are summed over positions before the absolute value (the first-order
loss change of sample n). With a mean-reduced loss, MRS is the mean over samples of the
absolute first-order loss change, in loss units, comparable across layers.

`batches` is one (x, y) pair or an iterable of them; scores are averaged over batches weighted
by batch size. Scoring runs in eval mode and never changes the model (weights, grads, mode).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap
from torch.nn import functional as F

from prunelab.data.source import DataSource
from prunelab.data.source import batches as source_batches
from prunelab.errors import ConfigError, UnknownNameError, check_range
from prunelab.groups import is_chain
from prunelab.masks import prunable_parameters
from prunelab.selection import select_masks
from prunelab.shrink import UnitLayer, flat_modules, unit_layers

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

PARAMETER_SCORES = ("magnitude", "taylor1", "taylor1-abs", "hessian", "taylor2", "hessian-full",
                    "taylor2-full", "oracle", "random")
UNIT_SCORES = ("mrs", "norm", "removal", "oracle", "random")


def _batches(batches: Batch | Iterable[Batch] | None) -> list[Batch]:
    if batches is None:
        return []
    if isinstance(batches, DataSource):  # a source: its unaugmented training split (bounded)
        return source_batches(batches)
    if isinstance(batches, tuple) and len(batches) == 2 and isinstance(batches[0], torch.Tensor):
        return [batches]
    out = list(batches)
    for b in out:
        if not (isinstance(b, (tuple, list)) and len(b) == 2):
            raise ConfigError("batches must be an (x, y) pair or an iterable of (x, y) pairs")
    return [(b[0], b[1]) for b in out]


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, t in modes.items():
            m.train(t)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------- parameters


def _loss_of(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor):
    base = {n: p.detach() for n, p in model.named_parameters()}
    base.update({n: b for n, b in model.named_buffers()})

    def f(sub: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_fn(functional_call(model, {**base, **sub}, (x,)), y)

    return f


def gradient_and_hvp(
    model: nn.Module, batch: Batch, names: list[str], *, loss_fn: LossFn | None = None,
    vector: Mapping[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """Gradient of the batch loss wrt the named parameters and, with `vector`, the Hessian-
    vector product H v (full Hessian over those parameters), without touching the model."""
    loss_fn = loss_fn or F.cross_entropy
    dev = _device(model)
    x, y = batch[0].to(dev), batch[1].to(dev)
    params = dict(model.named_parameters())
    w = {n: params[n].detach() for n in names}
    f = _loss_of(model, loss_fn, x, y)
    with _eval_mode(model), torch.enable_grad():
        if vector is None:
            return grad(f)(w), None
        v = {n: vector[n].detach().to(w[n]) for n in names}
        g, hv = jvp(grad(f), (w,), (v,))
    return g, hv


def parameter_scores(
    model: nn.Module,
    batches: Batch | Iterable[Batch] | None,
    score: str = "magnitude",
    *,
    loss_fn: LossFn | None = None,
    names: list[str] | None = None,
    hessian_scale: float = 1.0,
    seed: int = 0,
    max_oracle_weights: int = 25_000,
    oracle_chunk: int = 256,
) -> dict[str, torch.Tensor]:
    """Score every weight of the Linear/Conv layers (or the parameters in `names`):
    {parameter name -> tensor of its shape}; higher = keep. See the module docstring."""
    if score not in PARAMETER_SCORES:
        raise UnknownNameError("parameter score", score, PARAMETER_SCORES)
    check_range("hessian_scale", hessian_scale, 0.0)
    loss_fn = loss_fn or F.cross_entropy
    params = dict(model.named_parameters())
    names = list(prunable_parameters(model)) if names is None else list(names)
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ConfigError(f"no parameter named {', '.join(unknown)}")
    w = {n: params[n].detach() for n in names}
    if score == "magnitude":
        return {n: t.abs().clone() for n, t in w.items()}
    if score == "random":
        gen = torch.Generator().manual_seed(seed)
        return {n: torch.rand(t.shape, generator=gen).to(t.device) for n, t in w.items()}
    data = _batches(batches)
    if not data:
        raise ConfigError(f"score '{score}' needs data: pass at least one (x, y) batch")
    if score == "oracle":
        total = sum(t.numel() for t in w.values())
        if total > max_oracle_weights:
            raise ConfigError(
                f"score 'oracle' needs one forward pass per weight; the model has {total} "
                f"scored weights (max_oracle_weights={max_oracle_weights}); use a smaller "
                "network or another score"
            )
        return _oracle_parameter_scores(model, data, w, loss_fn, oracle_chunk)
    n_total = sum(int(b[0].shape[0]) for b in data)
    out = {n: torch.zeros_like(t) for n, t in w.items()}
    for batch in data:
        weight = batch[0].shape[0] / n_total
        full = score in ("hessian-full", "taylor2-full")
        g, hv = gradient_and_hvp(model, batch, names, loss_fn=loss_fn,
                                 vector=w if full else None)
        if score in ("hessian", "taylor2"):  # w * (diag(H) w): the single-weight term
            diag = hessian_diagonal(model, batch, names, loss_fn=loss_fn)
            hv = {n: diag[n] * t for n, t in w.items()}
        for n, t in w.items():
            if score == "taylor1":
                s = -t * g[n]
            elif score == "taylor1-abs":
                s = (t * g[n]).abs()
            elif score in ("hessian", "hessian-full"):
                s = t * hv[n]
            else:
                s = -t * g[n] + hessian_scale * 0.5 * t * hv[n]
            out[n] += weight * s
    return out


def hessian_diagonal(
    model: nn.Module, batch: Batch, names: list[str], *, loss_fn: LossFn | None = None,
    chunk: int = 32,
) -> dict[str, torch.Tensor]:
    """Exact diagonal of the Hessian of the batch loss wrt each named parameter, without
    touching the model. The weight and bias of an `nn.Linear` called once on a 2-D input come
    from the second derivatives of the per-sample losses wrt its pre-activations z (one
    Hessian-vector product per output unit, `chunk` at a time): z_nj is the only place W_jk
    enters, so d2L/dW_jk^2 = sum_n a_nk^2 d2L/dz_nj^2 exactly, given a loss that sums or
    averages per-sample terms of samples that do not interact (eval mode; cross_entropy).
    Any other parameter costs one Hessian-vector product per entry."""
    loss_fn = loss_fn or F.cross_entropy
    dev = _device(model)
    x, y = batch[0].to(dev), batch[1].to(dev)
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    f = _loss_of(model, loss_fn, x, y)
    out: dict[str, torch.Tensor] = {}
    done: set[str] = set()
    with _eval_mode(model):
        for name in names:
            if name in done:
                continue
            mod_name, _, attr = name.rpartition(".")
            mod = modules.get(mod_name)
            if isinstance(mod, (nn.Linear, nn.Conv2d)) and attr in ("weight", "bias"):
                diag = _layer_diagonal(mod, f, chunk)
                if diag is not None:
                    prefix = f"{mod_name}." if mod_name else ""
                    for a, d in zip(("weight", "bias"), diag):
                        if prefix + a in names and d is not None:
                            out[prefix + a] = d.to(params[prefix + a])
                            done.add(prefix + a)
                    if name in done:
                        continue
            out[name] = _coordinate_diagonal(f, name, params[name].detach(), chunk)
            done.add(name)
    return out


# Entries of one chunk of batched Hessian-vector products in a layer's output space.
_DIAGONAL_BUDGET = 2**24


def _layer_input_columns(mod: nn.Module, a: torch.Tensor) -> torch.Tensor | None:
    """The input as (samples, inputs per output entry, output positions), so that the layer's
    output is z[n, c, p] = sum_j W[c, j] A[n, j, p] + b[c]; None when not of that form."""
    if isinstance(mod, nn.Linear):
        return a.unsqueeze(2) if a.dim() == 2 else None
    if not isinstance(mod, nn.Conv2d) or mod.groups != 1 or mod.padding_mode != "zeros":
        return None
    padding = mod.padding
    if isinstance(padding, str):
        if padding != "valid":
            return None
        padding = 0
    return F.unfold(a, mod.kernel_size, dilation=mod.dilation, padding=padding,
                    stride=mod.stride)


def _layer_diagonal(mod: nn.Module, f: Callable, chunk: int):
    """(diag for the weight, diag for the bias or None) of a Linear/Conv2d layer from the
    per-sample second derivatives wrt its outputs; None when the layer is not called exactly
    once, its input is not of the form `_layer_input_columns` handles, or entry-by-entry
    products would be fewer."""
    calls: list[torch.Tensor] = []
    shapes: list[tuple[int, ...]] = []
    delta: list[torch.Tensor] = []

    def hook(m, inp, out):
        calls.append(inp[0].detach())
        shapes.append(tuple(out.shape))
        return out + delta[0] if delta else None

    handle = mod.register_forward_hook(hook)
    try:
        with torch.no_grad():
            f({})
        if len(calls) != 1:
            return None
        A = _layer_input_columns(mod, calls[0])
        if A is None:
            return None
        n, inputs, positions = A.shape
        units = mod.weight.shape[0]
        dirs = units * positions  # one product per output entry (all samples at once)
        if dirs >= mod.weight.numel():
            return None
        z_shape = shapes[0]
        dtype, dev = A.dtype, A.device
        delta.append(torch.zeros(z_shape, dtype=dtype, device=dev, requires_grad=True))
        diag_w = torch.zeros(units, inputs, dtype=dtype, device=dev)
        diag_b = torch.zeros(units, dtype=dtype, device=dev)
        squares = None
        with torch.enable_grad():
            (g,) = torch.autograd.grad(f({}), delta[0], create_graph=True)
            if not g.requires_grad:  # the loss is linear in the layer's output
                dirs = 0
            k = max(1, min(chunk, _DIAGONAL_BUDGET // max(n * dirs, 1)))
            for start in range(0, dirs, k):
                idx = torch.arange(start, min(dirs, start + k), device=dev)
                rows = torch.arange(idx.numel(), device=dev)
                c0, p0 = idx // positions, idx % positions
                V = torch.zeros(idx.numel(), n, dirs, dtype=dtype, device=dev)
                V[rows, :, idx] = 1.0
                (hv,) = torch.autograd.grad(g, delta[0], grad_outputs=V.view(-1, *z_shape),
                                            retain_graph=True, is_grads_batched=True)
                # col[i, n, p] = d2L / dz[n, c0_i, p] dz[n, c0_i, p0_i]
                col = hv.reshape(idx.numel(), n, units, positions)[rows, :, c0, :]
                if positions == 1:  # Linear: sum_n A[n, j]^2 col[i, n]
                    if squares is None:
                        squares = A[:, :, 0] * A[:, :, 0]
                    part = col[:, :, 0] @ squares
                else:  # sum_n A[n, j, p0_i] sum_p A[n, j, p] col[i, n, p]
                    inner = torch.bmm(A, col.permute(1, 2, 0))  # (n, inputs, chunk)
                    part = (A[:, :, p0] * inner).sum(0).T
                diag_w.index_add_(0, c0, part)
                diag_b.index_add_(0, c0, col.sum(dim=(1, 2)))
    finally:
        handle.remove()
    bias = diag_b if mod.bias is not None else None
    return diag_w.view_as(mod.weight), bias


def _coordinate_diagonal(f: Callable, name: str, w: torch.Tensor,
                         chunk: int) -> torch.Tensor:
    """Diagonal of the Hessian wrt one parameter, one Hessian-vector product per entry
    (forward-over-reverse, `chunk` entries per vmap)."""
    numel = w.numel()

    def hv(v: torch.Tensor) -> torch.Tensor:
        return jvp(grad(lambda t: f({name: t})), (w,), (v.view_as(w),))[1].flatten()

    out = torch.empty(numel, dtype=w.dtype, device=w.device)
    with torch.enable_grad():
        for start in range(0, numel, chunk):
            idx = torch.arange(start, min(numel, start + chunk), device=w.device)
            rows = torch.arange(idx.numel(), device=w.device)
            V = torch.zeros(idx.numel(), numel, dtype=w.dtype, device=w.device)
            V[rows, idx] = 1.0
            out[idx] = vmap(hv)(V)[rows, idx]
    return out.view_as(w)


@torch.no_grad()
def _oracle_parameter_scores(model, data, w, loss_fn, chunk) -> dict[str, torch.Tensor]:
    n_total = sum(int(b[0].shape[0]) for b in data)
    dev = _device(model)
    out = {n: torch.zeros_like(t) for n, t in w.items()}
    with _eval_mode(model):
        for x, y in data:
            x, y = x.to(dev), y.to(dev)
            f = _loss_of(model, loss_fn, x, y)
            base = f({})
            weight = x.shape[0] / n_total
            for name, t in w.items():
                flat = t.flatten()
                numel = flat.numel()
                deltas = torch.empty(numel, dtype=t.dtype, device=t.device)
                for start in range(0, numel, chunk):
                    idx = torch.arange(start, min(numel, start + chunk), device=t.device)
                    zs = flat.unsqueeze(0).repeat(idx.numel(), 1)
                    zs[torch.arange(idx.numel(), device=t.device), idx] = 0.0
                    losses = vmap(lambda z, name=name, t=t: f({name: z.view_as(t)}))(zs)
                    deltas[idx] = losses - base
                out[name] += weight * deltas.view_as(t)
    return out


def select_parameters(
    scores: Mapping[str, torch.Tensor], sparsity: float, *, scope: str = "global",
    current: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Weight masks keeping the highest scores (thin wrapper over `select_masks`)."""
    return select_masks(scores, sparsity=sparsity, scope=scope, current=current)


# ----------------------------------------------------------------------------- units


@dataclass
class UnitStats:
    """Per hidden layer: MRS, removal saliency, post-activation mean and std per unit."""

    mrs: dict[str, torch.Tensor]
    removal: dict[str, torch.Tensor]
    means: dict[str, torch.Tensor]
    stds: dict[str, torch.Tensor]
    samples: int


def _hidden_layers(model: nn.Module) -> list[UnitLayer]:
    layers = unit_layers(model)
    if not layers:
        raise ConfigError("the model has no hidden layer whose units could be scored")
    return layers


def unit_statistics(
    model: nn.Module, batches: Batch | Iterable[Batch], *, loss_fn: LossFn | None = None
) -> UnitStats:
    """MRS, removal saliency, means and stds of every hidden unit of every layer: per batch
    one forward pass (forward hooks catch the post-activation outputs) and one backward pass
    (autograd.grad wrt those outputs, so no parameter .grad is touched). Graph models: per
    channel group (`prunelab.group_scores.group_statistics`)."""
    if not is_chain(model):
        from prunelab.group_scores import group_statistics

        return group_statistics(model, batches, loss_fn=loss_fn)
    loss_fn = loss_fn or F.cross_entropy
    data = _batches(batches)
    if not data:
        raise ConfigError("unit scores need data: pass at least one (x, y) batch")
    layers = _hidden_layers(model)
    flat = flat_modules(model)
    dev = _device(model)
    n_total = sum(int(b[0].shape[0]) for b in data)
    zeros = {L.name: torch.zeros(L.units, device=dev, dtype=torch.float64) for L in layers}
    mrs, rem, s1, s2 = ({k: v.clone() for k, v in zeros.items()} for _ in range(4))
    positions = {L.name: 0 for L in layers}
    with _eval_mode(model), torch.enable_grad():
        for x, y in data:
            acts: dict[str, torch.Tensor] = {}
            handles = []
            for L in layers:
                mod = flat[L.point][1]

                def hook(m, inp, out, name=L.name):
                    acts[name] = out

                handles.append(mod.register_forward_hook(hook))
            try:
                out = model(x.to(dev))
            finally:
                for h in handles:
                    h.remove()
            loss = loss_fn(out, y.to(dev))
            names = [L.name for L in layers]
            grads = torch.autograd.grad(loss, [acts[n] for n in names], allow_unused=True)
            b = x.shape[0]
            for name, g in zip(names, grads):
                a = acts[name].detach()
                g = torch.zeros_like(a) if g is None else g.detach()
                spatial = tuple(range(2, a.dim()))
                a_bar = a.mean(dim=(0, *spatial))
                shape = (1, -1) + (1,) * len(spatial)
                d_mean = (g * (a - a_bar.view(shape)))
                d_rem = g * a
                if spatial:
                    d_mean, d_rem = d_mean.sum(dim=spatial), d_rem.sum(dim=spatial)
                # g carries the 1/b of the mean loss, so sum_n |g d| is the batch mean of the
                # per-sample |loss change|; batches are averaged weighted by size.
                mrs[name] += d_mean.abs().sum(0).double() * (b / n_total)
                rem[name] += d_rem.abs().sum(0).double() * (b / n_total)
                per_unit = a.transpose(0, 1).reshape(a.shape[1], -1).double()
                s1[name] += per_unit.sum(1)
                s2[name] += (per_unit**2).sum(1)
                positions[name] += per_unit.shape[1]
    means, stds = {}, {}
    for L in layers:
        n = max(positions[L.name], 1)
        mu = s1[L.name] / n
        var = (s2[L.name] / n - mu**2).clamp_min(0.0)
        means[L.name] = mu.float()
        stds[L.name] = var.sqrt().float()
    return UnitStats({k: v.float() for k, v in mrs.items()},
                     {k: v.float() for k, v in rem.items()}, means, stds, n_total)


def unit_means(model: nn.Module, batches: Batch | Iterable[Batch]) -> dict[str, torch.Tensor]:
    """Post-activation mean of every hidden unit over the data (over positions for conv
    filters): what mean replacement puts in a removed unit's place."""
    return unit_statistics(model, batches).means


def unit_scores(
    model: nn.Module,
    batches: Batch | Iterable[Batch] | None,
    score: str = "mrs",
    *,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    means: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """{hidden layer name -> score per unit}, higher = keep: 'mrs', 'norm' (incoming-weight
    L2 norm), 'removal', 'oracle' (exact loss change of mean replacement, one forward of the
    rest of the network per unit; `means` default: measured on the same data), 'random'.
    Graph models: {channel group -> score per channel} (`prunelab.group_scores`)."""
    if score not in UNIT_SCORES:
        raise UnknownNameError("unit score", score, UNIT_SCORES)
    if not is_chain(model):
        from prunelab.group_scores import group_unit_scores

        return group_unit_scores(model, batches, score, loss_fn=loss_fn, seed=seed, means=means)
    layers = _hidden_layers(model)
    if score == "norm":
        return {L.name: L.module.weight.detach().reshape(L.units, -1).norm(dim=1).clone()
                for L in layers}
    if score == "random":
        gen = torch.Generator().manual_seed(seed)
        return {L.name: torch.rand(L.units, generator=gen) for L in layers}
    data = _batches(batches)
    if not data:
        raise ConfigError(f"unit score '{score}' needs data: pass at least one (x, y) batch")
    if score in ("mrs", "removal"):
        stats = unit_statistics(model, data, loss_fn=loss_fn)
        return stats.mrs if score == "mrs" else stats.removal
    if means is None:
        means = unit_means(model, data)
    return replacement_loss_change(model, data, means, loss_fn=loss_fn)


@torch.no_grad()
def replacement_loss_change(
    model: nn.Module,
    batches: Batch | Iterable[Batch],
    values: Mapping[str, torch.Tensor],
    *,
    loss_fn: LossFn | None = None,
) -> dict[str, torch.Tensor]:
    """Exact change of the mean loss when each hidden unit alone outputs the constant
    values[layer][i] (its mean: the mean-replacement oracle; zeros: the removal oracle).
    Graph models: values[group][consumer][j] (`prunelab.group_scores`)."""
    if not is_chain(model):
        from prunelab import group_scores

        return group_scores.replacement_loss_change(model, batches, values, loss_fn=loss_fn)
    loss_fn = loss_fn or F.cross_entropy
    data = _batches(batches)
    layers = _hidden_layers(model)
    flat = flat_modules(model)
    dev = _device(model)
    n_total = sum(int(b[0].shape[0]) for b in data)
    out = {L.name: torch.zeros(L.units, dtype=torch.float64) for L in layers}
    with _eval_mode(model):
        for x, y in data:
            x, y = x.to(dev), y.to(dev)
            weight = x.shape[0] / n_total
            h = x
            pos = 0
            for L in layers:
                for _, m in flat[pos : L.point + 1]:
                    h = m(h)
                pos = L.point + 1
                rest = flat[pos:]
                base = _run(rest, h, loss_fn, y)
                vals = values[L.name].to(h)
                for i in range(L.units):
                    z = h.clone()
                    z[:, i] = vals[i]
                    out[L.name][i] += weight * (_run(rest, z, loss_fn, y) - base)
    return {k: v.float() for k, v in out.items()}


def _run(mods: list[tuple[str, nn.Module]], h: torch.Tensor, loss_fn: LossFn,
         y: torch.Tensor) -> float:
    for _, m in mods:
        h = m(h)
    return float(loss_fn(h, y))


def select_units(
    scores: Mapping[str, torch.Tensor],
    *,
    fraction: float | None = None,
    count: int | None = None,
    scope: str = "layer",
    current: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Unit masks after pruning the lowest-scoring `fraction` of the units still alive (or
    `count` of them), within each layer (`layer`; a count is shared in proportion to the
    alive units) or ranked over all layers (`global`). Pruned units stay pruned; emptying a
    layer raises ConfigError naming it."""
    if (fraction is None) == (count is None):
        raise ConfigError("give exactly one of fraction or count")
    if fraction is not None:
        check_range("fraction", fraction, 0.0, 1.0, high_inclusive=False)
    if scope not in ("global", "layer"):
        raise ConfigError(f"scope must be 'global' or 'layer', got '{scope}'")
    cur = {n: (current[n].cpu().bool() if current is not None and n in current
               else torch.ones(s.numel(), dtype=torch.bool)) for n, s in scores.items()}
    alive = {n: int(m.sum()) for n, m in cur.items()}
    n_alive = sum(alive.values())
    if count is not None:
        check_range("count", count, 0, n_alive - len(scores))
    ranked = {n: s.detach().cpu().float().masked_fill(~cur[n], float("inf"))
              for n, s in scores.items()}
    out = {n: m.clone() for n, m in cur.items()}
    if scope == "layer":
        if fraction is not None:
            n_prune = {n: int(math.floor(fraction * a + 1e-9)) for n, a in alive.items()}
        else:
            shares = {n: count * a / max(n_alive, 1) for n, a in alive.items()}
            n_prune = {n: int(math.floor(v)) for n, v in shares.items()}
            rest = count - sum(n_prune.values())
            for n in sorted(shares, key=lambda k: shares[k] - n_prune[k], reverse=True)[:rest]:
                n_prune[n] += 1
        for n, k in n_prune.items():
            if alive[n] - k < 1:
                raise ConfigError(f"pruning would remove every unit of layer '{n}' "
                                  f"({alive[n]} alive)")
            if k:
                out[n][torch.topk(ranked[n], k, largest=False).indices] = False
        return out
    n_prune = int(math.floor(fraction * n_alive + 1e-9)) if fraction is not None else int(count)
    if n_prune:
        names = list(ranked)
        flat = torch.cat([ranked[n] for n in names])
        owner = torch.cat([torch.full((ranked[n].numel(),), k) for k, n in enumerate(names)])
        offset = torch.cumsum(torch.tensor([0] + [ranked[n].numel() for n in names]), 0)
        for j in torch.topk(flat, n_prune, largest=False).indices.tolist():
            k = int(owner[j])
            out[names[k]][j - int(offset[k])] = False
        for n, m in out.items():
            if not bool(m.any()):
                raise ConfigError(f"pruning would remove every unit of layer '{n}'; "
                                  "prune less or use scope 'layer'")
    return out


def dead_units(
    model: nn.Module,
    batches: Batch | Iterable[Batch],
    *,
    tol: float = 1e-4,
    loss_fn: LossFn | None = None,
) -> dict[str, dict]:
    """Units whose output can be replaced by a constant with ~no change in the loss: MRS (mean
    per-sample absolute first-order loss change) <= `tol`. Per layer: units, dead count and
    indices, and how many have constant output (std <= tol). Graph models: per channel group
    (`prunelab.group_scores.group_dead_units`)."""
    if not is_chain(model):
        from prunelab.group_scores import group_dead_units

        return group_dead_units(model, batches, tol=tol, loss_fn=loss_fn)
    check_range("tol", tol, 0.0)
    stats = unit_statistics(model, batches, loss_fn=loss_fn)
    report: dict[str, dict] = {}
    for name, m in stats.mrs.items():
        dead = (m <= tol).nonzero().flatten()
        report[name] = {
            "units": int(m.numel()),
            "dead": int(dead.numel()),
            "dead_fraction": float(dead.numel() / m.numel()),
            "dead_indices": dead.tolist(),
            "constant": int((stats.stds[name] <= tol).sum()),
        }
    return report
