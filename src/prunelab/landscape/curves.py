"""Bezier curves between two parameter sets (Garipov et al. 2018), in a dense or a sparse
subspace, trained so that the loss stays low all along the curve.

phi(t) = sum_j C(n, j) t^j (1 - t)^(n - j) theta_j, with theta_0 and theta_n the fixed endpoints
and the inner control points started on the straight line between them. Training draws one
t ~ U(0, 1) per minibatch and minimises cross-entropy + (weight_decay / 2) ||phi(t)||^2 over
the inner control points only. In the `sparse` subspace the inner control points are confined
to a mask (the endpoints' common mask, their union, or a given one), so phi(t) never leaves
mask_A | mask_B | mask; in the `dense` subspace they are free.

Control points are held as flat vectors (one per point) so phi(t) is one small matrix product;
the model is only used through `torch.func.functional_call` on a private copy.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from prunelab import atomic
from prunelab.data import DataSource, split_tensors
from prunelab.errors import ConfigError, DataError, MaskError, check_range
from prunelab.landscape.paths import (
    DataLike,
    Endpoint,
    EndpointLike,
    PathEvaluator,
    PathResult,
    check_endpoints,
    endpoint_masks,
    float_dtype,
    load_endpoint,
    resolve_model,
)
from prunelab.masks import Masks, validate_masks

SUBSPACES = ("dense", "sparse")
MASK_MODES = ("intersection", "union")
DEFAULT_CURVE_POINTS = 61
FORMAT = "prunelab-bezier-curve/1"


def bernstein(degree: int, t: float | Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Bernstein coefficients C(n, j) t^j (1 - t)^(n - j), shape (len(t), degree + 1), computed
    in float64 (rows are exactly one-hot at t = 0 and t = 1)."""
    _check_degree(degree)
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1)
    j = torch.arange(degree + 1, dtype=torch.float64)
    binom = torch.tensor([math.comb(degree, k) for k in range(degree + 1)], dtype=torch.float64)
    return binom * t.pow(j) * (1.0 - t).pow(degree - j)


def _check_degree(degree: int) -> None:
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise ConfigError(f"degree must be an integer >= 1 (1: the straight line, 2: quadratic, "
                          f"3: cubic), got {degree!r}")


def combine_masks(a: Masks, b: Masks, mode: str) -> Masks:
    """The endpoints' common mask ('intersection') or their 'union'; a parameter masked in only
    one of them counts as fully kept in the other."""
    if mode not in MASK_MODES:
        raise ConfigError(f"mask must be one of {', '.join(MASK_MODES)} or a masks dict; "
                          f"got '{mode}'")
    out: Masks = {}
    for name in dict.fromkeys([*a, *b]):
        ma, mb = a.get(name), b.get(name)
        if ma is not None and mb is not None and ma.shape != mb.shape:
            raise MaskError(f"mask for '{name}' has shape {tuple(ma.shape)} at endpoint A and "
                            f"{tuple(mb.shape)} at endpoint B")
        ma = ma if ma is not None else torch.ones_like(mb)
        mb = mb if mb is not None else torch.ones_like(ma)
        out[name] = (ma & mb) if mode == "intersection" else (ma | mb)
    return out


