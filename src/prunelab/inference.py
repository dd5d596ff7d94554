"""CPU inference fast path: equivalent, faster implementations of two layers, chosen by timing.

Two measurements on PyTorch 2.13's CPU build motivate it (`benchmarks/RESULTS.md`,
shrink_speedup):
- `max_pool2d` outside autograd is slow on small NCHW maps: 256x8x24x24 takes 5-6 ms, while the
  maximum of the four strided sub-grids of each 2x2 window (`torch.maximum`, identical values)
  takes 0.3-0.6 ms. Its cost also does not shrink with the FLOPs that pruning removes.
- oneDNN's convolution has a large fixed cost on thin layers (one input channel, a few
  filters), where PyTorch's own im2col path can be 2-3x faster; on wide layers oneDNN wins.

`optimize_for_inference(model, example)` returns an eval-mode copy in which every eligible
MaxPool2d becomes a `StridedMaxPool2d` and every Conv2d a `BackendConv2d` whose backend
(oneDNN or native) is the faster one measured on the layer's own input from `example`. Outputs
are unchanged (pooling exactly; convolution to float rounding). The choices are made per model,
so a pruned network and its dense original each get their own best configuration, which is the
fair way to compare their speeds. Both classes subclass the torch layers they replace and fall
back to them while autograd records (the strided pooling's backward is slower than
max_pool2d's), so training and `torch.func` transforms see the ordinary layers.

A third, graph-level choice targets thin convolutions followed by max pooling (conv -> ReLU ->
MaxPool2d in an nn.Sequential, as in LeNet-style nets). On an AVX-512 CPU oneDNN computes
output channels in blocks of 16, so a conv with 7 filters costs what one with 16 costs
(`benchmarks/conv_channel_granularity.py`). `PackedConvPool2d` fills those idle channels: with
a packing (sh, sw) that divides the pooling window, it convolves once with sh*sw shifted copies
of the filters at stride (sh, sw), so channel group (i, j) holds the conv output at rows
i::sh and columns j::sw; the max over the groups is then the max over an sh x sw block of the
pooling window, the rest of the window is a strided maximum, and the activation runs last, on
the 4x smaller pooled map (exact for a monotone non-decreasing activation: act(max) = max(act)).
The fused candidates, packed or not and on either conv backend, are timed against the tuned
separate layers on the conv's own input; the fastest wins.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BackendConv2d", "PackedConvPool2d", "StridedMaxPool2d", "optimize_for_inference"]


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _retyped(module: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """A shallow copy of `module` as an instance of its subclass `cls`, sharing its parameters
    and buffers (own dicts, so later replacements in one do not show in the other)."""
    new = copy.copy(module)
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    new._modules = dict(module._modules)
    new.__class__ = cls
    return new


def _non_overlapping(pool: nn.MaxPool2d) -> bool:
    """Windows that tile the map: kernel == stride, no padding or dilation, floor mode."""
    k, s = _pair(pool.kernel_size), _pair(pool.stride if pool.stride else pool.kernel_size)
    return (k == s and _pair(pool.padding) == (0, 0) and _pair(pool.dilation) == (1, 1)
            and not pool.ceil_mode and not pool.return_indices)


class StridedMaxPool2d(nn.MaxPool2d):
    """MaxPool2d that, outside autograd and for non-overlapping windows (kernel == stride, no
    padding or dilation, floor mode), takes the maximum of the kernel's strided sub-grids."""

    @classmethod
    def from_pool(cls, pool: nn.MaxPool2d) -> StridedMaxPool2d:
        """A StridedMaxPool2d with `pool`'s settings."""
        return _retyped(pool, cls)

    def fast_path_applies(self) -> bool:
        """Whether this layer's settings allow the strided computation."""
        return _non_overlapping(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if torch.is_grad_enabled() or x.dim() != 4 or not self.fast_path_applies():
            return super().forward(x)
        return _strided_max(x, *_pair(self.kernel_size))


class BackendConv2d(nn.Conv2d):
    """Conv2d that runs with oneDNN switched on or off (`use_onednn`) for its own call."""

    use_onednn: bool = True

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, use_onednn: bool) -> BackendConv2d:
        """A BackendConv2d sharing `conv`'s parameters."""
        new = _retyped(conv, cls)
        new.use_onednn = use_onednn
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return _with_backend(self.use_onednn, x, super().forward)


