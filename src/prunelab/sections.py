"""Nonlinear sections with shortcuts: the structures layer gates switch on and off.

A `Section` computes y = post(shortcut(x) + body(pre(x))): `body` is the nonlinear section (a
hidden Linear + activation of an MLP; conv-BN-ReLU-conv-BN of a ResNet basic block), the
shortcut is the identity where the shapes match and a linear projection where they differ
(an MLP layer changing width gets a bias-free `nn.Linear`; a ResNet block keeps its own
shortcut: option A's zero padding, option B's 1x1 conv + BN, a WRN block's 1x1 projection
of its pre-activated input). Layer gates multiply the body's output (a forward hook on
`body`), so with the gate at 0 the section is exactly its shortcut, and removing it
(`rebuild`: `body = None`) gives the same outputs while no longer computing the body.

`to_sections` turns an MLP chain (`prunelab.models.mlp`: Flatten, Linear-activation pairs, a
Linear classifier; hidden layers become modules `layer1`, `layer2`, ...) or a CIFAR ResNet /
WRN (`prunelab.cifar_nets`: every block becomes a Section under its own name, `layer1.0`, ...)
into sections, in place or on a copy. Hidden layers left out of `sections` stay plain.

Units inside an MLP section's body (the outputs of its Linear) can be removed too: the
Linear loses those rows and a `Scatter` puts the kept units back at their positions in the
stream (the stream width is the shortcut's, so it never changes). A removed section whose
shortcut is a projection followed directly by a Linear (the classifier, or another removed
section's projection) is folded into it when that has fewer parameters (`fold`).

`rebuild` returns, with the smaller model, a plan saying where each new parameter comes from
(the same parameter, some of its rows, or nothing: a folded layer), and `carry_optimizer`
builds an optimizer of the same class and hyper-parameters whose per-parameter state
(momentum, Adam moments, step) follows that plan, as `prunelab.shrink.shrink_with_optimizer`
does for chains. `architecture` / `from_architecture` describe and rebuild a sectioned model
without pickling modules (a fixed vocabulary of module types).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunelab.cifar_nets import BasicBlock, CifarResNet, PadShortcut, WideBlock, WideResNet
from prunelab.errors import ConfigError, DataError
from prunelab.masks import CHAIN_ACTIVATIONS
from prunelab.optimizers import carry_state, regroup

SPEC_FORMAT = "prunelab.sections/1"


class Scatter(nn.Module):
    """Puts a body's kept units (dim 1) at positions `index` of a zero stream of `width`."""

    def __init__(self, index: torch.Tensor, width: int):
        super().__init__()
        self.width = int(width)
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.long).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros((x.shape[0], self.width, *x.shape[2:]))
        return out.index_copy(1, self.index, x)

    def extra_repr(self) -> str:
        return f"{self.index.numel()} -> {self.width}"


class Section(nn.Module):
    """y = post(shortcut(x or pre(x)) + body(pre(x))); `body` None: the section was removed.

    `unit_point` is the index in `body` (an nn.Sequential) of the module whose outputs are
    the section's units (the activation after its Linear), None where units are not gated;
    `shortcut_from_pre` feeds the shortcut pre(x) instead of x (a WRN block's projection)."""

    def __init__(self, body: nn.Module | None, shortcut: nn.Module | None = None, *,
                 pre: nn.Module | None = None, post: nn.Module | None = None,
                 shortcut_from_pre: bool = False, unit_point: int | None = None):
        super().__init__()
        # registered even when None, so every Section has the same children
        self.register_module("pre", pre)
        self.register_module("body", body)
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.register_module("post", post)
        self.shortcut_from_pre = bool(shortcut_from_pre)
        self.unit_point = unit_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.pre is None else self.pre(x)
        out = self.shortcut(h if self.shortcut_from_pre else x)
        if self.body is not None:
            out = out + self.body(h)
        return out if self.post is None else self.post(out)

    @property
    def removed(self) -> bool:
        return self.body is None

    @property
    def needs_projection(self) -> bool:
        """The shortcut has parameters (a linear projection), not identity or zero padding."""
        return any(True for _ in self.shortcut.parameters())

    def units(self) -> int | None:
        """Units of the body (its Linear's outputs) when they can be gated, else None."""
        if self.body is None or self.unit_point is None:
            return None
        return self.body[0].out_features

    def extra_repr(self) -> str:
        return "removed" if self.body is None else ""


