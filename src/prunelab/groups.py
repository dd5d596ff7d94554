"""Channel groups of a model graph: the channels that must be removed together or not at all.

This module is the sole walker of the model graph (DESIGN.md, "Scale"). `channel_groups(model,
example_input)` traces the model once with torch.fx (a symbolic trace: the torch.nn layers and
`prunelab.cifar_nets.PadShortcut` are leaves, everything else is traced through), propagates
shapes on the example input, and follows every channel through the graph with a union-find
over channel slots:

- a Conv/Linear layer's output channel (its row) starts a slot; its input channels (columns)
  are tied to the slots they read, through flatten every spatial position of a channel
  (`Member.per` consecutive columns per channel);
- a BatchNorm's channel is tied to the channel it normalises (also a pre-activation BN that
  reads a residual stream: it belongs to the stream's group);
- both operands of an addition (or subtraction, or product) are tied channel by channel: the
  channels of a residual stream are removed from every block of the stage or from none;
- `PadShortcut` (option-A shortcut) maps its input channel i to output channel i + left; its
  padded channels are fresh slots, so the index maps of a group are not identity there;
- elementwise activations, pooling (also adaptive), dropout, identity, spatial slicing and
  padding, flatten (and view/reshape that flatten) and reductions over space pass channels
  through; a concatenation along the channel dimension concatenates them.

Every class of tied slots that holds at least one Conv/Linear output channel is one coupled
channel; classes touching the same layers form one `Group` (for a chain: one group per hidden
layer, named after the layer, as `prunelab.shrink.unit_layers`). A group's members record
(module, role, index map): role "out" = rows of a Conv/Linear (weight dim 0 and bias), "bn" =
BatchNorm channels (weight, bias, running statistics), "in" = columns of a Conv/Linear (weight
dim 1, `per` columns per channel), "map_in"/"map_out" = a parameter-free channel map
(`PadShortcut`). Channels that reach the model output or come from its input are never in a
group. Anything the analysis does not understand (a grouped or depthwise convolution, a view
that is not a flatten, a matmul, attention, a custom op...) makes the channels that reach it
unprunable, with one line naming the node in `GroupAnalysis.refused`; the channel methods
refuse such a model with that line, the weight-mask methods never ask.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from prunelab.cifar_nets import PadShortcut
from prunelab.errors import ConfigError, MaskError

ROLES = ("out", "in", "bn", "map_in", "map_out")

CONVS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d)
NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d)
ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign,
)
PASS_THROUGH: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Upsample,
)
CHANNEL_MAPS: tuple[type[nn.Module], ...] = (PadShortcut,)

# call_function / call_method targets by name (leading underscores stripped)
_ZERO_PRESERVING_FUNCS = {
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "celu",
    "gelu", "silu", "mish", "hardswish", "hardtanh", "hardtanh_", "tanh", "dropout",
    "dropout1d", "dropout2d", "alpha_dropout", "contiguous", "clone", "float", "double",
    "half", "bfloat16", "to",
}
_OTHER_ELEMENTWISE_FUNCS = {"sigmoid", "softplus", "hardsigmoid", "softsign"}
_POOL_FUNCS = {
    "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d", "interpolate",
}
_TIE_FUNCS = {"add", "add_", "iadd", "sub", "sub_", "isub", "mul", "mul_", "imul"}
_SCALAR_FUNCS = {"truediv", "div", "div_", "itruediv"}
_FLATTEN_FUNCS = {"flatten", "view", "reshape"}
_REDUCE_FUNCS = {"mean", "sum", "amax", "amin"}
_CAT_FUNCS = {"cat", "concat", "concatenate"}
_META_FUNCS = {"size", "dim", "numel", "getattr", "len", "ndimension"}


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True, eq=False)
class Member:
    """One module's share of a group: `index[j]` is the module's channel (row for "out",
    BatchNorm channel for "bn", input channel for "in", channel of a parameter-free map for
    "map_in"/"map_out") that holds the group's channel j; an "in" member fed through flatten
    reads `per` consecutive columns per channel. `bn_after` ("in" only) names the BatchNorm
    that alone reads the layer's output (where mean replacement can shift the running mean)."""

    module: str
    role: str
    index: torch.Tensor
    per: int = 1
    bn_after: str | None = None

    @property
    def dim(self) -> int:
        """The weight dimension the member slices (1 for input columns, else 0)."""
        return 1 if self.role == "in" else 0

    def positions(self, channels: torch.Tensor | None = None) -> torch.Tensor:
        """Indices along `dim` of the group channels `channels` (bool mask or indices over
        the group; default all), every flattened column of a channel for an "in" member."""
        idx = self.index if channels is None else self.index[channels]
        if self.per == 1:
            return idx
        return (idx[:, None] * self.per + torch.arange(self.per)).flatten()


