"""Physical removal of channel groups from graph models (`prunelab.groups`): group masks -> a
genuinely smaller copy. `prunelab.shrink.shrink` sends every model that is not a plain chain
here; chains keep their own path.

Removing channel j of a group slices every member at `member.index[j]`: the producers' rows
(weight dim 0 and bias), the BatchNorms' weight, bias and running statistics, the consumers'
columns (every flattened position), and a parameter-free channel map (`PadShortcut`: its
left/right padding is recounted, so input channel i still lands where the kept output channels
expect it). Without means, the shrunk network computes exactly what the network computes with
every member of the removed channels zeroed (`groups.group_weight_masks`), in train and eval
mode, for groups whose elementwise ops map 0 to 0 (relu, tanh, ...; `Group.zero_preserving`).

Mean replacement (`means`: {group -> {consumer layer -> mean of the channel as that consumer
reads it}}, `prunelab.scores.unit_means` measures them): each consumer gets the constant its
removed inputs contributed, W[:, c] summed over the kernel (and over a channel's flattened
columns) times the mean. Where it goes (`fold`): "auto" adds it to the consumer's bias; a
consumer without a bias whose output only a BatchNorm reads gets it as a shift of that norm's
running mean (running_mean -= delta: exact in eval mode; in train mode the batch mean cancels a
constant shift anyway, so nothing is lost); otherwise a bias is created. "bias" always uses
(or creates) the consumer's bias. When is the fold exact? For Linear consumers, 1x1 and
unpadded convolutions: everywhere. For a zero-padded convolution the removed channel's
constant is multiplied by the taps that fall inside the image, fewer at the border, while the
folded constant is the full-kernel sum: the shrunk network equals the mean-replaced network at
every output position whose receptive field lies inside the input (the interior), and differs
at the border rows/columns by exactly the out-of-image taps times the mean.

`shrink_groups_with_optimizer` does the same mid-training and carries the optimizer's state to
the kept rows/columns (a created bias starts with empty state).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunelab.cifar_nets import PadShortcut
from prunelab.errors import ConfigError, DataError, MaskError
from prunelab.groups import (
    CONVS,
    NORMS,
    Group,
    Member,
    alive_channels,
    analyse,
    check_group_masks,
)
from prunelab.optimizers import carry_state, regroup

FOLDS = ("auto", "bias")
GroupMasks = Mapping[str, torch.Tensor]
GroupMeans = Mapping[str, Mapping[str, torch.Tensor]]


@dataclass
class _Kept:
    """Kept indices per dimension of one module (None: all)."""

    rows: torch.Tensor | None = None  # out / bn / map_out channels
    cols: torch.Tensor | None = None  # in columns / map_in channels


def _complement(removed: set[int], n: int) -> torch.Tensor | None:
    if not removed:
        return None
    return torch.tensor([i for i in range(n) if i not in removed], dtype=torch.long)


def _size(mod: nn.Module, dim: int) -> int:
    if isinstance(mod, nn.Linear):
        return mod.out_features if dim == 0 else mod.in_features
    if isinstance(mod, CONVS):
        return mod.out_channels if dim == 0 else mod.in_channels
    if isinstance(mod, NORMS):
        return mod.num_features
    if isinstance(mod, PadShortcut):
        return mod.out_channels if dim == 0 else mod.in_channels
    raise MaskError(f"shrinking cannot resize {type(mod).__name__}")


def plan(model: nn.Module, groups: Iterable[Group],
         keep: GroupMasks) -> dict[str, _Kept]:
    """Kept rows and columns of every module a removed channel touches."""
    groups = list(groups)
    check_group_masks(groups, keep)
    removed: dict[tuple[str, int], set[int]] = {}
    for g in groups:
        if g.name not in keep or bool(keep[g.name].all()):
            continue
        gone = ~keep[g.name].cpu()
        for m in g.members:
            dim = 1 if m.role in ("in", "map_in") else 0
            removed.setdefault((m.module, dim), set()).update(m.positions(gone).tolist())
    kept: dict[str, _Kept] = {}
    for (name, dim), gone in removed.items():
        mod = model.get_submodule(name)
        k = kept.setdefault(name, _Kept())
        idx = _complement(gone, _size(mod, dim))
        if dim == 0:
            k.rows = idx
        else:
            k.cols = idx
    return kept


def _delta(consumer: nn.Module, member: Member, gone: torch.Tensor,
           mean: torch.Tensor) -> torch.Tensor:
    """What the removed channels `gone` (bool over the group) add to the consumer's output
    per output unit when they read the constant `mean` (full-kernel sum for convolutions)."""
    w = consumer.weight.detach()
    r = gone.nonzero().flatten()
    cols = w.index_select(1, member.positions(r).to(w.device))
    if cols.dim() > 2:
        cols = cols.flatten(2).sum(2)
    per_chan = cols.reshape(cols.shape[0], r.numel(), member.per).sum(2)
    return per_chan @ mean.detach().to(w)[r.to(w.device)]


def _check_means(g: Group, means: GroupMeans) -> Mapping[str, torch.Tensor]:
    if g.name not in means:
        raise MaskError(f"means has no entry for group '{g.name}'")
    by_consumer = means[g.name]
    for m in g.consumers:
        v = by_consumer.get(m.module) if isinstance(by_consumer, Mapping) else None
        if v is None or tuple(v.shape) != (g.size,):
            raise MaskError(f"means for group '{g.name}' need a ({g.size},) tensor for "
                            f"consumer '{m.module}'")
    return by_consumer


def _deltas(model: nn.Module, groups: list[Group], keep: GroupMasks,
            means: GroupMeans) -> dict[tuple[str, str | None], torch.Tensor]:
    """{(consumer, bn_after) -> total constant its removed inputs contribute}."""
    out: dict[tuple[str, str | None], torch.Tensor] = {}
    for g in groups:
        if g.name not in keep or bool(keep[g.name].all()):
            continue
        by_consumer = _check_means(g, means)
        gone = ~keep[g.name].cpu()
        for m in g.consumers:
            consumer = model.get_submodule(m.module)
            d = _delta(consumer, m, gone, by_consumer[m.module])
            key = (m.module, m.bn_after)
            out[key] = out[key] + d if key in out else d
    return out


def _bn_absorbs(bn: nn.Module) -> bool:
    """A norm that always uses batch statistics cancels a constant shift by itself."""
    return not bn.track_running_stats or bn.running_mean is None


# ----------------------------------------------------------------------------- building


def _new_module(old: nn.Module, kept: _Kept, bias: bool | None = None) -> nn.Module:
    kw = {}
    if isinstance(old, (nn.Linear,) + CONVS + NORMS):
        p = old.weight if getattr(old, "weight", None) is not None else old.running_mean
        kw = {"device": p.device, "dtype": p.dtype}
    rows = _size(old, 0) if kept.rows is None else kept.rows.numel()
    cols = _size(old, 1) if kept.cols is None else kept.cols.numel()
    if isinstance(old, nn.Linear):
        return nn.Linear(cols, rows, bias=bias, **kw)
    if isinstance(old, CONVS):
        return type(old)(cols, rows, old.kernel_size, stride=old.stride, padding=old.padding,
                         dilation=old.dilation, groups=old.groups, bias=bias,
                         padding_mode=old.padding_mode, **kw)
    if isinstance(old, NORMS):
        return type(old)(rows, eps=old.eps, momentum=old.momentum, affine=old.affine,
                         track_running_stats=old.track_running_stats, **kw)
    new = PadShortcut(cols, rows, old.stride)
    keep_out = torch.arange(old.out_channels) if kept.rows is None else kept.rows
    new.left = int((keep_out < old.left).sum())
    new.right = int((keep_out >= old.left + old.in_channels).sum())
    if new.left + new.right + cols != rows:
        raise MaskError(f"shrinking '{type(old).__name__}' would not keep its input channels "
                        "together; the group masks do not fit the model")
    return new


def _slice(t: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None) -> torch.Tensor:
    if rows is not None:
        t = t.index_select(0, rows.to(t.device))
    if cols is not None and t.dim() > 1:
        t = t.index_select(1, cols.to(t.device))
    return t.clone()


@dataclass
class _ParamMap:
    """Where a parameter of the shrunk model comes from: the old name and its kept rows and
    columns (None: a bias created by the fold)."""

    old: str | None
    rows: torch.Tensor | None
    cols: torch.Tensor | None

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        return _slice(t, self.rows, self.cols)


@torch.no_grad()
def _build(model: nn.Module, groups: list[Group], keep: GroupMasks,
           means: GroupMeans | None, fold: str) -> tuple[nn.Module, dict[str, _ParamMap]]:
    if fold not in FOLDS:
        raise ConfigError(f"fold must be one of {', '.join(FOLDS)}; got '{fold}'")
    kept = plan(model, groups, keep)
    deltas = _deltas(model, groups, keep, means) if means is not None else {}
    bias_add: dict[str, torch.Tensor] = {}
    bn_shift: dict[str, torch.Tensor] = {}
    for (consumer, bn), d in deltas.items():
        mod = model.get_submodule(consumer)
        if fold == "auto" and mod.bias is None and bn:
            bn_shift[bn] = bn_shift[bn] + d if bn in bn_shift else d
        else:
            bias_add[consumer] = bias_add[consumer] + d if consumer in bias_add else d
    for name in list(bias_add) + list(bn_shift):
        kept.setdefault(name, _Kept())
    new = copy.deepcopy(model)
    params: dict[str, _ParamMap] = {}
    for name, k in kept.items():
        old = model.get_submodule(name)
        prefix = f"{name}." if name else ""
        if isinstance(old, PadShortcut):
            new.set_submodule(name, _new_module(old, k))
            continue
        has_bias = getattr(old, "bias", None) is not None or name in bias_add
        layer = _new_module(old, k, bias=has_bias if not isinstance(old, NORMS) else None)
        cols = k.cols if isinstance(old, (nn.Linear,) + CONVS) else None
        for attr in ("weight", "bias"):
            src = getattr(old, attr, None)
            dst = getattr(layer, attr, None)
            if dst is None:
                continue
            if src is None:  # a bias the fold creates
                value = torch.zeros(_size(old, 0), dtype=dst.dtype, device=dst.device)
                params[prefix + attr] = _ParamMap(None, k.rows, None)
            else:
                value = src.detach()
                params[prefix + attr] = _ParamMap(prefix + attr, k.rows,
                                                  cols if attr == "weight" else None)
            if attr == "bias" and name in bias_add:
                value = value + bias_add[name].to(value)
            dst.copy_(_slice(value, k.rows, cols if attr == "weight" else None))
            dst.requires_grad_(src.requires_grad if src is not None else
                               old.weight.requires_grad)
        if isinstance(old, NORMS) and old.running_mean is not None:
            rm = old.running_mean.detach()
            if name in bn_shift:
                rm = rm - bn_shift[name].to(rm)
            layer.running_mean.copy_(_slice(rm, k.rows, None))
            layer.running_var.copy_(_slice(old.running_var.detach(), k.rows, None))
            layer.num_batches_tracked.copy_(old.num_batches_tracked)
        layer.train(old.training)
        new.set_submodule(name, layer)
    return new, params


def _groups_for(model: nn.Module, groups: Iterable[Group] | None,
                example_input: torch.Tensor | None, keep: GroupMasks) -> list[Group]:
    if groups is not None:
        return list(groups)
    result = analyse(model, example_input)
    check_group_masks(result.groups, keep, result.refused)
    return result.groups


def shrink_groups(
    model: nn.Module,
    keep: GroupMasks,
    *,
    groups: Iterable[Group] | None = None,
    means: GroupMeans | None = None,
    fold: str = "auto",
    example_input: torch.Tensor | None = None,
) -> nn.Module:
    """A new, physically smaller copy of `model` without the channels False in `keep`
    ({group name -> bool over its channels}); `groups` default: `channel_groups(model,
    example_input)`. With `means` the removed channels' means are folded into the consumers
    (see the module docstring for where and when it is exact)."""
    groups = _groups_for(model, groups, example_input, keep)
    return _build(model, groups, keep, means, fold)[0]


def shrink_group_tensors(model: nn.Module, keep: GroupMasks,
                         tensors: Mapping[str, torch.Tensor], *,
                         groups: Iterable[Group] | None = None,
                         example_input: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Map tensors shaped like the model's parameters ({name -> tensor}: weight masks,
    scores) onto the shrunk model's parameters; others pass unchanged."""
    groups = _groups_for(model, groups, example_input, keep)
    _, params = _build(model, groups, keep, None, "auto")
    shapes = {n: p.shape for n, p in model.named_parameters()}
    out = {}
    for name, t in tensors.items():
        pm = params.get(name)
        out[name] = pm.apply(t) if pm is not None and t.shape == shapes.get(name) else t.clone()
    return out