def sections_of(model: nn.Module) -> dict[str, Section]:
    """Every Section of `model` by module name, in forward order of registration."""
    return {n: m for n, m in model.named_modules() if isinstance(m, Section)}


def is_sectioned(model: nn.Module) -> bool:
    return any(isinstance(m, Section) for m in model.modules())


# ----------------------------------------------------------------------------- wrapping


def to_sections(model: nn.Module, *, sections: Sequence[str] | None = None,
                projection: bool = True, inplace: bool = False
                ) -> tuple[nn.Module, list[nn.Parameter]]:
    """`model` with the named hidden layers / blocks (all when None) as Sections, and the new
    parameters (projections) the wrapping created. ConfigError in one line for a model that
    has no sections to offer, unknown names, an empty list, or a section needing a
    projection when `projection` is False. In place (the given module rewired, its layers
    and parameters kept) or on a deep copy."""
    if sections is not None and len(sections) == 0:
        raise ConfigError("sections is empty: name at least one section to gate (or leave it "
                          "unset to gate every hidden layer / block)")
    target = model if inplace else copy.deepcopy(model)
    if isinstance(target, (CifarResNet, WideResNet)):
        return target, _wrap_resnet(target, sections, projection)
    if isinstance(target, nn.Sequential):
        return target, _wrap_mlp(target, sections, projection)
    raise ConfigError(
        f"layer gates need an MLP chain (Flatten, Linear-activation pairs, a Linear "
        f"classifier) or a CIFAR ResNet / wide ResNet; got {type(model).__name__}")


def _check_names(names: Sequence[str] | None, valid: list[str]) -> set[str]:
    if names is None:
        return set(valid)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ConfigError(f"section '{unknown[0]}' does not exist; sections of this model: "
                          f"{', '.join(valid)}")
    return set(names)


def _no_projection(name: str, what: str) -> ConfigError:
    return ConfigError(f"section '{name}' {what}: its shortcut needs a projection, which "
                       "projection=False disables; leave it out of sections or allow "
                       "projections")


def _wrap_mlp(model: nn.Sequential, names: Sequence[str] | None,
              projection: bool) -> list[nn.Parameter]:
    items = list(model._modules.items())
    if any(isinstance(m, Section) for _, m in items):
        raise ConfigError("the model is sectioned already")
    head: list[tuple[str, nn.Module]] = []
    i = 0
    if items and isinstance(items[0][1], nn.Flatten):
        head.append(("flatten", items[0][1]))
        i = 1
    hidden: list[tuple[nn.Linear, list[nn.Module]]] = []
    output: nn.Linear | None = None
    while i < len(items):
        name, mod = items[i]
        if not isinstance(mod, nn.Linear):
            raise ConfigError(f"layer gates on a chain need Linear layers with activations "
                              f"(an MLP); module '{name}' is {type(mod).__name__}")
        j, tail = i + 1, []
        while j < len(items) and isinstance(items[j][1], (*CHAIN_ACTIVATIONS, nn.Dropout)):
            tail.append(items[j][1])
            j += 1
        if j == len(items):
            if tail:
                raise ConfigError(f"the chain ends in {type(tail[-1]).__name__}, not a Linear "
                                  "classifier; layer gates need logits out")
            output = mod
            break
        if not any(isinstance(t, CHAIN_ACTIVATIONS) for t in tail):
            raise ConfigError(f"Linear '{name}' feeds another Linear without an activation: "
                              "not a nonlinear section")
        hidden.append((mod, tail))
        i = j
    if output is None or not hidden:
        raise ConfigError("the MLP has no hidden layer to gate (layer gates act on hidden "
                          "layers, never the classifier)")
    valid = [f"layer{k}" for k in range(1, len(hidden) + 1)]
    gated = _check_names(names, valid)
    new: list[tuple[str, nn.Module]] = list(head)
    created: list[nn.Parameter] = []
    for name, (linear, tail) in zip(valid, hidden):
        body = nn.Sequential(linear, *tail)
        if name not in gated:
            new.append((name, body))
            continue
        shortcut: nn.Module = nn.Identity()
        if linear.in_features != linear.out_features:
            if not projection:
                raise _no_projection(name, f"maps {linear.in_features} to "
                                           f"{linear.out_features} features")
            shortcut = nn.Linear(linear.in_features, linear.out_features, bias=False,
                                 device=linear.weight.device, dtype=linear.weight.dtype)
            created += list(shortcut.parameters())
        new.append((name, Section(body, shortcut, unit_point=1)))
    new.append(("output", output))
    for key in list(model._modules):
        del model._modules[key]
    for name, mod in new:
        model.add_module(name, mod)
    return created