def _with_backend(use_onednn: bool, x: torch.Tensor,
                  fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """fn(x) with oneDNN switched off for the call when `use_onednn` is false (CPU only); the
    global flag is restored even if fn fails."""
    if use_onednn or x.device.type != "cpu":
        return fn(x)
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        return fn(x)
    finally:
        torch.backends.mkldnn.enabled = before


def _strided_max(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """Non-overlapping kh x kw max pooling (floor mode) as a maximum of strided sub-grids."""
    if kh == kw == 1:
        return x
    oh, ow = x.shape[-2] // kh, x.shape[-1] // kw
    out = None
    for i in range(kh):
        for j in range(kw):
            part = x[..., i: i + kh * oh: kh, j: j + kw * ow: kw]
            out = part if out is None else torch.maximum(out, part)
    return out


# Activations that may run after the pooling instead of before: elementwise and monotone
# non-decreasing, so act(max(z)) == max(act(z)) exactly.
_MONOTONE_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Identity)


def _monotone(act: nn.Module | None) -> bool:
    if act is None or isinstance(act, _MONOTONE_ACTIVATIONS):
        return True
    return isinstance(act, nn.LeakyReLU) and act.negative_slope >= 0


class PackedConvPool2d(nn.Conv2d):
    """Conv2d -> monotone activation -> non-overlapping MaxPool2d as one layer. Outside
    autograd it convolves with `packing` = (sh, sw) shifted copies of the filters at stride
    (sh, sw) (see the module docstring); while autograd records it runs the three layers in
    their original order. Shares the conv's parameters; the packed weight is rebuilt whenever
    the conv's weight or bias changes."""

    activation: nn.Module | None
    pool: nn.MaxPool2d
    packing: tuple[int, int] = (1, 1)
    use_onednn: bool = True

    @classmethod
    def supports(cls, conv: nn.Conv2d, activation: nn.Module | None,
                 pool: nn.MaxPool2d) -> bool:
        """Whether the chain conv -> activation -> pool can be fused."""
        if type(conv) not in (nn.Conv2d, BackendConv2d) or type(pool) not in (
                nn.MaxPool2d, StridedMaxPool2d):
            return False
        return (_pair(conv.stride) == (1, 1) and _pair(conv.dilation) == (1, 1)
                and conv.groups == 1 and conv.padding_mode == "zeros"
                and not isinstance(conv.padding, str) and _monotone(activation)
                and _non_overlapping(pool))

    @classmethod
    def from_chain(cls, conv: nn.Conv2d, activation: nn.Module | None, pool: nn.MaxPool2d,
                   packing: tuple[int, int], use_onednn: bool) -> PackedConvPool2d:
        """The fused layer for conv -> activation -> pool; `packing` must divide the pooling
        window. Raises ValueError for a chain `supports` refuses."""
        if not cls.supports(conv, activation, pool):
            raise ValueError("conv -> activation -> pool chain cannot be fused "
                             "(needs stride-1 ungrouped conv, monotone activation, "
                             "non-overlapping max pooling)")
        kh, kw = _pair(pool.kernel_size)
        sh, sw = packing
        if sh < 1 or sw < 1 or kh % sh or kw % sw:
            raise ValueError(f"packing {packing} does not divide the pooling window {(kh, kw)}")
        new = _retyped(conv, cls)
        new.activation = activation
        new.pool = pool
        new.packing = (sh, sw)
        new.use_onednn = use_onednn
        new._packed_key = None
        return new

    def _packed(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        w, b = self.weight, self.bias
        key = (w._version, w.data_ptr(), w.dtype, w.device,
               None if b is None else (b._version, b.data_ptr()))
        if key != self._packed_key:
            sh, sw = self.packing
            co, ci, kh, kw = w.shape
            packed = w.new_zeros(sh * sw * co, ci, kh + sh - 1, kw + sw - 1)
            for i in range(sh):
                for j in range(sw):
                    g = i * sw + j
                    packed[g * co:(g + 1) * co, :, i:i + kh, j:j + kw] = w
            self._packed_weight = packed
            self._packed_bias = None if b is None else b.detach().repeat(sh * sw)
            self._packed_key = key
        return self._packed_weight, self._packed_bias

    def _activate(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.activation is None else self.activation(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if torch.is_grad_enabled() or x.dim() != 4:
            return self.pool(self._activate(nn.Conv2d.forward(self, x)))
        weight, bias = self._packed()
        sh, sw = self.packing
        y = _with_backend(self.use_onednn, x, lambda t: F.conv2d(
            t, weight, bias, stride=(sh, sw), padding=self.padding))
        co = self.out_channels
        out = y[:, :co]
        for g in range(1, sh * sw):
            out = torch.maximum(out, y[:, g * co:(g + 1) * co])
        kh, kw = _pair(self.pool.kernel_size)
        return self._activate(_strided_max(out, kh // sh, kw // sw))


def _fastest(candidates: dict[str, Callable[[], object]], repeats: int,
             calls: int = 3) -> str:
    """The label of the fastest candidate: each is warmed up, then all are timed in turn for
    `repeats` rounds (so a slow spell of the machine hits them alike), best round counts."""
    for fn in candidates.values():
        fn()
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(repeats):
        for label, fn in candidates.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best[label] = min(best[label], (time.perf_counter() - start) / calls)
    return min(best, key=best.__getitem__)


def _layer_inputs(model: nn.Module, example: torch.Tensor,
                  kinds: tuple[type[nn.Module], ...]) -> dict[str, torch.Tensor]:
    inputs: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, kinds):
            def keep(_m, args, _name=name):
                inputs.setdefault(_name, args[0].detach())
            handles.append(mod.register_forward_pre_hook(keep))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return inputs


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    *path, leaf = name.split(".")
    parent = model.get_submodule(".".join(path)) if path else model
    setattr(parent, leaf, new)


def _conv_pool_chains(model: nn.Module) -> list[tuple[nn.Sequential, str, list[int]]]:
    """(sequential, its name, [conv, activation?, pool indices]) for every Conv2d ->
    [activation] -> MaxPool2d run of consecutive children that PackedConvPool2d can fuse."""
    chains = []
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        kids = list(seq)
        for i, conv in enumerate(kids):
            if not isinstance(conv, nn.Conv2d):
                continue
            for idx in ([i, i + 1], [i, i + 1, i + 2]):
                if idx[-1] >= len(kids) or not isinstance(kids[idx[-1]], nn.MaxPool2d):
                    continue
                act = kids[idx[1]] if len(idx) == 3 else None
                if PackedConvPool2d.supports(conv, act, kids[idx[-1]]):
                    chains.append((seq, seq_name, idx))
                break
    return chains


def _packings(pool: nn.MaxPool2d, max_groups: int = 9) -> list[tuple[int, int]]:
    kh, kw = _pair(pool.kernel_size)
    return [(sh, sw) for sh in range(1, kh + 1) if kh % sh == 0
            for sw in range(1, kw + 1) if kw % sw == 0 and sh * sw <= max_groups]


def _backends() -> tuple[bool, ...]:
    """use_onednn values worth timing on this build."""
    return (True, False) if torch.backends.mkldnn.is_available() else (True,)


def _fuse_conv_pools(fast: nn.Module, inputs: dict[str, torch.Tensor], repeats: int,
                     choices: dict[str, str]) -> None:
    for seq, seq_name, idx in _conv_pool_chains(fast):
        kids = [seq[i] for i in idx]
        conv, pool = kids[0], kids[-1]
        act = kids[1] if len(kids) == 3 else None
        conv_name = f"{seq_name}.{idx[0]}" if seq_name else str(idx[0])
        x = inputs.get(conv_name)
        if x is None or x.device.type != "cpu":
            continue
        separate = nn.Sequential(*kids)
        fused = {f"packing {sh}x{sw}, {'oneDNN' if onednn else 'native'}":
                 PackedConvPool2d.from_chain(conv, act, pool, (sh, sw), onednn)
                 for sh, sw in _packings(pool) for onednn in _backends()}
        candidates: dict[str, Callable[[], object]] = {
            label: (lambda m=m, x=x: m(x)) for label, m in fused.items()}
        candidates["separate"] = lambda m=separate, x=x: m(x)
        winner = _fastest(candidates, repeats)
        if winner == "separate":
            continue
        seq[idx[0]] = fused[winner]
        for i in idx[1:]:
            seq[i] = nn.Identity()
        fused_kind = "conv+activation+pool" if act is not None else "conv+pool"
        choices[conv_name] = f"fused {fused_kind}, {winner}"
        for i in idx[1:]:
            choices[f"{seq_name}.{i}" if seq_name else str(i)] = f"fused into {conv_name}"


@torch.no_grad()
def optimize_for_inference(model: nn.Module, example: torch.Tensor, *, repeats: int = 5,
                           tune_convolutions: bool = True, tune_pooling: bool = True,
                           fuse_conv_pool: bool = True,
                           ) -> tuple[nn.Module, dict[str, str]]:
    """An eval-mode copy of `model` with the faster of equivalent layer implementations,
    each timed on that layer's input from `example` (a representative batch on the model's
    device); returns (model, {layer name: choice}). `model` itself is left unchanged.
    `fuse_conv_pool` also tries `PackedConvPool2d` on conv -> activation -> max-pool runs
    inside nn.Sequential containers (CPU only); a fused chain leaves nn.Identity in the
    activation's and the pool's places, so parameter names are unchanged."""
    fast = copy.deepcopy(model).eval()
    choices: dict[str, str] = {}
    inputs = _layer_inputs(fast, example, (nn.Conv2d, nn.MaxPool2d))
    for name, x in inputs.items():
        layer = fast.get_submodule(name)
        if isinstance(layer, nn.MaxPool2d) and tune_pooling:
            candidate = StridedMaxPool2d.from_pool(layer)
            if not candidate.fast_path_applies():
                choices[name] = "max_pool2d (windows overlap or pad)"
                continue
            plain = {"max_pool2d": lambda m=layer, x=x: F.max_pool2d(
                x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode),
                "strided maximum": lambda c=candidate, x=x: c(x)}
            if _fastest(plain, repeats) == "strided maximum":
                _replace(fast, name, candidate)
                choices[name] = "strided maximum"
            else:
                choices[name] = "max_pool2d"
        elif (isinstance(layer, nn.Conv2d) and tune_convolutions and x.device.type == "cpu"
              and torch.backends.mkldnn.is_available()):
            on = BackendConv2d.from_conv(layer, True)
            off = BackendConv2d.from_conv(layer, False)
            winner = _fastest({"oneDNN": lambda c=on, x=x: c(x),
                               "native": lambda c=off, x=x: c(x)}, repeats)
            _replace(fast, name, on if winner == "oneDNN" else off)
            choices[name] = winner
    if fuse_conv_pool:
        _fuse_conv_pools(fast, inputs, repeats, choices)
    return fast, choices