class BezierCurve(nn.Module):
    """A Bezier curve of any degree >= 1 through parameter space; the inner control points are
    the trainable parameters of this module."""

    def __init__(
        self,
        names: Sequence[str],
        shapes: Sequence[Sequence[int]],
        control: Sequence[torch.Tensor],
        *,
        subspace: str = "dense",
        masks: Masks | None = None,
        mask_mode: str | None = None,
        buffers: Mapping[str, torch.Tensor] | None = None,
    ):
        super().__init__()
        if len(control) < 2:
            raise ConfigError("a Bezier curve needs at least its two endpoints")
        _check_degree(len(control) - 1)
        if subspace not in SUBSPACES:
            raise ConfigError(f"subspace must be one of {', '.join(SUBSPACES)}; got '{subspace}'")
        if subspace == "sparse" and masks is None:
            raise MaskError("subspace 'sparse' needs masks")
        self.names = list(names)
        self.shapes = [tuple(int(s) for s in sh) for sh in shapes]
        self.sizes = [math.prod(sh) for sh in self.shapes]
        self.subspace, self.mask_mode = subspace, mask_mode
        self.masks = None if masks is None else {k: v.bool().clone() for k, v in masks.items()}
        self.extra_buffers = {k: v.detach().clone() for k, v in (buffers or {}).items()}
        dim = sum(self.sizes)
        for c in control:
            if c.shape != (dim,):
                raise ConfigError(f"control points must be flat vectors of length {dim}")
        dtype = float_dtype(control)  # the models' precision (float64 stays float64)
        self.register_buffer("start", control[0].detach().to(dtype).clone())
        self.register_buffer("end", control[-1].detach().to(dtype).clone())
        flat_mask = torch.ones(dim, dtype=dtype)
        if subspace == "sparse":
            offsets = dict(zip(self.names, self._offsets()))
            for name, m in self.masks.items():
                if name not in offsets:
                    raise MaskError(f"mask for '{name}' matches no parameter of the curve")
                lo, size, shape = offsets[name]
                if tuple(m.shape) != shape:
                    raise MaskError(f"mask for '{name}' has shape {tuple(m.shape)}, the "
                                    f"parameter has {shape}")
                flat_mask[lo:lo + size] = m.reshape(-1).to(dtype)
        self.register_buffer("flat_mask", flat_mask)
        self.inner = nn.ParameterList(
            [nn.Parameter(c.detach().to(dtype).clone() * flat_mask) for c in control[1:-1]]
        )

    def _offsets(self) -> list[tuple[int, int, tuple[int, ...]]]:
        out, lo = [], 0
        for size, shape in zip(self.sizes, self.shapes):
            out.append((lo, size, shape))
            lo += size
        return out

    # ------------------------------------------------------------------ construction

    @classmethod
    def between(
        cls,
        a: EndpointLike | Endpoint,
        b: EndpointLike | Endpoint,
        *,
        model: nn.Module | None = None,
        degree: int = 2,
        subspace: str = "dense",
        mask: str | Masks = "intersection",
        masks_a: Masks | None = None,
        masks_b: Masks | None = None,
    ) -> BezierCurve:
        """A curve between two parameter sets (dicts, models or run directories) with its inner
        control points evenly spaced on the straight line. For `sparse`, `mask` is
        'intersection' or 'union' of the endpoints' masks (from their runs, `masks_a/_b`, or
        read off their nonzero weights) or an explicit masks dict."""
        _check_degree(degree)
        if subspace not in SUBSPACES:
            raise ConfigError(f"subspace must be one of {', '.join(SUBSPACES)}; got '{subspace}'")
        end_a, end_b = load_endpoint(a, "endpoint A"), load_endpoint(b, "endpoint B")
        model = resolve_model(model, [end_a, end_b])
        check_endpoints(model, [end_a, end_b])
        names = [n for n, _ in model.named_parameters()]
        shapes = [tuple(p.shape) for _, p in model.named_parameters()]
        dtype = float_dtype(model.parameters())
        flat_a = torch.cat([end_a.state[n].detach().to(dtype).reshape(-1) for n in names])
        flat_b = torch.cat([end_b.state[n].detach().to(dtype).reshape(-1) for n in names])
        control = [flat_a + (j / degree) * (flat_b - flat_a) for j in range(1, degree)]
        control = [flat_a, *control, flat_b]
        masks, mode = None, None
        if subspace == "sparse":
            if isinstance(mask, str):
                for given in (masks_a, masks_b):
                    if given is not None:
                        validate_masks(model, given)
                ma = masks_a if masks_a is not None else endpoint_masks(end_a, model)
                mb = masks_b if masks_b is not None else endpoint_masks(end_b, model)
                masks, mode = combine_masks(ma, mb, mask), mask
            else:
                validate_masks(model, mask)
                masks, mode = dict(mask), "given"
        buffers = {n: end_a.state[n] for n, _ in model.named_buffers() if n in end_a.state}
        return cls(names, shapes, control, subspace=subspace, masks=masks, mask_mode=mode,
                   buffers=buffers)

    # ------------------------------------------------------------------ evaluation

    @property
    def degree(self) -> int:
        return len(self.inner) + 1

    def stacked(self) -> torch.Tensor:
        """All control points as rows (degree + 1, dim); differentiable in the inner ones."""
        inner = [p * self.flat_mask for p in self.inner]
        return torch.stack([self.start, *inner, self.end])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """A flat vector -> {parameter name: tensor view}."""
        parts = torch.split(flat, self.sizes)
        return {n: p.view(sh) for n, p, sh in zip(self.names, parts, self.shapes)}

    def flat_at(self, t: float) -> torch.Tensor:
        """phi(t) as a flat vector (differentiable in the inner control points)."""
        c = bernstein(self.degree, t)[0].to(self.start.dtype).to(self.start.device)
        return c @ self.stacked()

    def params_at(self, t: float) -> dict[str, torch.Tensor]:
        """phi(t) as a parameter dict (detached)."""
        with torch.no_grad():
            return {k: v.clone() for k, v in self.unflatten(self.flat_at(t)).items()}

    def control_points(self) -> list[dict[str, torch.Tensor]]:
        """The control points theta_0..theta_n as parameter dicts (detached copies)."""
        with torch.no_grad():
            return [{k: v.clone() for k, v in self.unflatten(row).items()}
                    for row in self.stacked()]

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> None:
        """Save control points, degree, subspace and mask atomically (a torch file)."""
        atomic.save_torch(path, {
            "format": FORMAT,
            "degree": self.degree,
            "subspace": self.subspace,
            "mask_mode": self.mask_mode,
            "names": self.names,
            "shapes": [list(s) for s in self.shapes],
            "control_points": [{k: v.cpu() for k, v in cp.items()}
                               for cp in self.control_points()],
            "masks": None if self.masks is None else {k: v.cpu() for k, v in self.masks.items()},
            "buffers": {k: v.cpu() for k, v in self.extra_buffers.items()},
        })

    @classmethod
    def load(cls, path: str | Path) -> BezierCurve:
        """Load a curve saved with `save`."""
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise DataError(f"curve file not found: {path}") from None
        except Exception as exc:
            raise DataError(f"cannot read curve file {path}: corrupt or not a curve "
                            f"({type(exc).__name__})") from None
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise DataError(f"{path} is not a prunelab Bezier curve file")
        names = blob["names"]
        dtype = float_dtype([cp[n] for cp in blob["control_points"] for n in names])
        control = [torch.cat([cp[n].to(dtype).reshape(-1) for n in names])
                   for cp in blob["control_points"]]
        return cls(names, blob["shapes"], control, subspace=blob["subspace"],
                   masks=blob["masks"], mask_mode=blob["mask_mode"], buffers=blob["buffers"])