def _wrap_resnet(model: nn.Module, names: Sequence[str] | None,
                 projection: bool) -> list[nn.Parameter]:
    blocks = [(f"{stage}.{i}", getattr(model, stage), i, block)
              for stage in ("layer1", "layer2", "layer3")
              for i, block in enumerate(getattr(model, stage))]
    if any(isinstance(b, Section) for *_, b in blocks):
        raise ConfigError("the model is sectioned already")
    gated = _check_names(names, [n for n, *_ in blocks])
    for name, stage, i, block in blocks:
        if name not in gated:
            continue
        if isinstance(block, BasicBlock):
            if not projection and any(True for _ in block.shortcut.parameters()):
                raise _no_projection(name, "changes the shape (option-B shortcut)")
            body = nn.Sequential(block.conv1, block.bn1, block.relu1, block.conv2, block.bn2)
            section = Section(body, block.shortcut, post=block.relu2)
        else:
            assert isinstance(block, WideBlock)
            if block.projection is not None and not projection:
                raise _no_projection(name, "changes the shape")
            body = nn.Sequential(block.conv1, block.bn2, block.relu2, block.dropout,
                                 block.conv2)
            section = Section(body, block.projection, pre=nn.Sequential(block.bn1, block.relu1),
                              shortcut_from_pre=block.projection is not None)
        stage[i] = section
    return []


def gated_names(model: nn.Module) -> list[str]:
    """Names of the model's sections that still have a body (not removed)."""
    return [n for n, s in sections_of(model).items() if not s.removed]


def has_nonlinearity_outside(model: nn.Module, names: Iterable[str]) -> bool:
    """Whether some activation lies outside the bodies of the sections `names` (a plain
    hidden layer, a ResNet stem or a block's post-addition ReLU): then removing every one of
    those sections still leaves a nonlinear network."""
    secs = sections_of(model)
    inside = {id(m) for n in names if secs[n].body is not None
              for m in secs[n].body.modules()}
    return any(isinstance(m, CHAIN_ACTIVATIONS) and id(m) not in inside for m in model.modules())


# ----------------------------------------------------------------------------- complexity


@dataclass
class Complexity:
    """Parameters and forward FLOPs per example (2 x multiply-accumulates of Linear/Conv
    layers, as `prunelab.masks.sparsity_report` counts them): the whole model's, each
    section body's (what removing the section saves) and one unit's of each section whose
    units can be gated (its Linear row: in_features weights + bias, 2 x in_features FLOPs)."""

    params: int
    flops: int
    sections: dict[str, tuple[int, int]]
    units: dict[str, tuple[int, int]]


def _positions(model: nn.Module, input_shape: Sequence[int]) -> dict[int, int]:
    """Output positions per example of every Linear/Conv2d (by module id), one probe in eval
    mode (BatchNorm statistics untouched)."""
    out: dict[int, int] = {}
    hooks = []
    for mod in model.modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            def hook(m, _inp, o):
                out[id(m)] = int(o[0, 0].numel()) if o.dim() > 2 else 1
            hooks.append(mod.register_forward_hook(hook))
    was = model.training
    p = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return out


def _flops(module: nn.Module, positions: Mapping[int, int]) -> int:
    return sum(2 * m.weight.numel() * positions.get(id(m), 0) for m in module.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d)))


