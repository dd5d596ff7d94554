"""Physical removal of pruned units and filters: unit masks -> a genuinely smaller model.

Works on feed-forward `nn.Sequential` chains of Linear and Conv2d layers with elementwise
activations, dropout, max/avg pooling and flatten in between (conv -> relu -> pool -> flatten
-> linear included). A removed unit loses its row (filter) in its own layer and its columns in
the next layer (every flattened position of a filter). The shrunk model computes exactly what
the masked model computes (the unit's outgoing weights zero), or, with `means`, what the model
computes when each removed unit's post-activation output is replaced by its mean: the constant
is pushed through activations/pooling/flatten and folded into the next layer's bias
(W_next[:, i] * a_bar_i; for conv the kernel sum times the constant, exact without padding).

`shrink_with_optimizer` does the same mid-training and carries the optimizer's per-parameter
state (momentum, Adam moments) over to the kept rows and columns; `shrink_tensors` maps any
per-parameter tensors (weight masks, scores) the same way. The input model is never changed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab import atomic
from prunelab.errors import DataError, MaskError
from prunelab.masks import (
    CHAIN_ACTIVATIONS,
    CHAIN_LAYERS,
    CHAIN_MODULES,
    CHAIN_PASSTHROUGH,
    CHAIN_POOLS,
    UnitMasks,
    alive_units,
    sparsity_report,
)
from prunelab.optimizers import carry_state, regroup

# One vocabulary of chain modules, shared with the sparsity report and unit masks.
LAYERS = CHAIN_LAYERS
ACTIVATIONS = CHAIN_ACTIVATIONS
PASSTHROUGH = CHAIN_PASSTHROUGH
POOLS = CHAIN_POOLS
SUPPORTED = CHAIN_MODULES


@dataclass
class UnitLayer:
    """One Linear/Conv2d layer of a chain and where its units go.

    `point` is the flat index of the module whose output is the unit output (the last
    activation after the layer, else the layer itself); `between` are the modules after that
    point up to the next layer; `per_unit` is how many inputs of the next layer each unit feeds
    (flattened positions of a filter; 1 otherwise).
    """

    name: str
    module: nn.Module
    index: int
    point: int
    point_name: str
    between: list[tuple[str, nn.Module]] = field(default_factory=list)
    next_name: str | None = None
    next_module: nn.Module | None = None
    per_unit: int = 1

    @property
    def units(self) -> int:
        m = self.module
        return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def flat_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The leaves of a (nested) nn.Sequential in execution order, by module name; MaskError
    naming the first module shrinking cannot follow."""
    if not isinstance(model, nn.Sequential):
        raise MaskError(
            f"shrinking needs an nn.Sequential chain, got {type(model).__name__}"
        )
    out: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()

    def walk(mod: nn.Module, prefix: str) -> None:
        for name, child in mod._modules.items():
            full = f"{prefix}.{name}" if prefix else name
            if child is None:
                continue
            if isinstance(child, nn.Sequential):
                walk(child, full)
                continue
            if not isinstance(child, SUPPORTED):
                names = ", ".join(t.__name__ for t in SUPPORTED)
                raise MaskError(
                    f"shrinking cannot follow layer '{full}' ({type(child).__name__}); "
                    f"supported: {names}"
                )
            if isinstance(child, LAYERS) and id(child) in seen:
                raise MaskError(f"layer '{full}' is used twice in the chain; cannot shrink it")
            if isinstance(child, nn.Flatten) and (child.start_dim != 1 or child.end_dim != -1):
                raise MaskError(f"shrinking needs Flatten(1, -1), '{full}' flattens "
                                f"dims {child.start_dim}..{child.end_dim}")
            if isinstance(child, nn.Conv2d) and child.groups != 1:
                raise MaskError(f"shrinking cannot follow grouped convolution '{full}' "
                                f"(groups={child.groups})")
            seen.add(id(child))
            out.append((full, child))

    walk(model, "")
    return out