@dataclass(eq=False)
class Group:
    """Coupled channels removed together: `size` channels, each held by every member at
    `member.index[j]`. `name` is the first layer (in execution order) producing them.
    `zero_preserving`: every elementwise op the channels pass maps 0 to 0, so zeroing the
    producers and BatchNorms makes every consumer read exactly zero."""

    name: str
    members: list[Member]
    zero_preserving: bool = True

    @property
    def size(self) -> int:
        return int(self.members[0].index.numel())

    def by_role(self, role: str) -> list[Member]:
        return [m for m in self.members if m.role == role]

    @property
    def producers(self) -> list[Member]:
        return self.by_role("out")

    @property
    def consumers(self) -> list[Member]:
        return self.by_role("in")

    @property
    def norms(self) -> list[Member]:
        return self.by_role("bn")


@dataclass
class GroupAnalysis:
    """The groups of a model, plus one line per graph node whose channels the analysis could
    not follow (`refused`: those channels are in no group)."""

    groups: list[Group]
    refused: list[str] = field(default_factory=list)

    def by_name(self) -> dict[str, Group]:
        return {g.name: g for g in self.groups}


# ----------------------------------------------------------------------------- tracing


class _Tracer(fx.Tracer):
    """torch.nn layers and the known channel maps are leaves; user modules are traced."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, CHANNEL_MAPS):
            return True
        return super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """A symbolic trace of `model` (leaves: torch.nn layers, `PadShortcut`); MaskError in one
    line when the model cannot be traced (data-dependent control flow, unsupported calls)."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many types; the user needs one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MaskError(
            f"channel grouping cannot trace {type(model).__name__} with torch.fx ({first}); "
            "the channel methods need a traceable model (the weight-mask methods do not)"
        ) from None
    return fx.GraphModule(tracer.root, graph)


def example_for(model: nn.Module, example_input: torch.Tensor | None = None) -> torch.Tensor:
    """`example_input`, or one zero image of the input shape `build_model` recorded."""
    if example_input is not None:
        return example_input
    from prunelab.models import build_info

    info = build_info(model)
    if info is None:
        raise ConfigError(
            f"grouping the channels of {type(model).__name__} needs an example input "
            "(example_input=...): it was not built by prunelab.models.build_model"
        )
    p = next(model.parameters())
    return torch.zeros(1, *info["input_shape"], device=p.device, dtype=p.dtype)


def _propagate_shapes(gm: fx.GraphModule, model: nn.Module, x: torch.Tensor) -> None:
    from torch.fx.passes.shape_prop import ShapeProp

    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(x)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MaskError(f"channel grouping: the model fails on the example input of shape "
                        f"{tuple(x.shape)} ({first})") from None
    finally:
        for m, t in modes.items():
            m.train(t)


# ----------------------------------------------------------------------------- the walk


@dataclass
class _Chan:
    """Channel slots of a tensor: slot of channel c (dim 1), `per` columns per channel when
    flattened, the tensor's rank."""

    slots: list[int]
    per: int
    ndim: int


@dataclass
class _Opaque:
    reason: str