def _train_tensors(data: DataLike | tuple[torch.Tensor, torch.Tensor]):
    if isinstance(data, DataSource):  # a streamed training split is held in memory, bounded
        return split_tensors(data, "train")
    if isinstance(data, tuple) and len(data) == 2:
        return data
    if isinstance(data, Mapping) and "train" in data:
        return data["train"]
    raise ConfigError("curve training needs a data source, (x, y) or a mapping with a 'train' "
                      "split")


def train_curve(
    curve: BezierCurve,
    model: nn.Module,
    data: DataLike | tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int = 10,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    batch_size: int = 128,
    seed: int = 0,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Train the inner control points in place: per minibatch one t ~ U(0, 1), loss =
    loss_fn(phi(t)) + weight_decay / 2 * ||phi(t)||^2, SGD with momentum. Returns the mean
    training loss (without the penalty) per epoch. `model` is only read (a private copy runs)."""
    check_range("epochs", epochs, 0)
    check_range("lr", lr, 0.0, low_inclusive=False)
    check_range("momentum", momentum, 0.0, 1.0, high_inclusive=False)
    check_range("weight_decay", weight_decay, 0.0)
    check_range("batch_size", batch_size, 1)
    loss_fn = loss_fn or F.cross_entropy
    check_endpoints(model, [Endpoint(curve.control_points()[0], name="the curve")])
    x, y = _train_tensors(data)
    device = curve.start.device
    net = copy.deepcopy(model).to(device).train()
    for p in net.parameters():
        p.requires_grad_(False)
    buffers = {k: v.to(device).clone() for k, v in curve.extra_buffers.items()}
    history: list[dict[str, Any]] = []
    if curve.degree < 2 or epochs == 0:
        return history
    opt = torch.optim.SGD(list(curve.inner), lr=lr, momentum=momentum)
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    steps = max(1, math.ceil(n / batch_size))
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=epochs * steps, desc=f"bezier-{curve.degree}", unit="step", leave=False)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=gen)
        running, seen = 0.0, 0
        for b in range(steps):
            idx = order[b * batch_size:(b + 1) * batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            if xb.is_floating_point():
                xb = xb.to(curve.start.dtype)
            t = float(torch.rand((), generator=gen))
            flat = curve.flat_at(t)
            out = functional_call(net, (curve.unflatten(flat), buffers), (xb,))
            loss = loss_fn(out, yb)
            total = loss + 0.5 * weight_decay * flat.pow(2).sum() if weight_decay else loss
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            if curve.subspace == "sparse":
                with torch.no_grad():
                    for p in curve.inner:
                        p.mul_(curve.flat_mask)
            running += float(loss.detach()) * xb.shape[0]
            seen += xb.shape[0]
            if bar is not None:
                bar.update(1)
        mean = running / max(seen, 1)
        if not math.isfinite(mean):
            raise ConfigError(f"curve training diverged (loss {mean}) in epoch {epoch}; lower "
                              "the learning rate")
        history.append({"epoch": epoch, "train_loss": mean})
        if log is not None:
            log(f"curve epoch {epoch}/{epochs} loss {mean:.4f}")
    if bar is not None:
        bar.close()
    return history


def evaluate_curve(
    curve: BezierCurve,
    model: nn.Module,
    data: DataLike,
    *,
    points: int = DEFAULT_CURVE_POINTS,
    splits: Sequence[str] = ("train", "test"),
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 2048,
    points_per_batch: int = 4,
    bn: str = "recompute",
    bn_samples: int | None = None,
) -> PathResult:
    """Loss and accuracy at `points` evenly spaced t in [0, 1] (default 61), batched over t."""
    check_range("points", points, 2)
    ts = [i / (points - 1) for i in range(points)]
    control = curve.control_points()
    for cp in control:
        cp.update({k: v for k, v in curve.extra_buffers.items()})
    evaluator = PathEvaluator(model, control, loss_fn=loss_fn, batch_size=batch_size,
                              points_per_batch=points_per_batch, bn=bn, bn_samples=bn_samples,
                              device=curve.start.device)
    check_endpoints(evaluator.model, [Endpoint(control[0], name="the curve")])
    metrics = evaluator.evaluate(bernstein(curve.degree, ts), data, splits)
    return PathResult(ts, metrics, f"bezier-{curve.degree}-{curve.subspace}",
                      {"degree": curve.degree, "subspace": curve.subspace,
                       "mask_mode": curve.mask_mode})


def sparse_support_ok(curve: BezierCurve, ts: Sequence[float], allowed: Masks) -> bool:
    """True when phi(t) is zero outside `allowed` for every t in `ts` (a check for reports)."""
    for t in ts:
        params = curve.params_at(t)
        for name, m in allowed.items():
            if bool((params[name][~m.to(params[name].device)] != 0).any()):
                return False
    return True