def complexity(model: nn.Module, input_shape: Sequence[int]) -> Complexity:
    """Parameter and FLOP counts of the model, its sections and their units."""
    pos = _positions(model, input_shape)
    secs: dict[str, tuple[int, int]] = {}
    units: dict[str, tuple[int, int]] = {}
    for name, s in sections_of(model).items():
        if s.removed:
            continue
        parts = [s.body] + ([s.pre] if s.pre is not None and not s.shortcut_from_pre else [])
        secs[name] = (sum(p.numel() for m in parts for p in m.parameters()),
                      sum(_flops(m, pos) for m in parts))
        if s.units() is not None:
            lin = s.body[0]
            units[name] = (lin.in_features + (lin.bias is not None),
                           2 * lin.in_features * pos.get(id(lin), 1))
    return Complexity(sum(p.numel() for p in model.parameters()), _flops(model, pos), secs,
                      units)


# ----------------------------------------------------------------------------- rebuilding

# How a parameter of the rebuilt model relates to the old one: ("copy", old name),
# ("rows", old name, kept row indices) or ("fresh", old name whose param group it joins).
Plan = tuple


@torch.no_grad()
def _slice_units(name: str, sec: Section, keep: torch.Tensor, plans: dict[str, Plan]) -> None:
    body = sec.body
    lin = body[0]
    rows = keep.nonzero().flatten().to(lin.weight.device)
    new = nn.Linear(lin.in_features, rows.numel(), bias=lin.bias is not None,
                    device=lin.weight.device, dtype=lin.weight.dtype)
    new.weight.copy_(lin.weight.index_select(0, rows))
    new.weight.requires_grad_(lin.weight.requires_grad)
    plans[f"{name}.body.0.weight"] = ("rows", f"{name}.body.0.weight", rows.cpu())
    if lin.bias is not None:
        new.bias.copy_(lin.bias.index_select(0, rows))
        new.bias.requires_grad_(lin.bias.requires_grad)
        plans[f"{name}.body.0.bias"] = ("rows", f"{name}.body.0.bias", rows.cpu())
    body[0] = new
    last = body[len(body) - 1]
    if isinstance(last, Scatter):
        last.index = last.index.index_select(0, rows.to(last.index.device))
    else:
        body.add_module(str(len(body)), Scatter(rows.cpu(), lin.out_features).to(
            lin.weight.device))


def _is_identity(m: nn.Module) -> bool:
    return isinstance(m, nn.Identity) or (
        isinstance(m, Section) and m.removed and m.pre is None and m.post is None
        and isinstance(m.shortcut, nn.Identity))


def _linear_map(m: nn.Module) -> nn.Linear | None:
    """The Linear a module amounts to (a removed section's projection), else None."""
    if isinstance(m, Section) and m.removed and m.pre is None and m.post is None \
            and isinstance(m.shortcut, nn.Linear):
        return m.shortcut
    return None


@torch.no_grad()
def _fold(model: nn.Module, plans: dict[str, Plan]) -> int:
    """Fold removed sections' projections into the Linear after them where that has fewer
    parameters (top level of an MLP chain only). Returns how many were folded."""
    if not isinstance(model, nn.Sequential):
        return 0
    folded = 0
    changed = True
    while changed:
        changed = False
        items = [(n, m) for n, m in model._modules.items() if not _is_identity(m)]
        for (_, a), (name_b, b) in zip(items, items[1:]):
            p = _linear_map(a)
            if p is None:
                continue
            q = _linear_map(b)
            target, target_name = (q, f"{name_b}.shortcut") if q is not None else (
                (b, name_b) if isinstance(b, nn.Linear) else (None, None))
            if target is None:
                continue
            n_in, mid, n_out = p.in_features, p.out_features, target.out_features
            if n_in * n_out >= n_in * mid + mid * n_out:
                continue
            new = nn.Linear(n_in, n_out, bias=target.bias is not None,
                            device=target.weight.device, dtype=target.weight.dtype)
            new.weight.copy_(target.weight @ p.weight)
            plans[f"{target_name}.weight"] = ("fresh", f"{target_name}.weight")
            if target.bias is not None:
                bias = target.bias.clone()
                if p.bias is not None:
                    bias += target.weight @ p.bias
                    plans[f"{target_name}.bias"] = ("fresh", f"{target_name}.bias")
                new.bias.copy_(bias)
            model.set_submodule(target_name, new)
            a.shortcut = nn.Identity()
            folded += 1
            changed = True
            break
    return folded


