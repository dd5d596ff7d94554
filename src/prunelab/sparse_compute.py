"""Unstructured sparsity that pays on the CPU: Linear layers computed with torch.sparse CSR
kernels, chosen per layer by measurement, for inference and for training between mask updates.

A masked dense layer costs what a dense one costs. `SparseLinear` (an nn.Linear sharing the
original layer's parameters) multiplies with the CSR form of its masked weight instead:

- forward: y^T = W_csr x^T (+ b), one `torch.addmm` with a CSR left operand (MKL's sparse
  kernel on x86 builds); the output is returned as the transpose of a contiguous (out, batch)
  tensor, so the next CSR layer reads its input transposed for free;
- backward (training): dL/dx = (W^T)_csr dL/dy^T, and dL/dW only at the mask's entries, a
  sampled dense-dense product (`torch.sparse.sampled_addmm`) scattered into a dense gradient
  that is zero off the mask.

How the weights stay in sync: the dense `nn.Parameter` stays the only copy of the weights.
The CSR structure (row pointers, column indices, and each nonzero's position in the dense
tensor) is built from the mask, once per mask change (`refresh_sparse_layers`); the CSR values
are gathered from the dense parameter at every forward, so optimizer updates, rewinds and
loads are always seen. The gradient handed back is the dense masked gradient, so the optimizer,
its state and the mask enforcer work unchanged, and checkpoints hold plain weights.
`dense_compute(model)` runs every SparseLinear densely for a block (RigL's dense gradient).

`sparsify_linear_layers` times each masked Linear on its own input from an example batch,
dense against CSR (forward only for inference, forward + backward for training), and swaps
in a SparseLinear where CSR wins; `optimize_sparse_inference` does it on an eval-mode copy.
Sparse outputs equal the dense masked outputs to float rounding (tests: <= 1e-5).
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.errors import ConfigError, MaskError
from prunelab.masks import Masks

__all__ = ["CSRPattern", "SparseLinear", "dense_compute", "optimize_sparse_inference",
           "refresh_sparse_layers", "sparsify_linear_layers"]

CHOICES = ("measure", "csr", "dense")


class CSRPattern:
    """The CSR structure of a 2-d mask and of its transpose, with each nonzero's flat position
    in the dense weight (so values are one gather from the dense tensor)."""

    def __init__(self, mask: torch.Tensor):
        if mask.dim() != 2 or mask.dtype != torch.bool:
            raise MaskError(f"a CSR pattern needs a 2-d bool mask, got {tuple(mask.shape)} "
                            f"{mask.dtype}")
        self.shape = (int(mask.shape[0]), int(mask.shape[1]))
        self.device = mask.device
        self.nnz = int(mask.sum())
        rows, cols = mask.nonzero(as_tuple=True)  # row-major: CSR order
        self.crow = self._crow(rows, self.shape[0])
        self.col = cols.contiguous()
        self.pos = rows * self.shape[1] + cols
        cols_t, rows_t = mask.t().nonzero(as_tuple=True)  # CSR order of the transpose
        self.crow_t = self._crow(cols_t, self.shape[1])
        self.col_t = rows_t.contiguous()
        self.pos_t = rows_t * self.shape[1] + cols_t
        # a pattern-only CSR tensor: sampled_addmm reads its structure, not its values.
        # Its creation also absorbs torch's once-per-process "CSR support is in beta" warning.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            self.template = torch.sparse_csr_tensor(self.crow, self.col,
                                                    torch.zeros(self.nnz, device=mask.device),
                                                    self.shape, check_invariants=False)

    @staticmethod
    def _crow(rows: torch.Tensor, n: int) -> torch.Tensor:
        counts = torch.bincount(rows, minlength=n)
        crow = torch.zeros(n + 1, dtype=torch.int64, device=rows.device)
        crow[1:] = torch.cumsum(counts, 0)
        return crow

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        """The CSR tensor of `w` restricted to the pattern."""
        values = w.reshape(-1).index_select(0, self.pos)
        return torch.sparse_csr_tensor(self.crow, self.col, values, self.shape, dtype=w.dtype,
                                       check_invariants=False)

    def weight_t(self, w: torch.Tensor) -> torch.Tensor:
        """The CSR tensor of `w`^T restricted to the pattern's transpose."""
        values = w.reshape(-1).index_select(0, self.pos_t)
        return torch.sparse_csr_tensor(self.crow_t, self.col_t, values,
                                       (self.shape[1], self.shape[0]), dtype=w.dtype,
                                       check_invariants=False)


def feature_major(x2: torch.Tensor) -> torch.Tensor:
    """x2 (batch, n) -> the contiguous (n, batch) tensor of its transpose: free when x2 is
    already the transposed view of one (the output of a CSR layer), else a transposing copy
    (NumPy's for CPU floats: about 3x faster than torch's strided copy on a 256 x 784 batch,
    measured on this CPU)."""
    xt = x2.t()
    if xt.is_contiguous():
        return xt
    if x2.device.type == "cpu" and x2.dtype in (torch.float32, torch.float64) \
            and x2.is_contiguous():
        return torch.from_numpy(np.ascontiguousarray(x2.detach().numpy().T))
    return xt.contiguous()