def shrink_groups_with_optimizer(
    model: nn.Module,
    keep: GroupMasks,
    optimizer: torch.optim.Optimizer,
    *,
    groups: Iterable[Group] | None = None,
    means: GroupMeans | None = None,
    fold: str = "auto",
    example_input: torch.Tensor | None = None,
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Shrink mid-training: the smaller model and a new optimizer of the same class and
    hyper-parameters over its parameters, whose per-parameter state (momentum, Adam moments)
    is the old state at the kept rows/columns (scalar state such as `step` copied; a bias the
    fold creates joins its layer's weight's param group with empty state). Hooks registered on
    the old optimizer must be attached again."""
    groups = _groups_for(model, groups, example_input, keep)
    new_model, params = _build(model, groups, keep, means, fold)
    new_params = dict(new_model.named_parameters())
    name_of = {id(p): n for n, p in model.named_parameters()}
    created = {n for n, pm in params.items() if pm.old is None}

    def successors(name: str) -> list[torch.Tensor]:
        """The parameter, and after a weight the bias the fold created for its layer."""
        bias = name[: -len("weight")] + "bias" if name.endswith("weight") else None
        return [new_params[name]] + ([new_params[bias]] if bias in created else [])

    new_opt = regroup(optimizer, name_of, successors)
    carry_state(optimizer, new_opt, name_of, new_params, params)
    return new_model, new_opt


@torch.no_grad()
def fold_group_means(model: nn.Module, groups: Iterable[Group],
                     removed: GroupMasks, means: GroupMeans) -> None:
    """Mean replacement in place, for masked training: add to each consumer's bias (or shift
    the running mean of the BatchNorm that alone reads a bias-free consumer) what the channels
    True in `removed` contribute when they read their means. Mask those channels afterwards and
    the model computes what the mean-replaced model computes (see the module docstring for the
    padded-convolution border). MaskError naming a consumer with neither."""
    groups = list(groups)
    keep = {n: ~r.bool().cpu() for n, r in removed.items() if bool(r.any())}
    for (consumer, bn), d in _deltas(model, [g for g in groups if g.name in keep],
                                     keep, means).items():
        mod = model.get_submodule(consumer)
        if mod.bias is not None:
            mod.bias.add_(d.to(mod.bias))
        elif bn:
            norm = model.get_submodule(bn)
            if not _bn_absorbs(norm):
                norm.running_mean.sub_(d.to(norm.running_mean))
        else:
            raise MaskError(fold_refusal(consumer))


def fold_refusal(consumer: str) -> str:
    return (f"mean replacement into '{consumer}' needs a bias there or a BatchNorm reading it "
            "alone; use mean_replacement=false")


def fold_targets_missing(model: nn.Module, groups: Iterable[Group]) -> list[str]:
    """Consumers mean replacement cannot fold into in place (no bias, no BatchNorm after)."""
    out = []
    for g in groups:
        for m in g.consumers:
            if model.get_submodule(m.module).bias is None and not m.bn_after:
                out.append(m.module)
    return list(dict.fromkeys(out))


def remap_groups(model: nn.Module, groups: Iterable[Group], keep: GroupMasks) -> list[Group]:
    """The groups of the network `shrink_groups(model, keep, groups=groups)` builds, without
    tracing it again: each group restricted to its kept channels (same order), every index
    renumbered among its module's kept rows or columns."""
    groups = list(groups)
    kept = plan(model, groups, keep)
    out = []
    for g in groups:
        k = keep.get(g.name)
        sel = None if k is None or bool(k.all()) else k.cpu()
        members = []
        for m in g.members:
            idx = m.index if sel is None else m.index[sel]
            kk = kept.get(m.module)
            along = None if kk is None else (kk.cols if m.role in ("in", "map_in") else kk.rows)
            if along is not None:
                idx = torch.searchsorted(along, idx * m.per) // m.per
            members.append(Member(m.module, m.role, idx, m.per, m.bn_after))
        out.append(Group(g.name, members, g.zero_preserving))
    return out