def rebuild(model: nn.Module, remove: Iterable[str] = (),
            keep_units: Mapping[str, torch.Tensor] | None = None, *, fold: bool = True
            ) -> tuple[nn.Module, dict[str, Plan]]:
    """A new model without the bodies of the sections `remove` (their shortcuts kept) and
    without the units False in `keep_units` ({section -> bool over its body's units}), and
    the plan of each of its parameters. The input model is not changed (its forward hooks
    must be removed first: they would be copied)."""
    secs = sections_of(model)
    remove = list(remove)
    keep_units = dict(keep_units or {})
    for name in [*remove, *keep_units]:
        if name not in secs or secs[name].removed:
            raise ConfigError(f"'{name}' is not a section with a body; sections: "
                              f"{', '.join(n for n, s in secs.items() if not s.removed)}")
    for name, keep in keep_units.items():
        n = secs[name].units()
        if n is None or tuple(keep.shape) != (n,) or keep.dtype != torch.bool:
            raise ConfigError(f"unit mask for section '{name}' must be bool over its {n} "
                              "units")
        if not bool(keep.any()):
            raise ConfigError(f"unit mask removes every unit of section '{name}'; remove the "
                              "section instead")
    new = copy.deepcopy(model)
    new_secs = sections_of(new)
    plans: dict[str, Plan] = {}
    for name, keep in keep_units.items():
        if name not in remove and not bool(keep.all()):
            _slice_units(name, new_secs[name], keep.cpu(), plans)
    for name in remove:
        sec = new_secs[name]
        sec.body = None
        sec.unit_point = None
        if not sec.shortcut_from_pre:
            sec.pre = None
    if fold:
        _fold(new, plans)
    final = {}
    for pname, _ in new.named_parameters():
        final[pname] = plans.get(pname, ("copy", pname))
    return new, final


@dataclass
class _Rows:
    """A "rows" plan as a `prunelab.optimizers.carry_state` slicer: the kept rows, copied."""

    rows: torch.Tensor

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        return t.index_select(0, self.rows.to(t.device)).clone()


def carry_optimizer(optimizer: torch.optim.Optimizer, old: nn.Module, new: nn.Module,
                    plans: Mapping[str, Plan]) -> torch.optim.Optimizer:
    """An optimizer of the same class and param-group hyper-parameters over `new`'s
    parameters, each in the group of its source; per-parameter state (momentum, Adam
    moments, step) copied, or sliced to the kept rows, as `plans` says; folded parameters
    ("fresh") start with empty state. Hooks of the old optimizer are not carried."""
    old_params = dict(old.named_parameters())
    new_params = dict(new.named_parameters())
    by_source: dict[str, list[str]] = {}
    for n, plan in plans.items():
        by_source.setdefault(plan[1], []).append(n)
    opt = regroup(optimizer, {id(p): n for n, p in old_params.items()},
                  lambda n: [new_params[m] for m in by_source.get(n, [])], "rebuilt model")
    # state follows each copied or sliced parameter (by its new name); folded ones start afresh
    carried = {id(old_params[plan[1]]): n for n, plan in plans.items()
               if plan[0] != "fresh" and plan[1] in old_params}
    rows = {n: _Rows(plan[2]) for n, plan in plans.items() if plan[0] == "rows"}
    carry_state(optimizer, opt, carried, new_params, rows)
    return opt


def rebuild_with_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer,
                           remove: Iterable[str] = (),
                           keep_units: Mapping[str, torch.Tensor] | None = None, *,
                           fold: bool = True) -> tuple[nn.Module, torch.optim.Optimizer]:
    """`rebuild` mid-training, with the optimizer carried over (`carry_optimizer`)."""
    new, plans = rebuild(model, remove, keep_units, fold=fold)
    return new, carry_optimizer(optimizer, model, new, plans)


# ----------------------------------------------------------------------------- description


def layout(model: nn.Module) -> dict[str, str]:
    """Each section's state in words: '-' removed, else its body's units (MLP) or 'kept'."""
    out = {}
    for name, s in sections_of(model).items():
        if s.removed:
            out[name] = "-"
        elif s.unit_point is not None:
            out[name] = str(s.units())
        else:
            out[name] = "kept"
    return out