def _csr_linear_t(xt: torch.Tensor, w_csr: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """(W x^T + b) as a contiguous (out, batch) tensor, from xt = x^T (in, batch)."""
    if bias is None:
        return torch.sparse.mm(w_csr, xt)
    return torch.addmm(bias.unsqueeze(1), w_csr, xt)


class _CSRLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, pattern):  # noqa: D102
        xt = feature_major(x.reshape(-1, pattern.shape[1]))
        w = weight.detach()
        yt = _csr_linear_t(xt, pattern.weight(w), None if bias is None else bias.detach())
        ctx.pattern = pattern
        ctx.has_bias = bias is not None
        ctx.in_shape = x.shape
        ctx.save_for_backward(xt, w)
        return yt.t().reshape(*x.shape[:-1], pattern.shape[0])

    @staticmethod
    def backward(ctx, gy):  # noqa: D102
        xt, w = ctx.saved_tensors
        pattern: CSRPattern = ctx.pattern
        gyt = feature_major(gy.reshape(-1, pattern.shape[0]))  # (out, batch)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.sparse.mm(pattern.weight_t(w), gyt).t().reshape(ctx.in_shape)
        if ctx.needs_input_grad[1]:
            # both operands batch-innermost: each kept entry is one contiguous dot product
            vals = torch.sparse.sampled_addmm(pattern.template.to(gyt.dtype), gyt, xt.t(),
                                              beta=0.0).values()
            gw = torch.zeros(pattern.shape[0] * pattern.shape[1], dtype=w.dtype,
                             device=w.device).index_copy_(0, pattern.pos, vals)
            gw = gw.view(pattern.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gyt.sum(1)
        return gx, gw, gb, None


class SparseLinear(nn.Linear):
    """nn.Linear computed with its weight in CSR form over a fixed mask (see the module
    docstring); shares the parameters of the layer it was made from. `mode` 'csr' or
    'dense' (the ordinary masked dense layer)."""

    pattern: CSRPattern
    mode: str = "csr"
    _force_dense: bool = False

    @classmethod
    def from_linear(cls, layer: nn.Linear, mask: torch.Tensor, mode: str = "csr"
                    ) -> SparseLinear:
        """A SparseLinear sharing `layer`'s weight and bias, over `mask`."""
        if mode not in ("csr", "dense"):
            raise ConfigError(f"mode must be csr or dense, got '{mode}'")
        new = copy.copy(layer)
        new._parameters = dict(layer._parameters)
        new._buffers = dict(layer._buffers)
        new._modules = dict(layer._modules)
        new.__class__ = cls
        new.mode = mode
        new.set_mask(mask)
        return new

    def set_mask(self, mask: torch.Tensor) -> None:
        """Rebuild the CSR structure for a new mask (after a mask update)."""
        if tuple(mask.shape) != tuple(self.weight.shape):
            raise MaskError(f"mask shape {tuple(mask.shape)} does not fit weight "
                            f"{tuple(self.weight.shape)}")
        self.pattern = CSRPattern(mask.to(self.weight.device).bool())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self._force_dense or x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        if self.mode == "dense":
            if x.dim() == 2 and not x.is_contiguous() and x.t().is_contiguous():
                # feature-major input (from a CSR layer): keep the layout, BLAS reads it as is
                if self.bias is None:
                    return torch.mm(self.weight, x.t()).t()
                return torch.addmm(self.bias.unsqueeze(1), self.weight, x.t()).t()
            return F.linear(x, self.weight, self.bias)
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return _CSRLinearFunction.apply(x, self.weight, self.bias, self.pattern)
        xt = feature_major(x.reshape(-1, self.in_features))
        yt = _csr_linear_t(xt, self.pattern.weight(self.weight.detach()),
                           None if self.bias is None else self.bias.detach())
        return yt.t().reshape(*x.shape[:-1], self.out_features)


@contextlib.contextmanager
def dense_compute(model: nn.Module) -> Iterator[None]:
    """Run every SparseLinear of `model` densely within the block (full dense gradients)."""
    layers = [m for m in model.modules() if isinstance(m, SparseLinear)]
    before = [m._force_dense for m in layers]
    for m in layers:
        m._force_dense = True
    try:
        yield
    finally:
        for m, b in zip(layers, before):
            m._force_dense = b


# ----------------------------------------------------------------------------- choosing


def _us_per_call(fn: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def time_layer(layer: nn.Linear, mask: torch.Tensor, x: torch.Tensor, *, training: bool,
               input_grad: bool = True, repeats: int = 5, calls: int = 3) -> dict[str, float]:
    """Microseconds per call of the layer computed dense and in CSR on input `x` (in the
    layout the layer will see it): forward only (inference, no autograd) or forward + backward
    (training; `input_grad` says whether the layer must also return dL/dx; the output gradient
    comes in the layout of the output). Timed in alternation, the best round counts."""
    x = x.detach()
    ways: dict[str, Callable[[], None]] = {}
    for mode in ("dense", "csr"):
        m = SparseLinear.from_linear(layer, mask, mode)
        if training:
            xg = x.clone().requires_grad_(input_grad)
            with torch.no_grad():
                gy = torch.randn_like(m(x))
            params = [p for p in (m.weight, m.bias) if p is not None]
            inputs = params + ([xg] if input_grad else [])

            def run(m=m, xg=xg, gy=gy, inputs=inputs) -> None:
                with torch.enable_grad():
                    torch.autograd.grad(m(xg), inputs, gy)
        else:
            def run(m=m) -> None:
                with torch.no_grad():
                    m(x)
        ways[mode] = run
    for fn in ways.values():
        fn()
    best = dict.fromkeys(ways, float("inf"))
    for r in range(repeats):
        for label in (ways if r % 2 == 0 else reversed(list(ways))):
            best[label] = min(best[label], _us_per_call(ways[label], calls))
    return best


def _layer_input(model: nn.Module, name: str, example: torch.Tensor) -> torch.Tensor | None:
    """The input `name` receives when `model` runs on `example` (None if it is not reached)."""
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(name).register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].detach()) if not seen else None)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        handle.remove()
    return seen[0] if seen else None


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    *path, leaf = name.split(".")
    parent = model.get_submodule(".".join(path)) if path else model
    setattr(parent, leaf, new)