def group_widths(groups: Iterable[Group]) -> dict[str, int]:
    """Channels per group, by group name."""
    return {g.name: g.size for g in groups}


def dead_channel_plan(model: nn.Module, groups: list[Group]) -> dict[str, torch.Tensor]:
    """Keep masks dropping the dead channels (`groups.alive_channels`); a group with none alive
    keeps its first channel (a network needs one)."""
    alive = alive_channels(model, groups)
    for v in alive.values():
        if not bool(v.any()):
            v[0] = True
    return alive


# ----------------------------------------------------------------------------- saving

_RESIZABLE = (nn.Linear,) + CONVS + NORMS + (PadShortcut,)


def _args(m: nn.Module) -> dict[str, Any]:
    if isinstance(m, nn.Linear):
        return {"in_features": m.in_features, "out_features": m.out_features,
                "bias": m.bias is not None}
    if isinstance(m, CONVS):
        return {"in_channels": m.in_channels, "out_channels": m.out_channels,
                "bias": m.bias is not None}
    if isinstance(m, NORMS):
        return {"num_features": m.num_features}
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "left": m.left}


def graph_architecture(model: nn.Module) -> dict[str, Any]:
    """A JSON-friendly description of a (shrunk) graph model: how `build_model` built the full
    network and the sizes of its Conv/Linear/BatchNorm/PadShortcut layers."""
    from prunelab.models import build_info

    info = build_info(model)
    if info is None:
        raise MaskError(f"cannot describe {type(model).__name__} for saving: only networks "
                        "built by prunelab.models.build_model (and their shrunk copies) can be "
                        "rebuilt from an architecture")
    return {"format": "graph", "build": info,
            "modules": {n: {"type": type(m).__name__, "args": _args(m)}
                        for n, m in model.named_modules() if isinstance(m, _RESIZABLE)}}