def unit_layers(model: nn.Module, *, include_output: bool = False) -> list[UnitLayer]:
    """The Linear/Conv2d layers of a chain with their unit output point and next layer
    (the output layer last, only with `include_output`)."""
    flat = flat_modules(model)
    idx = [i for i, (_, m) in enumerate(flat) if isinstance(m, LAYERS)]
    if not idx:
        raise MaskError("the model has no Linear or Conv2d layer to shrink")
    layers: list[UnitLayer] = []
    for k, i in enumerate(idx):
        name, mod = flat[i]
        end = idx[k + 1] if k + 1 < len(idx) else len(flat)
        point = i
        for j in range(i + 1, end):
            m = flat[j][1]
            if isinstance(m, POOLS + (nn.Flatten,)):
                break
            if isinstance(m, ACTIVATIONS):
                point = j
        layer = UnitLayer(name, mod, i, point, flat[point][0], between=flat[point + 1 : end])
        if k + 1 < len(idx):
            layer.next_name, layer.next_module = flat[end]
            layer.per_unit = _per_unit(layer)
        layers.append(layer)
    return layers if include_output else layers[:-1]


def _per_unit(layer: UnitLayer) -> int:
    nxt, units = layer.next_module, layer.units
    if isinstance(nxt, nn.Conv2d):
        if isinstance(layer.module, nn.Linear) or nxt.in_channels != units:
            raise MaskError(f"cannot map units of '{layer.name}' onto the input channels of "
                            f"'{layer.next_name}'")
        return 1
    assert isinstance(nxt, nn.Linear)
    if isinstance(layer.module, nn.Conv2d) and not any(
        isinstance(m, nn.Flatten) for _, m in layer.between
    ):
        raise MaskError(f"conv layer '{layer.name}' feeds Linear '{layer.next_name}' without "
                        "a Flatten in between")
    if nxt.in_features % units:
        raise MaskError(f"cannot map the {units} units of '{layer.name}' onto the "
                        f"{nxt.in_features} inputs of '{layer.next_name}'")
    return nxt.in_features // units


def check_unit_masks(model: nn.Module, unit_masks: Mapping[str, torch.Tensor]) -> None:
    """MaskError for unknown layer names, wrong shapes, an emptied layer or a pruned output
    unit: never a silently wrong model."""
    layers = unit_layers(model, include_output=True)
    by_name = {L.name: L for L in layers}
    out_name = layers[-1].name
    for name, m in unit_masks.items():
        if name not in by_name:
            raise MaskError(f"unit mask for '{name}': no Linear/Conv2d layer by that name "
                            f"(layers: {', '.join(by_name)})")
        L = by_name[name]
        if tuple(m.shape) != (L.units,) or m.dtype != torch.bool:
            raise MaskError(f"unit mask for '{name}' must be bool of shape ({L.units},), got "
                            f"{m.dtype} {tuple(m.shape)}")
        if not bool(m.any()):
            raise MaskError(f"unit mask removes every unit of layer '{name}' "
                            f"({L.units} units); keep at least one")
        if name == out_name and not bool(m.all()):
            raise MaskError(f"'{name}' is the output layer; its units cannot be removed")


# ----------------------------------------------------------------------------- the plan


@dataclass
class _ParamPlan:
    new_name: str
    rows: torch.Tensor | None  # kept output rows (None: all)
    cols: torch.Tensor | None  # kept input columns / channels (None: all)

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        if self.rows is not None:
            t = t.index_select(0, self.rows.to(t.device))
        if self.cols is not None and t.dim() > 1:
            t = t.index_select(1, self.cols.to(t.device))
        return t.clone()


def _constant_through(value: torch.Tensor, between: list[tuple[str, nn.Module]],
                      layer: str) -> torch.Tensor:
    """Push per-unit constant outputs through the modules between two layers."""
    v = value
    for name, m in between:
        if isinstance(m, ACTIVATIONS):
            v = m(v)
        elif isinstance(m, nn.AvgPool2d):
            pad = m.padding if isinstance(m.padding, tuple) else (m.padding,)
            if any(p != 0 for p in pad) and m.count_include_pad:
                raise MaskError(
                    f"mean replacement of '{layer}' units cannot pass '{name}' (AvgPool2d with "
                    "padding counts zeros at the border); use plain removal"
                )
        # MaxPool2d, Flatten, Dropout (eval), Identity keep a constant map constant.
    return v