def sparsify_linear_layers(model: nn.Module, masks: Mapping[str, torch.Tensor],
                           example: torch.Tensor, *, training: bool, choose: str = "measure",
                           repeats: int = 5) -> dict[str, dict[str, Any]]:
    """In place: every Linear whose weight has a mask becomes a SparseLinear (sharing its
    parameters, so optimizers and state dicts are unaffected) computed in CSR where that is
    faster (`choose='measure'`), always ('csr') or never ('dense'). Layers are decided in
    module order, each timed on the input it receives from `example` with the earlier choices
    in place (so in the feature-major layout a CSR layer hands on). Returns {layer: {"choice":
    "csr"|"dense", "us": {"dense": t, "csr": t}, "density": d}}."""
    if choose not in CHOICES:
        raise ConfigError(f"choose must be one of {', '.join(CHOICES)}; got '{choose}'")
    layers = [n for n, m in model.named_modules()
              if isinstance(m, nn.Linear) and f"{n}.weight" in masks and n]
    first = layers[0] if layers else None
    out: dict[str, dict[str, Any]] = {}
    for name in layers:
        layer = model.get_submodule(name)
        mask = masks[f"{name}.weight"].to(layer.weight.device).bool()
        entry: dict[str, Any] = {"density": float(mask.float().mean())}
        if choose == "measure":
            x = _layer_input(model, name, example)
            if x is None:
                continue  # not reached by the example's forward pass
            us = time_layer(layer, mask, x, training=training, input_grad=name != first,
                            repeats=repeats)
            entry["us"] = us
            winner = "csr" if us["csr"] < us["dense"] else "dense"
        else:
            winner = choose
        entry["choice"] = winner
        out[name] = entry
        if isinstance(layer, SparseLinear):
            layer.mode = winner
            layer.set_mask(mask)
        else:
            _replace(model, name, SparseLinear.from_linear(layer, mask, winner))
    return out


def refresh_sparse_layers(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Rebuild the CSR structure of every SparseLinear whose weight has a mask in `masks`."""
    for name, m in model.named_modules():
        if isinstance(m, SparseLinear) and f"{name}.weight" in masks:
            m.set_mask(masks[f"{name}.weight"])


@torch.no_grad()
def optimize_sparse_inference(model: nn.Module, example: torch.Tensor,
                              masks: Masks | None = None, *, choose: str = "measure",
                              repeats: int = 5) -> tuple[nn.Module, dict[str, dict[str, Any]]]:
    """An eval-mode copy of `model` whose masked Linear layers run in CSR where that is faster
    on `example` (forward only); `masks` defaults to the nonzero weights of each Linear.
    `model` itself is unchanged. Returns (copy, choices as in `sparsify_linear_layers`)."""
    fast = copy.deepcopy(model).eval()
    if masks is None:
        masks = {f"{n}.weight": m.weight.detach() != 0 for n, m in fast.named_modules()
                 if isinstance(m, nn.Linear) and n}
    choices = sparsify_linear_layers(fast, masks, example, training=False, choose=choose,
                                     repeats=repeats)
    return fast, choices
