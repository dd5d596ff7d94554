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
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BackendConv2d", "StridedMaxPool2d", "optimize_for_inference"]


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


class StridedMaxPool2d(nn.MaxPool2d):
    """MaxPool2d that, outside autograd and for non-overlapping windows (kernel == stride, no
    padding or dilation, floor mode), takes the maximum of the kernel's strided sub-grids."""

    @classmethod
    def from_pool(cls, pool: nn.MaxPool2d) -> StridedMaxPool2d:
        """A StridedMaxPool2d with `pool`'s settings."""
        return _retyped(pool, cls)

    def fast_path_applies(self) -> bool:
        """Whether this layer's settings allow the strided computation."""
        k, s = _pair(self.kernel_size), _pair(self.stride if self.stride else self.kernel_size)
        return (k == s and _pair(self.padding) == (0, 0) and _pair(self.dilation) == (1, 1)
                and not self.ceil_mode and not self.return_indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if torch.is_grad_enabled() or x.dim() != 4 or not self.fast_path_applies():
            return super().forward(x)
        kh, kw = _pair(self.kernel_size)
        oh, ow = x.shape[2] // kh, x.shape[3] // kw
        out = None
        for i in range(kh):
            for j in range(kw):
                part = x[:, :, i: i + kh * oh: kh, j: j + kw * ow: kw]
                out = part if out is None else torch.maximum(out, part)
        return out


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
        if self.use_onednn or x.device.type != "cpu":
            return super().forward(x)
        before = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        try:
            return super().forward(x)
        finally:
            torch.backends.mkldnn.enabled = before


def _best_time(fn: Callable[[], object], repeats: int, calls: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


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


@torch.no_grad()
def optimize_for_inference(model: nn.Module, example: torch.Tensor, *, repeats: int = 5,
                           tune_convolutions: bool = True, tune_pooling: bool = True,
                           ) -> tuple[nn.Module, dict[str, str]]:
    """An eval-mode copy of `model` with the faster of equivalent layer implementations,
    each timed on that layer's input from `example` (a representative batch on the model's
    device); returns (model, {layer name: choice}). `model` itself is left unchanged."""
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
            strided = _best_time(lambda c=candidate, x=x: c(x), repeats)
            plain = _best_time(lambda m=layer, x=x: F.max_pool2d(
                x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode), repeats)
            if strided < plain:
                _replace(fast, name, candidate)
                choices[name] = "strided maximum"
            else:
                choices[name] = "max_pool2d"
        elif (isinstance(layer, nn.Conv2d) and tune_convolutions and x.device.type == "cpu"
              and torch.backends.mkldnn.is_available()):
            on = BackendConv2d.from_conv(layer, True)
            off = BackendConv2d.from_conv(layer, False)
            t_on = _best_time(lambda c=on, x=x: c(x), repeats)
            t_off = _best_time(lambda c=off, x=x: c(x), repeats)
            _replace(fast, name, on if t_on <= t_off else off)
            choices[name] = "oneDNN" if t_on <= t_off else "native"
    return fast, choices
