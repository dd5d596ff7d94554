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
from collections.abc import Callable, Iterator, Mapping
from typing import Any

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
        # a pattern-only CSR tensor: sampled_addmm reads its structure, not its values
        self.template = torch.sparse_csr_tensor(self.crow, self.col,
                                                torch.zeros(self.nnz, device=mask.device),
                                                self.shape)

    @staticmethod
    def _crow(rows: torch.Tensor, n: int) -> torch.Tensor:
        counts = torch.bincount(rows, minlength=n)
        crow = torch.zeros(n + 1, dtype=torch.int64, device=rows.device)
        crow[1:] = torch.cumsum(counts, 0)
        return crow

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        """The CSR tensor of `w` restricted to the pattern."""
        return torch.sparse_csr_tensor(self.crow, self.col, w.reshape(-1)[self.pos],
                                       self.shape, dtype=w.dtype)

    def weight_t(self, w: torch.Tensor) -> torch.Tensor:
        """The CSR tensor of `w`^T restricted to the pattern's transpose."""
        return torch.sparse_csr_tensor(self.crow_t, self.col_t, w.reshape(-1)[self.pos_t],
                                       (self.shape[1], self.shape[0]), dtype=w.dtype)


def _csr_linear(x2: torch.Tensor, w_csr: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x2 (batch, in) -> (batch, out) as the transpose of a contiguous (out, batch) product."""
    xt = x2.t()
    if bias is None:
        return torch.sparse.mm(w_csr, xt).t()
    return torch.addmm(bias.unsqueeze(1), w_csr, xt).t()


class _CSRLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, pattern):  # noqa: D102
        x2 = x.reshape(-1, pattern.shape[1])
        w = weight.detach()
        y = _csr_linear(x2, pattern.weight(w), None if bias is None else bias.detach())
        ctx.pattern = pattern
        ctx.has_bias = bias is not None
        ctx.in_shape = x.shape
        ctx.save_for_backward(x2, w)
        return y.reshape(*x.shape[:-1], pattern.shape[0])

    @staticmethod
    def backward(ctx, gy):  # noqa: D102
        x2, w = ctx.saved_tensors
        pattern: CSRPattern = ctx.pattern
        gy2 = gy.reshape(-1, pattern.shape[0])
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.sparse.mm(pattern.weight_t(w), gy2.t()).t().reshape(ctx.in_shape)
        if ctx.needs_input_grad[1]:
            vals = torch.sparse.sampled_addmm(pattern.template.to(gy2.dtype), gy2.t(), x2,
                                              beta=0.0).values()
            gw = torch.zeros(pattern.shape[0] * pattern.shape[1], dtype=w.dtype,
                             device=w.device)
            gw[pattern.pos] = vals
            gw = gw.view(pattern.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy2.sum(0)
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
        if self.mode == "dense" or self._force_dense or x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return _CSRLinearFunction.apply(x, self.weight, self.bias, self.pattern)
        x2 = x.reshape(-1, self.in_features)
        y = _csr_linear(x2, self.pattern.weight(self.weight.detach()),
                        None if self.bias is None else self.bias.detach())
        return y.reshape(*x.shape[:-1], self.out_features)


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


def _best_us(fn: Callable[[], Any], repeats: int, calls: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def time_layer(layer: nn.Linear, mask: torch.Tensor, x: torch.Tensor, *, training: bool,
               input_grad: bool = True, repeats: int = 5, calls: int = 3) -> dict[str, float]:
    """Microseconds per call of the layer computed dense and in CSR on input `x`: forward
    only (inference, no autograd) or forward + backward (training; `input_grad` says whether
    the layer must also return dL/dx). The two are timed in alternation, best round counts."""
    sparse = SparseLinear.from_linear(layer, mask, "csr")
    dense = SparseLinear.from_linear(layer, mask, "dense")
    x = x.detach()
    if training:
        xg = x.clone().requires_grad_(input_grad)
        gy = torch.randn(*x.shape[:-1], layer.out_features, dtype=x.dtype, device=x.device)

        def step(m: nn.Module) -> Callable[[], None]:
            def run() -> None:
                with torch.enable_grad():
                    params = [p for p in (m.weight, m.bias) if p is not None]
                    inputs = params + ([xg] if input_grad else [])
                    torch.autograd.grad(m(xg), inputs, gy)
            return run
        ways = {"dense": step(dense), "csr": step(sparse)}
    else:
        def infer(m: nn.Module) -> Callable[[], None]:
            def run() -> None:
                with torch.no_grad():
                    m(x)
            return run
        ways = {"dense": infer(dense), "csr": infer(sparse)}
    for fn in ways.values():
        fn()
    best = dict.fromkeys(ways, float("inf"))
    for r in range(repeats):
        for label in (ways if r % 2 == 0 else reversed(list(ways))):
            best[label] = min(best[label], _best_us(ways[label], 1, calls))
    return best


def _linear_inputs(model: nn.Module, names: list[str], example: torch.Tensor
                   ) -> dict[str, torch.Tensor]:
    inputs: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        def keep(_m, args, _name=name):
            inputs.setdefault(_name, args[0].detach())
        handles.append(model.get_submodule(name).register_forward_pre_hook(keep))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), dense_compute(model):
            model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return inputs


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    *path, leaf = name.split(".")
    parent = model.get_submodule(".".join(path)) if path else model
    setattr(parent, leaf, new)


def sparsify_linear_layers(model: nn.Module, masks: Mapping[str, torch.Tensor],
                           example: torch.Tensor, *, training: bool, choose: str = "measure",
                           repeats: int = 5) -> dict[str, dict[str, Any]]:
    """In place: every Linear whose weight has a mask becomes a SparseLinear (sharing its
    parameters, so optimizers and state dicts are unaffected) where CSR is faster on its input
    from `example` (`choose='measure'`), or always ('csr') or never ('dense'). Returns
    {layer: {"choice": "csr"|"dense", "us": {"dense": t, "csr": t}, "density": d}}."""
    if choose not in CHOICES:
        raise ConfigError(f"choose must be one of {', '.join(CHOICES)}; got '{choose}'")
    layers = [n for n, m in model.named_modules()
              if isinstance(m, nn.Linear) and f"{n}.weight" in masks and n]
    inputs = _linear_inputs(model, layers, example) if choose == "measure" else {}
    first = layers[0] if layers else None
    out: dict[str, dict[str, Any]] = {}
    for name in layers:
        layer = model.get_submodule(name)
        mask = masks[f"{name}.weight"].to(layer.weight.device).bool()
        entry: dict[str, Any] = {"density": float(mask.float().mean())}
        if choose == "measure":
            if name not in inputs:
                continue  # not reached by the example's forward pass
            us = time_layer(layer, mask, inputs[name], training=training,
                            input_grad=name != first, repeats=repeats)
            entry["us"] = us
            winner = "csr" if us["csr"] < us["dense"] else "dense"
        else:
            winner = choose
        entry["choice"] = winner
        out[name] = entry
        if isinstance(layer, SparseLinear):
            layer.mode = winner
            layer.set_mask(mask)
        elif winner == "csr":
            _replace(model, name, SparseLinear.from_linear(layer, mask, "csr"))
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