def _bias_delta(L: UnitLayer, removed: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Change of the next layer's bias when `removed` units output their means."""
    nxt = L.next_module
    w = nxt.weight.detach()
    vals = _constant_through(means.detach().to(w), L.between, L.name)
    ridx = removed.nonzero().flatten()
    if isinstance(nxt, nn.Conv2d):
        pad = nxt.padding
        if isinstance(pad, str) and pad != "valid" or not isinstance(pad, str) and any(pad):
            raise MaskError(
                f"mean replacement of '{L.name}' units cannot be folded into '{L.next_name}' "
                f"(padding={pad}: border outputs would differ); use plain removal"
            )
        per_unit = w.sum(dim=(2, 3))  # (out, in)
    else:
        per_unit = w.reshape(w.shape[0], -1, L.per_unit).sum(dim=2)  # (out, units)
    return per_unit[:, ridx] @ vals[ridx]


def _plan(model: nn.Module, unit_masks: Mapping[str, torch.Tensor],
          means: Mapping[str, torch.Tensor] | None):
    check_unit_masks(model, unit_masks)
    layers = unit_layers(model, include_output=True)
    plans: dict[str, _ParamPlan] = {}
    bias_deltas: dict[str, torch.Tensor] = {}
    prev: UnitLayer | None = None
    for L in layers:
        um = unit_masks.get(L.name)
        rows = None if um is None or bool(um.all()) else um.nonzero().flatten()
        cols = None
        if prev is not None:
            pm = unit_masks.get(prev.name)
            if pm is not None and not bool(pm.all()):
                cols = pm.repeat_interleave(prev.per_unit).nonzero().flatten()
                if means is not None:
                    if prev.name not in means:
                        raise MaskError(f"means has no entry for layer '{prev.name}'")
                    mv = means[prev.name]
                    if tuple(mv.shape) != (prev.units,):
                        raise MaskError(f"means for '{prev.name}' must have shape "
                                        f"({prev.units},), got {tuple(mv.shape)}")
                    bias_deltas[L.name] = _bias_delta(prev, ~pm.to(mv.device), mv)
        prefix = f"{L.name}." if L.name else ""
        plans[prefix + "weight"] = _ParamPlan(prefix + "weight", rows, cols)
        if L.module.bias is not None:
            plans[prefix + "bias"] = _ParamPlan(prefix + "bias", rows, None)
        prev = L
    return layers, plans, bias_deltas


@torch.no_grad()
def fold_means(
    model: nn.Module,
    removed: Mapping[str, torch.Tensor],
    means: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Bias propagation in place, for masked training: add to each next layer's bias what
    the units True in `removed` ({layer -> bool}) contribute when they output their means.
    Mask those units' outgoing weights afterwards and the model computes the same function
    as before with the units mean-replaced. Returns the bias changes by next-layer name."""
    layers = {L.name: L for L in unit_layers(model)}
    deltas: dict[str, torch.Tensor] = {}
    for name, rm in removed.items():
        if name not in layers:
            raise MaskError(f"'{name}' is not a hidden Linear/Conv2d layer "
                            f"(hidden layers: {', '.join(layers)})")
        if not bool(rm.any()):
            continue
        L = layers[name]
        if L.next_module.bias is None:
            raise MaskError(f"mean replacement of '{name}' units needs a bias in "
                            f"'{L.next_name}'; use plain removal")
        if name not in means:
            raise MaskError(f"means has no entry for layer '{name}'")
        delta = _bias_delta(L, rm.bool().to(means[name].device), means[name])
        L.next_module.bias.add_(delta.to(L.next_module.bias))
        deltas[L.next_name] = delta
    return deltas


@torch.no_grad()
def dead_unit_constants(
    model: nn.Module, unit_masks: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The post-activation output of each unit False in `unit_masks` when every input it
    has a nonzero weight from is itself such a unit: a constant, activation(bias + what the
    removed units of the layer before feed it), computed layer by layer. These are the values
    `shrink(model, unit_masks, means=...)` folds into the next layers' biases so that removing
    units with no incoming weights keeps the network's function (ReLU(bias) > 0 still feeds
    the next layer). Kept units get their value too; it is never used."""
    check_unit_masks(model, unit_masks)
    flat = flat_modules(model)
    out: dict[str, torch.Tensor] = {}
    prev: UnitLayer | None = None
    for L in unit_layers(model):
        w = L.module.weight
        pre = (L.module.bias.detach().clone() if L.module.bias is not None
               else torch.zeros(L.units, dtype=w.dtype, device=w.device))
        if prev is not None and prev.name in unit_masks:
            removed = ~unit_masks[prev.name].to(w.device)
            if bool(removed.any()):
                pre = pre + _bias_delta(prev, removed, out[prev.name]).to(pre)
        out[L.name] = _constant_through(pre, flat[L.index + 1 : L.point + 1], L.name)
        prev = L
    return out


def shrink_dead_units(model: nn.Module) -> nn.Sequential:
    """A physically smaller copy of `model` without the units `masks.alive_units` finds dead
    (no nonzero incoming weight from a live unit, or no nonzero outgoing weight to one), each
    removed unit's constant output folded into the next layer's bias (`dead_unit_constants`),
    so the copy computes what `model` computes. `sparsity_report`'s `params_after_shrink`
    counts this network. MaskError where a constant cannot be folded exactly (into a padded
    conv) or a whole layer is dead."""
    hidden = {L.name for L in unit_layers(model)}
    masks = {n: m for n, m in alive_units(model).items() if n in hidden and not bool(m.all())}
    if not masks:
        return copy.deepcopy(model)
    full = {L.name: masks.get(L.name, torch.ones(L.units, dtype=torch.bool))
            for L in unit_layers(model)}
    return shrink(model, masks, means=dead_unit_constants(model, full))


def _new_layer(old: nn.Module, n_out: int, n_in: int, bias: bool) -> nn.Module:
    kw = {"device": old.weight.device, "dtype": old.weight.dtype}
    if isinstance(old, nn.Linear):
        return nn.Linear(n_in, n_out, bias=bias, **kw)
    return nn.Conv2d(n_in, n_out, old.kernel_size, stride=old.stride, padding=old.padding,
                     dilation=old.dilation, bias=bias, padding_mode=old.padding_mode, **kw)


@torch.no_grad()
def _build(model: nn.Module, unit_masks: Mapping[str, torch.Tensor],
           means: Mapping[str, torch.Tensor] | None) -> tuple[nn.Module, dict[str, _ParamPlan]]:
    layers, plans, bias_deltas = _plan(model, unit_masks, means)
    new = copy.deepcopy(model)
    for L in layers:
        prefix = f"{L.name}." if L.name else ""
        wp = plans[prefix + "weight"]
        w = wp.apply(L.module.weight.detach())
        delta = bias_deltas.get(L.name)
        has_bias = L.module.bias is not None or delta is not None
        layer = _new_layer(L.module, w.shape[0], w.shape[1], has_bias)
        layer.weight.copy_(w)
        if has_bias:
            b = (L.module.bias.detach().clone() if L.module.bias is not None
                 else torch.zeros(L.units, dtype=w.dtype, device=w.device))
            if delta is not None:
                b = b + delta.to(b)
            layer.bias.copy_(b if wp.rows is None else b.index_select(0, wp.rows.to(b.device)))
            if L.module.bias is None:
                plans[prefix + "bias"] = _ParamPlan(prefix + "bias", wp.rows, None)
        layer.train(L.module.training)
        for p_old, p_new in zip(L.module.parameters(), layer.parameters()):
            p_new.requires_grad_(p_old.requires_grad)
        new.set_submodule(L.name, layer)
    return new, plans


def shrink(
    model: nn.Module,
    unit_masks: Mapping[str, torch.Tensor],
    *,
    means: Mapping[str, Any] | None = None,
    **graph: Any,
) -> nn.Module:
    """A new, physically smaller copy of `model` without the units False in `unit_masks`
    ({layer name -> bool over its units}). Without `means` the removed units contribute
    nothing (as in the masked model); with `means` ({layer -> post-activation mean per unit})
    their mean outputs are folded into the next layer's bias (mean replacement).
    A model that is not a chain goes to `prunelab.graph_shrink.shrink_groups`: the masks and
    means are then per channel group, `graph` takes its groups, fold and example_input."""
    if _graph(model):
        from prunelab.graph_shrink import shrink_groups

        return shrink_groups(model, unit_masks, means=means, **graph)
    return _build(model, unit_masks, means)[0]


def _graph(model: nn.Module) -> bool:
    """Not a plain chain: channel groups (`prunelab.groups`) do the work."""
    from prunelab.groups import is_chain

    return not is_chain(model)


def shrink_tensors(
    model: nn.Module,
    unit_masks: Mapping[str, torch.Tensor],
    tensors: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Map tensors shaped like the model's Linear/Conv parameters ({param name -> tensor},
    e.g. weight masks or scores) onto the shrunk model's parameters; others pass unchanged."""
    if _graph(model):
        from prunelab.graph_shrink import shrink_group_tensors

        return shrink_group_tensors(model, unit_masks, tensors)
    _, plans, _ = _plan(model, unit_masks, None)
    out = {}
    params = dict(model.named_parameters())
    for name, t in tensors.items():
        plan = plans.get(name)
        if plan is None or name not in params or t.shape != params[name].shape:
            out[name] = t.clone()
        else:
            out[name] = plan.apply(t)
    return out


def shrink_with_optimizer(
    model: nn.Module,
    unit_masks: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    means: Mapping[str, torch.Tensor] | None = None,
) -> tuple[nn.Sequential, torch.optim.Optimizer]:
    """Shrink mid-training: the smaller model and a new optimizer of the same class and
    hyper-parameters over its parameters, whose per-parameter state (momentum buffers, Adam
    moments) is the old state at the kept rows/columns (scalar state such as `step` copied).
    Hooks registered on the old optimizer (e.g. a MaskEnforcer) must be attached again.
    Graph models: `prunelab.graph_shrink.shrink_groups_with_optimizer` (group masks)."""
    if _graph(model):
        from prunelab.graph_shrink import shrink_groups_with_optimizer

        return shrink_groups_with_optimizer(model, unit_masks, optimizer, means=means)
    new_model, plans = _build(model, unit_masks, means)
    new_params = dict(new_model.named_parameters())
    name_of = {id(p): n for n, p in model.named_parameters()}
    new_opt = regroup(optimizer, name_of, lambda n: [new_params[n]])
    carry_state(optimizer, new_opt, name_of, new_params, plans)
    return new_model, new_opt


# ----------------------------------------------------------------------------- reports


def shrink_report(
    before: nn.Module, after: nn.Module, input_shape: tuple[int, ...]
) -> dict[str, Any]:
    """Parameters and FLOPs (2 x MACs per sample) before and after, with their ratios."""
    rb = sparsity_report(before, None, input_shape)["global"]
    ra = sparsity_report(after, None, input_shape)["global"]
    return {
        "params_before": rb["params"],
        "params_after": ra["params"],
        "param_ratio": rb["params"] / max(ra["params"], 1),
        "flops_before": rb["flops_dense"],
        "flops_after": ra["flops_dense"],
        "flop_ratio": rb["flops_dense"] / max(ra["flops_dense"], 1),
        "widths_before": widths(before),
        "widths_after": widths(after),
    }


def widths(model: nn.Module) -> dict[str, int]:
    """Units per Linear/Conv2d layer, by layer name (graph models: channels per group)."""
    if _graph(model):
        from prunelab.groups import channel_groups

        return {g.name: g.size for g in channel_groups(model)}
    return {L.name: L.units for L in unit_layers(model, include_output=True)}


# ----------------------------------------------------------------------------- saving


_ARGS: dict[type[nn.Module], Callable[[nn.Module], dict[str, Any]]] = {
    nn.Linear: lambda m: {"in_features": m.in_features, "out_features": m.out_features,
                          "bias": m.bias is not None},
    nn.Conv2d: lambda m: {"in_channels": m.in_channels, "out_channels": m.out_channels,
                          "kernel_size": list(m.kernel_size), "stride": list(m.stride),
                          "padding": m.padding if isinstance(m.padding, str)
                          else list(m.padding),
                          "dilation": list(m.dilation), "bias": m.bias is not None,
                          "padding_mode": m.padding_mode},
    nn.LeakyReLU: lambda m: {"negative_slope": m.negative_slope},
    nn.ELU: lambda m: {"alpha": m.alpha},
    nn.GELU: lambda m: {"approximate": m.approximate},
    nn.Softplus: lambda m: {"beta": m.beta, "threshold": m.threshold},
    nn.Dropout: lambda m: {"p": m.p},
    nn.MaxPool2d: lambda m: {"kernel_size": m.kernel_size, "stride": m.stride,
                             "padding": m.padding, "dilation": m.dilation,
                             "ceil_mode": m.ceil_mode},
    nn.AvgPool2d: lambda m: {"kernel_size": m.kernel_size, "stride": m.stride,
                             "padding": m.padding, "ceil_mode": m.ceil_mode,
                             "count_include_pad": m.count_include_pad},
    nn.Flatten: lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim},
}


def kept_input_mask(model: nn.Module) -> dict[str, torch.Tensor]:
    """The input features a network with gated inputs kept, as a weight mask: for each Linear
    fed directly by a Flatten, its columns with a nonzero weight (the Bernoulli method's
    finalize zeroes the columns of removed features); {} when no column is zero or the chain
    has no such Linear (always for graph models: their inputs carry no gates)."""
    if _graph(model):
        return {}
    chain = flat_modules(model)
    masks: dict[str, torch.Tensor] = {}
    for (_, flat), (name, linear) in zip(chain, chain[1:]):
        if isinstance(flat, nn.Flatten) and isinstance(linear, nn.Linear):
            kept = (linear.weight.detach() != 0).any(dim=0)
            if not bool(kept.all()):
                masks[f"{name}.weight"] = kept.expand_as(linear.weight).clone()
    return masks


def architecture(model: nn.Module) -> list[dict[str, Any]] | dict[str, Any]:
    """A JSON-friendly description of a chain: one entry {name, type, args} per module; of a
    sectioned model, `prunelab.sections.architecture`; of a graph model,
    `prunelab.graph_shrink.graph_architecture` (registry build + layer sizes)."""
    from prunelab import sections

    if sections.is_sectioned(model):
        return sections.architecture(model)
    if _graph(model):
        from prunelab.graph_shrink import graph_architecture

        return graph_architecture(model)
    return [{"name": n, "type": type(m).__name__, "args": _ARGS.get(type(m), lambda m: {})(m)}
            for n, m in flat_modules(model)]


def from_architecture(spec: list[dict[str, Any]] | dict[str, Any]) -> nn.Module:
    """Build the (untrained) chain an `architecture` description names, same module names
    (or the sectioned or graph model of such a description)."""
    if isinstance(spec, dict) and spec.get("format", "").startswith("prunelab.sections"):
        from prunelab.sections import from_architecture as sectioned

        return sectioned(spec)
    from prunelab.graph_shrink import from_graph_architecture, is_graph_architecture

    if is_graph_architecture(spec):
        return from_graph_architecture(spec)
    types = {t.__name__: t for t in SUPPORTED}
    root = nn.Sequential()
    for entry in spec:
        cls = types.get(entry.get("type"))
        if cls is None:
            raise DataError(f"unknown module type '{entry.get('type')}' in architecture")
        args = dict(entry.get("args", {}))
        for k in ("kernel_size", "stride", "dilation"):
            if isinstance(args.get(k), list):
                args[k] = tuple(args[k])
        if isinstance(args.get("padding"), list):
            args["padding"] = tuple(args["padding"])
        parent = root
        *path, leaf = entry["name"].split(".")
        for part in path:
            if part not in parent._modules:
                parent.add_module(part, nn.Sequential())
            parent = parent._modules[part]
        parent.add_module(leaf, cls(**args))
    return root


def save_shrunk(path: str | Path, model: nn.Module) -> None:
    """Save a (shrunk) chain or graph model as its architecture plus weights (no pickled
    modules), loadable without the original."""
    atomic.save_torch(path, {"architecture": architecture(model),
                             "state_dict": {k: v.detach().cpu()
                                            for k, v in model.state_dict().items()}})


def load_shrunk(path: str | Path) -> nn.Module:
    """Load a model written by `save_shrunk` (or a units run's method_state.pt)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"shrunk model file not found: {path}") from None
    except Exception as exc:
        raise DataError(f"cannot read shrunk model {path} ({type(exc).__name__})") from None
    if isinstance(blob, dict) and "shrunk" in blob:  # a units run's method_state.pt
        blob = blob["shrunk"]
    if not isinstance(blob, dict) or "architecture" not in blob:
        raise DataError(f"{path} holds no shrunk model (architecture + state_dict)")
    model = from_architecture(blob["architecture"])
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise DataError(f"{path}: the weights do not fit the architecture ({first})") from None
    return model


def unit_masks_all(model: nn.Module) -> UnitMasks:
    """All-True unit masks for every hidden (non-output) layer of a chain."""
    return {L.name: torch.ones(L.units, dtype=torch.bool) for L in unit_layers(model)}