_LEAF_ARGS: dict[type[nn.Module], Any] = {
    nn.Linear: lambda m: {"in_features": m.in_features, "out_features": m.out_features,
                          "bias": m.bias is not None},
    nn.Conv2d: lambda m: {"in_channels": m.in_channels, "out_channels": m.out_channels,
                          "kernel_size": list(m.kernel_size), "stride": list(m.stride),
                          "padding": m.padding if isinstance(m.padding, str)
                          else list(m.padding), "bias": m.bias is not None},
    nn.BatchNorm2d: lambda m: {"num_features": m.num_features, "eps": m.eps,
                               "momentum": m.momentum},
    nn.Dropout: lambda m: {"p": m.p},
    nn.LeakyReLU: lambda m: {"negative_slope": m.negative_slope},
    nn.ELU: lambda m: {"alpha": m.alpha},
    nn.GELU: lambda m: {"approximate": m.approximate},
    nn.Flatten: lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim},
    nn.AdaptiveAvgPool2d: lambda m: {"output_size": m.output_size},
    PadShortcut: lambda m: {"in_channels": m.in_channels, "out_channels": m.out_channels,
                            "stride": m.stride},
    Scatter: lambda m: {"n": int(m.index.numel()), "width": m.width},
}
_SHELLS = (nn.Sequential, CifarResNet, WideResNet, BasicBlock, WideBlock)
_TYPES = {t.__name__: t for t in (*_LEAF_ARGS, *_SHELLS, Section, nn.Identity, nn.ReLU,
                                   nn.Tanh, nn.Sigmoid)}


def _describe(m: nn.Module | None) -> dict[str, Any] | None:
    if m is None:
        return None
    kind = type(m)
    if kind.__name__ not in _TYPES or _TYPES[kind.__name__] is not kind:
        raise ConfigError(f"cannot describe module {kind.__name__} in a sectioned model")
    node: dict[str, Any] = {"type": kind.__name__, "args": {}}
    if kind in _LEAF_ARGS:
        node["args"] = _LEAF_ARGS[kind](m)
    elif kind is Section:
        node["args"] = {"shortcut_from_pre": m.shortcut_from_pre, "unit_point": m.unit_point}
    if kind is Section or kind in _SHELLS:
        node["children"] = {k: _describe(c) for k, c in m._modules.items()}
    return node


def architecture(model: nn.Module) -> dict[str, Any]:
    """A JSON-friendly description of a sectioned model (types, sizes, module names)."""
    return {"format": SPEC_FORMAT, "root": _describe(model)}


def _build(node: dict[str, Any] | None) -> nn.Module | None:
    if node is None:
        return None
    cls = _TYPES.get(node.get("type"))
    if cls is None:
        raise DataError(f"unknown module type '{node.get('type')}' in a sectioned architecture")
    args = dict(node.get("args", {}))
    children = {k: _build(v) for k, v in node.get("children", {}).items()}
    if cls is Section:
        m = Section(children.get("body"), children.get("shortcut"), pre=children.get("pre"),
                    post=children.get("post"), **args)
        return m
    if cls is Scatter:
        return Scatter(torch.zeros(args["n"], dtype=torch.long), args["width"])
    if cls in _SHELLS:
        m = nn.Sequential() if cls is nn.Sequential else cls.__new__(cls)
        if cls is not nn.Sequential:
            nn.Module.__init__(m)
        for k, c in children.items():
            m.add_module(k, c)
        return m
    for k in ("kernel_size", "stride"):
        if isinstance(args.get(k), list):
            args[k] = tuple(args[k])
    if isinstance(args.get("padding"), list):
        args["padding"] = tuple(args["padding"])
    return cls(**args)


def from_architecture(spec: Mapping[str, Any]) -> nn.Module:
    """The (untrained) sectioned model an `architecture` description names."""
    if not isinstance(spec, Mapping) or spec.get("format") != SPEC_FORMAT:
        raise DataError("not a sectioned-model architecture")
    return _build(spec["root"])


__all__ = ["Complexity", "Scatter", "Section", "architecture", "carry_optimizer", "complexity",
           "from_architecture", "gated_names", "has_nonlinearity_outside", "is_sectioned",
           "layout", "rebuild", "rebuild_with_optimizer", "sections_of", "to_sections"]