def _name(target: Any) -> str:
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    return name.lstrip("_")


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


def _maps_zero_to_zero(act: nn.Module) -> bool:
    with torch.no_grad():
        return bool(act(torch.zeros(1, 1)).abs().max() == 0)


class _Walker:
    def __init__(self, model: nn.Module, gm: fx.GraphModule):
        self.model = model
        self.gm = gm
        self.modules = dict(model.named_modules())
        self.parent: list[int] = []
        self.slots: dict[tuple[str, str], list[int]] = {}
        self.first_touch: dict[tuple[str, str], int] = {}
        self.per: dict[str, int] = {}
        self.blocked: dict[int, str | None] = {}  # slot -> reason (None: input/output)
        self.nonzero: set[int] = set()
        self.refused: list[str] = []
        self.env: dict[fx.Node, _Chan | _Opaque | None] = {}

    # union-find
    def fresh(self, n: int) -> list[int]:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return list(range(start, start + n))

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def tie(self, xs: list[int], ys: list[int]) -> None:
        for a, b in zip(xs, ys):
            self.union(a, b)

    def module_slots(self, name: str, role: str, n: int) -> list[int]:
        key = (name, role)
        if key not in self.slots:
            self.slots[key] = self.fresh(n)
            self.first_touch[key] = len(self.first_touch)
        return self.slots[key]

    # marking
    def block(self, chan: _Chan | None, reason: str | None) -> None:
        if isinstance(chan, _Chan):
            for s in chan.slots:
                self.blocked.setdefault(s, reason)

    def opaque(self, node: fx.Node, what: str) -> None:
        """An op the analysis does not understand: the channels reaching it and coming out
        of it are unprunable, with one line naming it."""
        reason = f"{what} at node '{node.name}'"
        self.refused.append(reason)
        for n in node.all_input_nodes:
            self.block(self.env.get(n) if isinstance(self.env.get(n), _Chan) else None, reason)
        shape = _shape(node)
        if shape is not None and len(shape) >= 2:
            out = _Chan(self.fresh(shape[1]), 1, len(shape))
            self.block(out, reason)
            self.env[node] = out
        else:
            self.env[node] = _Opaque(reason)

    def chan_inputs(self, node: fx.Node) -> list[fx.Node]:
        return [n for n in node.all_input_nodes if isinstance(self.env.get(n), (_Chan, _Opaque))]

    # the walk
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                shape = _shape(node)
                if shape is not None and len(shape) >= 2:
                    chan = _Chan(self.fresh(shape[1]), 1, len(shape))
                    self.block(chan, None)
                    self.env[node] = chan
                else:
                    self.env[node] = None
            elif node.op == "get_attr":
                self.env[node] = None  # a parameter or buffer used directly: no channels
            elif node.op == "output":
                for n in node.all_input_nodes:
                    c = self.env.get(n)
                    if isinstance(c, _Chan):
                        self.block(c, None)
            else:
                inputs = self.chan_inputs(node)
                opaque_in = [self.env[n] for n in inputs if isinstance(self.env[n], _Opaque)]
                if opaque_in and node.op != "call_module" and _name(node.target) == "getitem":
                    # an element of an opaque op's tuple output: unprunable like its source
                    shape = _shape(node)
                    if shape is not None and len(shape) >= 2:
                        out = _Chan(self.fresh(shape[1]), 1, len(shape))
                        self.block(out, opaque_in[0].reason)
                        self.env[node] = out
                    else:
                        self.env[node] = opaque_in[0]
                    continue
                if node.op == "call_module":
                    self.call_module(node)
                elif not inputs:
                    self.env[node] = None  # shapes, constants: no channels involved
                else:
                    self.call_function(node)

    def _in(self, node: fx.Node, k: int = 0) -> _Chan | None:
        args = [a for a in node.args if isinstance(a, fx.Node)]
        if len(args) <= k:
            return None
        c = self.env.get(args[k])
        return c if isinstance(c, _Chan) else None

    def call_module(self, node: fx.Node) -> None:
        name = str(node.target)
        m = self.modules[name]
        x = self._in(node)
        inputs = self.chan_inputs(node)
        label = f"layer '{name}' ({type(m).__name__})"
        if isinstance(m, (nn.Linear,) + CONVS):
            self._layer(node, name, m, x, inputs, label)
        elif isinstance(m, NORMS):
            if x is None or x.per != 1 or len(x.slots) != m.num_features:
                return self.opaque(node, f"{label} on a tensor whose channels are not its "
                                         "features")
            self.tie(self.module_slots(name, "bn", m.num_features), x.slots)
            self.env[node] = x
        elif isinstance(m, ELEMENTWISE):
            if x is None or len(inputs) != 1:
                return self.opaque(node, label)
            if not _maps_zero_to_zero(m):
                self.nonzero.update(x.slots)
            self.env[node] = x
        elif isinstance(m, PASS_THROUGH):
            if x is None or len(inputs) != 1:
                return self.opaque(node, label)
            if not isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                                  nn.AlphaDropout)) and x.per != 1:
                return self.opaque(node, f"{label} on a flattened tensor")
            self.env[node] = x
        elif isinstance(m, nn.Flatten):
            self._flatten(node, x, inputs, label, m.start_dim, m.end_dim)
        elif isinstance(m, PadShortcut):
            if x is None or x.per != 1 or len(x.slots) != m.in_channels:
                return self.opaque(node, label)
            map_in = self.module_slots(name, "map_in", m.in_channels)
            new = (name, "map_out") not in self.slots
            map_out = self.module_slots(name, "map_out", m.out_channels)
            if new:
                self.tie(map_out[m.left : m.left + m.in_channels], map_in)
            self.tie(map_in, x.slots)
            self.env[node] = _Chan(map_out, 1, x.ndim)
        else:
            self.opaque(node, label)

    def _layer(self, node, name, m, x, inputs, label) -> None:
        if len(inputs) != 1 or x is None:
            return self.opaque(node, label)
        if isinstance(m, nn.Linear):
            if x.ndim != 2 or len(x.slots) * x.per != m.in_features:
                return self.opaque(node, f"{label} applied to a tensor of rank {x.ndim} "
                                         "(only (batch, features) inputs are followed)")
            if self.per.setdefault(name, x.per) != x.per:
                return self.opaque(node, f"{label} called on inputs of different layouts")
            self.tie(self.module_slots(name, "in", len(x.slots)), x.slots)
            out = self.module_slots(name, "out", m.out_features)
        else:
            if m.groups != 1:
                return self.opaque(node, f"grouped convolution '{name}' (groups={m.groups})")
            if x.per != 1 or len(x.slots) != m.in_channels:
                return self.opaque(node, label)
            self.per[name] = 1
            self.tie(self.module_slots(name, "in", m.in_channels), x.slots)
            out = self.module_slots(name, "out", m.out_channels)
        shape = _shape(node)
        self.env[node] = _Chan(out, 1, len(shape) if shape else 2)

    def _flatten(self, node, x, inputs, label, start, end) -> None:
        in_shape = _shape(inputs[0]) if inputs else None
        if x is None or in_shape is None or len(inputs) != 1:
            return self.opaque(node, label)
        nd = len(in_shape)
        start, end = start % nd, end % nd
        if start == end or (nd == 2 and (start, end) == (1, 1)):
            self.env[node] = x
        elif start == 1 and end == nd - 1:
            self.env[node] = _Chan(x.slots, x.per * math.prod(in_shape[2:]), 2)
        else:
            self.opaque(node, f"{label}: flattens dims {start}..{end}, not 1..{nd - 1}")

    def call_function(self, node: fx.Node) -> None:
        fname = _name(node.target)
        inputs = self.chan_inputs(node)
        label = f"'{fname}'"
        x = self._in(node)
        out_shape = _shape(node)
        if fname in _META_FUNCS and _shape(node) is None:
            self.env[node] = None  # x.size(0), x.shape, x.dim(): no tensor comes out
        elif fname in _ZERO_PRESERVING_FUNCS | _OTHER_ELEMENTWISE_FUNCS:
            if x is None or len(inputs) != 1 or node.args[0] is not inputs[0]:
                return self.opaque(node, label)
            if fname in _OTHER_ELEMENTWISE_FUNCS:
                self.nonzero.update(x.slots)
            self.env[node] = x
        elif fname in _POOL_FUNCS:
            if (x is None or len(inputs) != 1 or node.args[0] is not inputs[0] or x.per != 1
                    or out_shape is None or out_shape[:2] != _shape(inputs[0])[:2]):
                return self.opaque(node, label)
            self.env[node] = x
        elif fname in _TIE_FUNCS | _SCALAR_FUNCS:
            self._binary(node, fname, inputs, label)
        elif fname in _FLATTEN_FUNCS:
            if fname == "flatten":
                start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
                end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
                if not (isinstance(start, int) and isinstance(end, int)):
                    return self.opaque(node, label)
                return self._flatten(node, x, inputs, label, start, end)
            in_shape = _shape(inputs[0]) if inputs else None
            if (x is None or len(inputs) != 1 or in_shape is None or out_shape is None
                    or len(out_shape) != 2 or out_shape[0] != in_shape[0]):
                return self.opaque(node, f"{label} that is not a flatten to (batch, features)")
            self._flatten(node, x, inputs, label, 1, -1)
        elif fname in _REDUCE_FUNCS:
            self._reduce(node, x, inputs, label)
        elif fname == "getitem":
            self._getitem(node, x, inputs, label)
        elif fname == "pad":
            self._pad(node, x, inputs, label)
        elif fname in _CAT_FUNCS:
            self._cat(node, inputs, label)
        else:
            self.opaque(node, label)

    def _binary(self, node, fname, inputs, label) -> None:
        chans = [self.env[n] for n in inputs]
        if any(not isinstance(c, _Chan) for c in chans):
            return self.opaque(node, label)
        others = [a for a in list(node.args) + list(node.kwargs.values())
                  if isinstance(a, fx.Node) and a not in inputs]
        out_shape = _shape(node)
        if len(chans) == 2:
            a, b = chans
            sa, sb = _shape(inputs[0]), _shape(inputs[1])
            # equal shapes, or one broadcast over the spatial dimensions (an SE-style scale)
            if (fname in _SCALAR_FUNCS or sa is None or sb is None or len(sa) != len(sb)
                    or sa[:2] != sb[:2] or a.per != b.per
                    or (sa != sb and (a.per != 1 or out_shape not in (sa, sb)))):
                return self.opaque(node, f"{label} of tensors of shapes {sa} and {sb}")
            self.tie(a.slots, b.slots)
            self.env[node] = a if out_shape == sa else b
            return
        x = chans[0]
        in_shape = _shape(inputs[0])
        for o in others:  # a tensor the walk has no channels for (a parameter, a constant)
            s = _shape(o)
            if s is not None and math.prod(s) != 1:
                return self.opaque(node, f"{label} with a tensor of shape {s} the analysis "
                                         "does not follow")
        if out_shape != in_shape:
            return self.opaque(node, f"{label} that broadcasts a tensor to shape {out_shape}")
        if fname in ("add", "add_", "iadd", "sub", "sub_", "isub"):
            self.nonzero.update(x.slots)  # a constant added: zero no longer maps to zero
        self.env[node] = x

    def _reduce(self, node, x, inputs, label) -> None:
        in_shape = _shape(inputs[0]) if inputs else None
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if x is None or len(inputs) != 1 or in_shape is None or dim is None or x.per != 1:
            return self.opaque(node, label)
        dims = {d % len(in_shape) for d in (dim if isinstance(dim, (tuple, list)) else [dim])}
        if 0 in dims or 1 in dims:
            return self.opaque(node, f"{label} over the batch or channel dimension")
        out_shape = _shape(node)
        self.env[node] = _Chan(x.slots, 1, len(out_shape) if out_shape else 2)

    def _getitem(self, node, x, inputs, label) -> None:
        if x is None or len(inputs) != 1 or node.args[0] is not inputs[0]:
            return self.opaque(node, label)
        idx = node.args[1]
        idx = idx if isinstance(idx, tuple) else (idx,)
        full = slice(None, None, None)
        if Ellipsis in idx or any(isinstance(i, fx.Node) for i in idx):
            return self.opaque(node, f"{label} with an index the analysis does not follow")
        if any(i != full for i in idx[:2]) or (x.per != 1 and len(idx) > 1):
            return self.opaque(node, f"{label} that slices the batch or channel dimension")
        if not all(isinstance(i, slice) or i is None for i in idx):
            return self.opaque(node, f"{label} that drops a dimension")
        out_shape = _shape(node)
        self.env[node] = _Chan(x.slots, x.per, len(out_shape) if out_shape else x.ndim)

    def _pad(self, node, x, inputs, label) -> None:
        in_shape = _shape(inputs[0]) if inputs else None
        if x is None or len(inputs) != 1 or in_shape is None or x.per != 1:
            return self.opaque(node, label)
        pad = list(node.args[1] if len(node.args) > 1 else node.kwargs.get("pad", ()))
        nd = len(in_shape)
        # pairs for the last dims, last dim first; the channel dim is dim 1
        channel_pair = pad[2 * (nd - 2) : 2 * (nd - 1)] if len(pad) > 2 * (nd - 2) else []
        if any(p != 0 for p in channel_pair):
            return self.opaque(node, f"{label} on the channel dimension (use "
                                     "prunelab.cifar_nets.PadShortcut, which the analysis maps)")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", 0)
        if value not in (0, None, 0.0):
            self.nonzero.update(x.slots)
        self.env[node] = x

    def _cat(self, node, inputs, label) -> None:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int):
            return self.opaque(node, label)
        chans = [self.env.get(t) if isinstance(t, fx.Node) else None for t in tensors]
        shapes = [_shape(t) if isinstance(t, fx.Node) else None for t in tensors]
        if (any(not isinstance(c, _Chan) or c.per != 1 for c in chans)
                or any(s is None for s in shapes) or dim % len(shapes[0]) != 1):
            return self.opaque(node, f"{label} that is not along the channel dimension")
        slots = [s for c in chans for s in c.slots]
        self.env[node] = _Chan(slots, 1, len(shapes[0]))

    # results
    def bn_after(self) -> dict[str, str]:
        """Conv/Linear layers whose output is read by one BatchNorm alone: {layer: bn}."""
        out: dict[str, str] = {}
        for node in self.gm.graph.nodes:
            if node.op != "call_module":
                continue
            m = self.modules.get(str(node.target))
            if not isinstance(m, (nn.Linear,) + CONVS):
                continue
            users = list(node.users)
            if len(users) == 1 and users[0].op == "call_module" and isinstance(
                    self.modules.get(str(users[0].target)), NORMS):
                bn = str(users[0].target)
                if out.setdefault(str(node.target), bn) != bn:
                    out[str(node.target)] = ""  # called twice into different norms
            else:
                out[str(node.target)] = ""
        return {k: v for k, v in out.items() if v}

    def groups(self) -> GroupAnalysis:
        touches: dict[int, dict[tuple[str, str], list[int]]] = {}
        for key, slots in self.slots.items():
            for c, s in enumerate(slots):
                touches.setdefault(self.find(s), {}).setdefault(key, []).append(c)
        blocked: dict[int, str | None] = {}
        for s, reason in self.blocked.items():
            r = self.find(s)
            if r not in blocked or blocked[r] is None:
                blocked[r] = reason
        nonzero = {self.find(s) for s in self.nonzero}
        refused = list(dict.fromkeys(self.refused))
        by_sig: dict[tuple, list[int]] = {}
        for root, t in touches.items():
            if root in blocked or not any(role == "out" for _, role in t):
                continue
            twice = [k for k, cs in t.items() if len(cs) > 1]
            if twice:
                refused.append(f"'{twice[0][0]}' reads one channel more than once (a "
                               "concatenation repeats it)")
                continue
            sig = tuple(sorted(t, key=lambda k: self.first_touch[k]))
            by_sig.setdefault(sig, []).append(root)
        bn_after = self.bn_after()
        groups: list[Group] = []
        names: set[str] = set()
        for sig, roots in by_sig.items():
            first = next(k for k in sig if k[1] == "out")
            roots.sort(key=lambda r: touches[r][first][0])
            members = []
            for module, role in sig:
                index = torch.tensor([touches[r][(module, role)][0] for r in roots],
                                     dtype=torch.long)
                members.append(Member(module, role, index,
                                      self.per.get(module, 1) if role == "in" else 1,
                                      bn_after.get(module) if role == "in" else None))
            name = first[0]
            k = 2
            while name in names:
                name, k = f"{first[0]}#{k}", k + 1
            names.add(name)
            groups.append(Group(name, members, not any(r in nonzero for r in roots)))
        # order groups by their first producer's first touch, then channel
        groups.sort(key=lambda g: (self.first_touch[(g.producers[0].module, "out")],
                                   int(g.producers[0].index[0])))
        return GroupAnalysis(groups, refused)