@torch.no_grad()
def from_graph_architecture(spec: Mapping[str, Any]) -> nn.Module:
    """Build the network a `graph_architecture` description names: the registry network
    (initialised as `build_model` does, under the current RNG), every resized layer cut to its
    recorded size (its first rows/columns of that initialisation; a bias the fold created
    starts at zero)."""
    from prunelab.models import build_model

    try:
        b = spec["build"]
        model = build_model(b["model"], b["input_shape"], b["num_classes"], **b["options"])
        modules = spec["modules"]
    except (KeyError, TypeError) as exc:
        raise DataError(f"graph architecture lacks {exc}") from None
    have = dict(model.named_modules())
    for name, entry in modules.items():
        old = have.get(name)
        if old is None or type(old).__name__ != entry.get("type"):
            raise DataError(f"architecture names layer '{name}' ({entry.get('type')}), which "
                            f"the {b['model']} network does not have")
        args = entry["args"]
        rows = args.get("out_channels", args.get("out_features", args.get("num_features")))
        cols = args.get("in_channels", args.get("in_features", rows))
        k = _Kept(torch.arange(rows) if rows != _size(old, 0) else None,
                  torch.arange(cols) if not isinstance(old, NORMS) and cols != _size(old, 1)
                  else None)
        if isinstance(old, PadShortcut):
            new = PadShortcut(cols, rows, old.stride)
            new.left, new.right = int(args["left"]), rows - cols - int(args["left"])
            model.set_submodule(name, new)
            continue
        bias = args.get("bias") if not isinstance(old, NORMS) else None
        if k.rows is None and k.cols is None and (bias is None or bias == (old.bias is not None)):
            continue
        layer = _new_module(old, k, bias=bias)
        for attr in ("weight", "bias", "running_mean", "running_var"):
            src, dst = getattr(old, attr, None), getattr(layer, attr, None)
            if dst is None:
                continue
            if src is None:
                dst.zero_()
            else:
                dst.copy_(_slice(src, k.rows, k.cols if attr == "weight" else None))
        model.set_submodule(name, layer)
    return model


def is_graph_architecture(spec: Any) -> bool:
    return isinstance(spec, Mapping) and spec.get("format") == "graph"
