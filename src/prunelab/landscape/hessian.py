"""Full-batch Hessian-vector products of a model's loss, without touching the model.

`HessianOperator` evaluates the loss at a parameter vector with `torch.func.functional_call`
and forms products by forward-over-reverse differentiation (`jvp` of `grad`), vmapped over
several vectors at once. It can act on the full parameter space or on the free coordinates of
a weight mask (the sparse network's Hessian), and besides the Hessian H it offers the
Gauss-Newton part G = (1/N) sum_i J_i^T (d2 l_i / dz2) J_i and the residual H - G. For small
models the exact dense matrix is built from the same products after a memory check.

The loss function must return the mean over the batch (like `F.cross_entropy`): the data are
processed in chunks and the chunk losses are weighted by chunk size, so the products are exact
full-batch products whatever the chunk size.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap
from torch.nn import functional as F

from prunelab.data.source import DataSource, split_tensors
from prunelab.errors import ConfigError, MaskError

KINDS = ("hessian", "gauss-newton", "residual")
SUBSPACES = ("dense", "sparse")
DEFAULT_MAX_BYTES = 4 * 1024**3  # exact mode refuses models whose dense Hessian needs more

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None or dtype in ("float32", torch.float32):
        return torch.float32
    if dtype in ("float64", torch.float64):
        return torch.float64
    raise ConfigError(f"dtype must be float32 or float64, got {dtype!r}")


def exact_memory_bytes(dim: int, dtype: torch.dtype = torch.float64) -> int:
    """Bytes needed to build and eigendecompose a dim x dim Hessian (matrix + eigh workspace).

    Counted as three dense matrices: the Hessian, its symmetrised float64 copy and the
    eigenvector/workspace buffers of `eigh`.
    """
    return 3 * dim * dim * max(torch.finfo(dtype).bits // 8, 8)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class HessianOperator:
    """The Hessian (or Gauss-Newton part, or residual) of the mean loss over (x, y) at `params`.

    model: any module mapping a batch of x to outputs; it is only read (its parameters, buffers
        and mode are never changed). The loss is always that of the model in eval mode
        (BatchNorm on its running statistics, dropout off): a model in train mode is copied.
    params: the point, as {name: tensor} or a flat vector in `named_parameters` order
        (default: the model's current parameters).
    masks: weight masks {name: bool tensor}; masked-out entries are zero at the point. With
        subspace="sparse" the operator acts on the free (True) coordinates only, i.e. it is the
        submatrix H[free, free]; parameters without a mask are entirely free.
    kind: "hessian", "gauss-newton" (G) or "residual" (H - G).
    dtype: float32 or float64 (the point, data and products are cast to it).
    batch_size: samples per chunk (memory only; the result is the full-batch product).
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        loss_fn: LossFn | None = None,
        *,
        params: Mapping[str, torch.Tensor] | torch.Tensor | None = None,
        masks: Mapping[str, torch.Tensor] | None = None,
        subspace: str = "dense",
        kind: str = "hessian",
        dtype: torch.dtype | str | None = None,
        batch_size: int | None = None,
    ):
        if isinstance(x, DataSource):  # a source: its training split, held in memory (bounded)
            x, y = split_tensors(x, "train")
        if subspace not in SUBSPACES:
            raise ConfigError(f"subspace must be one of {', '.join(SUBSPACES)}; got '{subspace}'")
        if kind not in KINDS:
            raise ConfigError(f"kind must be one of {', '.join(KINDS)}; got '{kind}'")
        if subspace == "sparse" and not masks:
            raise MaskError("subspace 'sparse' needs masks (a pruned run); use subspace 'dense'")
        if x.shape[0] == 0 or x.shape[0] != y.shape[0]:
            raise ConfigError(f"x and y must hold the same positive number of samples, got "
                              f"{x.shape[0]} and {y.shape[0]}")
        # BatchNorm on its running statistics and no dropout: in train mode the loss would
        # depend on how the data are chunked (and BatchNorm would update its statistics).
        self.model = copy.deepcopy(model).eval() if model.training else model
        self.loss_fn = loss_fn or F.cross_entropy
        self.kind = kind
        self.subspace = subspace
        self.dtype = _resolve_dtype(dtype)
        named = dict(model.named_parameters())
        self.names = list(named)
        self.shapes = [tuple(p.shape) for p in named.values()]
        self.sizes = [p.numel() for p in named.values()]
        self.full_dim = sum(self.sizes)
        device = next(iter(named.values())).device if named else torch.device("cpu")
        self.device = device
        theta = self._flatten_point(params, named).to(device=device, dtype=self.dtype)
        self.masks = dict(masks) if masks else None
        free: torch.Tensor | None = None
        if masks:
            mask_vec = self._mask_vector(masks, named).to(device)
            theta = theta * mask_vec.to(self.dtype)
            if subspace == "sparse":
                free = torch.nonzero(mask_vec).flatten()
                if free.numel() == 0:
                    raise MaskError("the masks leave no free coordinate: every parameter is "
                                    "pruned, so the sparse Hessian is empty")
        self.theta = theta.detach()
        self.free_index = free
        self.dim = self.full_dim if free is None else int(free.numel())
        self.buffers = {
            n: (b.detach().to(self.dtype) if b.is_floating_point() else b.detach())
            for n, b in model.named_buffers()
        }
        self.x = x.detach().to(device=device, dtype=self.dtype if x.is_floating_point() else None)
        self.y = y.detach().to(device)
        self.n = int(x.shape[0])
        bs = self.n if batch_size is None else int(batch_size)
        if bs < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = min(bs, self.n)
        self.n_products = 0

    # ------------------------------------------------------------------ parameter vectors

    def _flatten_point(self, params: Any, named: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if params is None:
            return torch.cat([p.detach().reshape(-1) for p in named.values()]) if named \
                else torch.zeros(0)
        if isinstance(params, torch.Tensor):
            if params.numel() != self.full_dim:
                raise ConfigError(f"params vector has {params.numel()} entries, the model has "
                                  f"{self.full_dim} parameters")
            return params.detach().reshape(-1).clone()
        missing = [n for n in named if n not in params]
        if missing:
            raise ConfigError(f"params lacks {', '.join(missing[:4])}; it needs every "
                              "parameter of the model")
        out = []
        for n, p in named.items():
            t = params[n]
            if tuple(t.shape) != tuple(p.shape):
                raise ConfigError(f"params['{n}'] has shape {tuple(t.shape)}, the model's "
                                  f"parameter has {tuple(p.shape)}")
            out.append(t.detach().reshape(-1))
        return torch.cat(out)

    def _mask_vector(self, masks: Mapping[str, torch.Tensor],
                     named: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for n, p in named.items():
            m = masks.get(n)
            if m is None:
                parts.append(torch.ones(p.numel(), dtype=torch.bool))
                continue
            if tuple(m.shape) != tuple(p.shape):
                raise MaskError(f"mask for '{n}' has shape {tuple(m.shape)}, the parameter has "
                                f"{tuple(p.shape)}")
            parts.append(m.detach().to("cpu", torch.bool).reshape(-1))
        unknown = [n for n in masks if n not in named]
        if unknown:
            raise MaskError(f"mask for '{unknown[0]}' matches no parameter of the model")
        return torch.cat(parts)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """A full parameter vector -> {name: tensor} views."""
        chunks = torch.split(theta, self.sizes)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes)}

    def embed(self, u: torch.Tensor) -> torch.Tensor:
        """Operator coordinates (..., dim) -> full parameter coordinates (..., full_dim)."""
        if self.free_index is None:
            return u
        out = u.new_zeros(*u.shape[:-1], self.full_dim)
        out[..., self.free_index] = u
        return out

    def restrict(self, v: torch.Tensor) -> torch.Tensor:
        """Full parameter coordinates (..., full_dim) -> operator coordinates (..., dim)."""
        return v if self.free_index is None else v[..., self.free_index]

    # ------------------------------------------------------------------ loss and products

    def _chunks(self):
        for i in range(0, self.n, self.batch_size):
            xb, yb = self.x[i : i + self.batch_size], self.y[i : i + self.batch_size]
            yield xb, yb, xb.shape[0] / self.n

    def _outputs(self, theta: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, (self.unflatten(theta), self.buffers), (xb,))

    def loss(self) -> float:
        """The mean loss at the point."""
        with torch.no_grad():
            return float(sum(w * self.loss_fn(self._outputs(self.theta, xb), yb)
                             for xb, yb, w in self._chunks()))

    def gradient(self) -> torch.Tensor:
        """The gradient at the point, in operator coordinates."""
        g = torch.zeros_like(self.theta)
        for xb, yb, w in self._chunks():
            g += w * grad(lambda t, xb=xb, yb=yb: self.loss_fn(self._outputs(t, xb), yb))(
                self.theta)
        return self.restrict(g)

    def _hvp_chunk(self, V: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        def f(t: torch.Tensor) -> torch.Tensor:
            return self.loss_fn(self._outputs(t, xb), yb)

        g = grad(f)

        def one(v: torch.Tensor) -> torch.Tensor:
            return jvp(g, (self.theta,), (v,))[1]

        return vmap(one)(V)

    def _gnvp_chunk(self, V: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        def out(t: torch.Tensor) -> torch.Tensor:
            return self._outputs(t, xb)

        z, pullback = vjp(out, self.theta)
        z = z.detach()
        gz = grad(lambda zz: self.loss_fn(zz, yb))

        def one(v: torch.Tensor) -> torch.Tensor:
            jv = jvp(out, (self.theta,), (v,))[1]
            hjv = jvp(gz, (z,), (jv,))[1]
            return pullback(hjv)[0]

        return vmap(one)(V)

    def _products(self, V: torch.Tensor) -> torch.Tensor:
        """Rows of V (m, full_dim) -> rows of (operator in full coordinates) @ v."""
        out = torch.zeros_like(V)
        for xb, yb, w in self._chunks():
            if self.kind == "hessian":
                out += w * self._hvp_chunk(V, xb, yb)
            elif self.kind == "gauss-newton":
                out += w * self._gnvp_chunk(V, xb, yb)
            else:
                out += w * (self._hvp_chunk(V, xb, yb) - self._gnvp_chunk(V, xb, yb))
        return out

    def matmat(self, V: torch.Tensor, *, block: int | None = None) -> torch.Tensor:
        """Products with the columns of V (dim, m) -> (dim, m), `block` columns per vmap call."""
        if V.ndim != 2 or V.shape[0] != self.dim:
            raise ConfigError(f"matmat needs a ({self.dim}, m) matrix, got {tuple(V.shape)}")
        dtype_in = V.dtype
        rows = V.T.to(device=self.device, dtype=self.dtype)
        m = rows.shape[0]
        block = m if block is None else max(1, int(block))
        outs = []
        for i in range(0, m, block):
            part = self.embed(rows[i : i + block])
            with torch.no_grad():
                outs.append(self.restrict(self._products(part)))
        self.n_products += m
        return torch.cat(outs).T.to(dtype_in)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """One product: v (dim,) -> (dim,)."""
        if v.ndim != 1 or v.shape[0] != self.dim:
            raise ConfigError(f"matvec needs a vector of length {self.dim}, got "
                              f"{tuple(v.shape)}")
        return self.matmat(v[:, None])[:, 0]

    def __matmul__(self, other: torch.Tensor) -> torch.Tensor:
        return self.matvec(other) if other.ndim == 1 else self.matmat(other)

    def with_kind(self, kind: str) -> HessianOperator:
        """The same point, data and subspace with another kind (hessian, gauss-newton,
        residual); the product counter starts at zero."""
        if kind not in KINDS:
            raise ConfigError(f"kind must be one of {', '.join(KINDS)}; got '{kind}'")
        other = object.__new__(HessianOperator)
        other.__dict__.update(self.__dict__)
        other.kind = kind
        other.n_products = 0
        return other

    # ------------------------------------------------------------------ dense and SciPy

    def dense(self, *, max_bytes: int = DEFAULT_MAX_BYTES, block: int = 64) -> torch.Tensor:
        """The exact (dim, dim) matrix in float64, symmetrised, from dim products.

        Refuses with ConfigError naming the size when the estimate exceeds `max_bytes`.
        """
        need = exact_memory_bytes(self.dim)
        if need > max_bytes:
            raise ConfigError(
                f"exact mode on {self.dim:,} parameters needs about {_human_bytes(need)} "
                f"(limit {_human_bytes(max_bytes)}); use the iterative top-k or density "
                "instead, or a smaller model"
            )
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        h = self.matmat(eye, block=block).to(torch.float64).cpu()
        return 0.5 * (h + h.T)

    def as_linear_operator(self):
        """A SciPy LinearOperator (float64 NumPy in and out) over this operator."""
        import numpy as np
        from scipy.sparse.linalg import LinearOperator

        def mv(v: np.ndarray) -> np.ndarray:
            t = torch.as_tensor(np.asarray(v, dtype=np.float64).reshape(-1))
            return self.matvec(t).to(torch.float64).cpu().numpy()

        def mm(v: np.ndarray) -> np.ndarray:
            t = torch.as_tensor(np.asarray(v, dtype=np.float64))
            return self.matmat(t).to(torch.float64).cpu().numpy()

        return LinearOperator((self.dim, self.dim), matvec=mv, matmat=mm, rmatvec=mv,
                              dtype=np.float64)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary of what the operator is."""
        return {"kind": self.kind, "subspace": self.subspace, "dim": self.dim,
                "full_dim": self.full_dim, "n_samples": self.n,
                "dtype": str(self.dtype).replace("torch.", "")}


def hessian_vector_product(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor,
    loss_fn: LossFn | None = None, **options: Any,
) -> torch.Tensor:
    """One full-batch Hessian-vector product H v at the model's parameters (see
    HessianOperator for the options); v may be (dim,) or (dim, m)."""
    op = HessianOperator(model, x, y, loss_fn, **options)
    return op @ v


def exact_hessian(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn | None = None,
    *, max_bytes: int = DEFAULT_MAX_BYTES, **options: Any,
) -> torch.Tensor:
    """The dense float64 Hessian (or G or H - G with kind=...) for a small model."""
    return HessianOperator(model, x, y, loss_fn, **options).dense(max_bytes=max_bytes)


def parameter_count_limit(max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """The largest dimension exact mode accepts under `max_bytes`."""
    return int(math.isqrt(max_bytes // exact_memory_bytes(1)))


__all__ = ["HessianOperator", "KINDS", "SUBSPACES", "exact_hessian", "exact_memory_bytes",
           "hessian_vector_product", "parameter_count_limit"]