# ----------------------------------------------------------------------------- public API


def analyse(model: nn.Module, example_input: torch.Tensor | None = None) -> GroupAnalysis:
    """Trace `model` once, propagate shapes on `example_input` (default: one zero image of
    the shape `build_model` recorded) and return its channel groups and refusals."""
    x = example_for(model, example_input)
    gm = trace(model)
    _propagate_shapes(gm, model, x)
    walker = _Walker(model, gm)
    walker.run()
    return walker.groups()


def channel_groups(model: nn.Module, example_input: torch.Tensor | None = None, *,
                   strict: bool = False) -> list[Group]:
    """The channel groups of `model` (see the module docstring). With `strict`, MaskError in
    one line naming the first node the analysis did not understand, if any."""
    result = analyse(model, example_input)
    if strict and result.refused:
        raise MaskError(f"channel grouping cannot follow {result.refused[0]}: its channels "
                        "cannot be pruned (the weight-mask methods still work)")
    return result.groups


def method_groups(model: nn.Module, example_input: torch.Tensor | None = None,
                  method: str = "channel pruning") -> list[Group]:
    """The groups a channel method works on: strict, and at least one; MaskError naming the
    node or the problem otherwise."""
    result = analyse(model, example_input)
    if result.refused:
        raise MaskError(f"{method} cannot group the channels of {type(model).__name__}: it "
                        f"cannot follow {result.refused[0]} (the weight-mask methods still "
                        "work)")
    if not result.groups:
        raise MaskError(f"{method}: {type(model).__name__} has no prunable channel group (no "
                        "Conv/Linear output that is not the model's output)")
    return result.groups


def check_group_masks(groups: Iterable[Group], masks: Mapping[str, torch.Tensor],
                      refused: Iterable[str] = ()) -> None:
    """MaskError for unknown group names (with what the analysis did not follow, `refused`),
    wrong shapes or an emptied group."""
    by_name = {g.name: g for g in groups}
    for name, m in masks.items():
        if name not in by_name:
            why = list(refused)
            raise MaskError(f"channel mask for '{name}': no channel group by that name "
                            f"(groups: {', '.join(by_name) or 'none'}"
                            + (f"; not followed: {why[0]}" if why else "") + ")")
        g = by_name[name]
        if tuple(m.shape) != (g.size,) or m.dtype != torch.bool:
            raise MaskError(f"channel mask for '{name}' must be bool of shape ({g.size},), got "
                            f"{m.dtype} {tuple(m.shape)}")
        if not bool(m.any()):
            raise MaskError(f"channel mask removes every channel of group '{name}' "
                            f"({g.size} channels); keep at least one")


def member_parameters(model: nn.Module, member: Member) -> list[tuple[str, int]]:
    """(parameter name, dim) pairs a member slices: weight and bias rows ("out"), weight
    columns ("in"), BatchNorm weight and bias ("bn"); none for channel maps."""
    mod = model.get_submodule(member.module)
    prefix = f"{member.module}." if member.module else ""
    if member.role == "in":
        return [(prefix + "weight", 1)]
    if member.role in ("out", "bn"):
        return [(prefix + n, 0) for n in ("weight", "bias") if getattr(mod, n, None) is not None]
    return []


def group_weight_masks(model: nn.Module, groups: Iterable[Group],
                       keep: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weight masks (prunelab.masks form) zeroing every member of the removed channels: rows
    and biases of the producers, BatchNorm weight and bias, consumers' columns. Applied to a
    model, it computes what the shrunk model computes (exactly, for zero-preserving groups)."""
    groups = list(groups)
    check_group_masks(groups, keep)
    params = dict(model.named_parameters())
    masks: dict[str, torch.Tensor] = {}
    for g in groups:
        if g.name not in keep or bool(keep[g.name].all()):
            continue
        removed = ~keep[g.name].cpu()
        for member in g.members:
            for pname, dim in member_parameters(model, member):
                p = params[pname]
                m = masks.setdefault(pname, torch.ones(p.shape, dtype=torch.bool,
                                                       device=p.device))
                idx = member.positions(removed).to(p.device)
                m.index_fill_(dim, idx, False)
    return masks


def alive_channels(model: nn.Module, groups: Iterable[Group]) -> dict[str, torch.Tensor]:
    """Group channels that still matter: a channel is dead when no consumer reads it (all its
    columns zero) or, in a zero-preserving group, when every producer row and bias and every
    BatchNorm weight and bias is zero (then every consumer reads exactly zero)."""
    params = dict(model.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for g in groups:
        read = torch.zeros(g.size, dtype=torch.bool)
        made = torch.zeros(g.size, dtype=torch.bool)
        for member in g.members:
            for pname, dim in member_parameters(model, member):
                p = params[pname].detach()
                nz = p.ne(0).transpose(0, dim).reshape(p.shape[dim], -1).any(dim=1).cpu()
                if member.role == "in":
                    read |= nz[member.positions()].view(g.size, -1).any(dim=1)
                else:
                    made |= nz[member.index]
        if not g.consumers:
            read[:] = True
        out[g.name] = read & (made | torch.tensor(not g.zero_preserving))
    return out


def index_map(groups: Iterable[Group]) -> dict[tuple[str, str], list[tuple[Group, Member]]]:
    """{(module, role) -> [(group, member)]}: which groups hold channels of each module."""
    out: dict[tuple[str, str], list[tuple[Group, Member]]] = {}
    for g in groups:
        for m in g.members:
            out.setdefault((m.module, m.role), []).append((g, m))
    return out


def is_chain(model: nn.Module) -> bool:
    """Whether `model` is a feed-forward nn.Sequential chain the chain machinery handles
    (`prunelab.masks.layer_chain`); everything else goes through the groups."""
    from prunelab.masks import layer_chain

    if not isinstance(model, nn.Sequential) or layer_chain(model) is None:
        return False
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    flats = [m for m in model.modules() if isinstance(m, nn.Flatten)]
    return all(c.groups == 1 for c in convs) and all(
        f.start_dim == 1 and f.end_dim == -1 for f in flats)


__all__ = [
    "Group", "GroupAnalysis", "Member", "alive_channels", "analyse", "channel_groups",
    "check_group_masks", "example_for", "group_weight_masks", "index_map", "is_chain",
    "member_parameters", "method_groups", "trace",
]
