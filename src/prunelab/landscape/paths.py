"""Loss and accuracy along paths in parameter space: straight lines between two parameter sets
(with extrapolation), and the shared engine that evaluates any path of the form
phi(t) = sum_j c_j(t) theta_j (lines, Bezier curves) at many points at once.

The model is never mutated: a private copy is evaluated with `torch.func.functional_call`, and
the points of the path are batched with `torch.func.vmap`. For `nn.Sequential` models whose
first parameterised layer is a Linear or Conv layer (and that hold no buffers), that layer is
linear in its parameters, so its output on phi(t) is sum_j c_j(t) f(x; theta_j): it is computed
once per control point instead of once per point of the path (exact in exact arithmetic; the
rounding differs by a few ulp). On an MNIST MLP this removes most of the cost of a path.

BatchNorm policy (`bn`): "keep" interpolates the stored running statistics along with the
weights; "recompute" re-estimates them at every point from training batches (forward passes in
train mode on a copy of the model with reset statistics), as Garipov et al. do. Models without
BatchNorm are unaffected by the choice.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from prunelab.data import DataSource, split_tensors
from prunelab.errors import ConfigError, check_range
from prunelab.masks import Masks, masks_from_weights

Params = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
EndpointLike = Mapping[str, torch.Tensor] | str | Path | nn.Module
DataLike = DataSource | Mapping[str, tuple[torch.Tensor, torch.Tensor]]

BN_POLICIES = ("keep", "recompute")
DEFAULT_POINTS = 29
DEFAULT_RANGE = (-0.2, 1.2)
DEFAULT_TOLERANCE = 0.01  # monotone: no rise above 1% of L(0)


# ----------------------------------------------------------------------------- endpoints


@dataclass
class Endpoint:
    """One end of a path: its weights (and buffers), masks when known, and where it came from.
    `model` and `config` are set when it was loaded from a run directory."""

    state: Params
    masks: Masks | None = None
    model: nn.Module | None = field(default=None, repr=False)
    config: Any = field(default=None, repr=False)
    name: str = ""


def load_endpoint(obj: EndpointLike | Endpoint, name: str = "endpoint") -> Endpoint:
    """A parameter dict, an nn.Module or a run directory -> Endpoint (tensors detached, CPU
    copies for runs). Run directories bring their masks, model and config."""
    if isinstance(obj, Endpoint):
        return obj
    if isinstance(obj, (str, Path)):
        from prunelab.runs import load_run

        run = load_run(obj)
        state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        return Endpoint(state, run.masks, run.model, run.config, str(obj))
    if isinstance(obj, nn.Module):
        return Endpoint({k: v.detach().clone() for k, v in obj.state_dict().items()},
                        None, obj, None, name)
    if isinstance(obj, Mapping):
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise ConfigError(f"{name}: value of '{bad[0]}' is not a tensor (a parameter set "
                              "maps parameter names to tensors)")
        return Endpoint({k: v.detach() for k, v in obj.items()}, None, None, None, name)
    raise ConfigError(f"{name} must be a parameter dict, an nn.Module or a run directory, "
                      f"got {type(obj).__name__}")


def check_endpoints(model: nn.Module, ends: Sequence[Endpoint]) -> None:
    """Raise ConfigError naming the first parameter that an endpoint lacks, has in excess or
    holds with another shape than the model (endpoints must share the model's architecture)."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    for end in ends:
        for n, p in params.items():
            if n not in end.state:
                raise ConfigError(f"{end.name} has no parameter '{n}': the endpoints must come "
                                  "from the same architecture as the model")
            if tuple(end.state[n].shape) != tuple(p.shape):
                raise ConfigError(
                    f"parameter '{n}' has shape {tuple(end.state[n].shape)} in {end.name} but "
                    f"{tuple(p.shape)} in the model: the endpoints come from different "
                    "architectures"
                )
        extra = [k for k in end.state if k not in params and k not in buffers]
        if extra:
            raise ConfigError(f"{end.name} has parameter '{extra[0]}' that the model lacks: "
                              "the endpoints come from different architectures")
    for i, a in enumerate(ends):
        for b in ends[i + 1:]:
            for n in buffers:
                if n in a.state and n in b.state and a.state[n].shape != b.state[n].shape:
                    raise ConfigError(f"buffer '{n}' has shape {tuple(a.state[n].shape)} in "
                                      f"{a.name} but {tuple(b.state[n].shape)} in {b.name}")


def resolve_model(model: nn.Module | None, ends: Sequence[Endpoint]) -> nn.Module:
    """The model to evaluate: the given one, else the first endpoint's (from its run)."""
    if model is not None:
        return model
    for end in ends:
        if end.model is not None:
            return end.model
    raise ConfigError("a model is needed to evaluate parameter dicts: pass model=... "
                      "(or give run directories)")


def endpoint_masks(end: Endpoint, model: nn.Module) -> Masks:
    """The endpoint's masks: from its run, else read off its weights (nonzero prunable
    weights)."""
    if end.masks is not None:
        return {k: v.bool() for k, v in end.masks.items()}
    probe = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in probe.named_parameters():
            p.copy_(end.state[n])
    return masks_from_weights(probe)


# ----------------------------------------------------------------------------- path metrics


def _unit_interval(ts: Sequence[float], losses: Sequence[float]) -> tuple[list[float], list[float]]:
    pts = sorted((float(t), float(v)) for t, v in zip(ts, losses) if 0.0 <= t <= 1.0)
    if not pts or pts[0][0] != 0.0 or pts[-1][0] != 1.0:
        raise ConfigError("a barrier or monotonicity test needs the path evaluated at t=0 and "
                          "t=1 exactly")
    return [p[0] for p in pts], [p[1] for p in pts]


def barrier_height(ts: Sequence[float], losses: Sequence[float]) -> float:
    """B = max over t in [0, 1] of L(phi(t)) - ((1 - t) L(0) + t L(1)); 0 for a convex path."""
    t, v = _unit_interval(ts, losses)
    la, lb = v[0], v[-1]
    return max(vi - ((1.0 - ti) * la + ti * lb) for ti, vi in zip(t, v))


def max_rise(ts: Sequence[float], losses: Sequence[float]) -> float:
    """The largest increase of the loss over t in [0, 1] above its running minimum (0 when the
    loss never goes up from A to B)."""
    _, v = _unit_interval(ts, losses)
    best, rise = v[0], 0.0
    for vi in v:
        rise = max(rise, vi - best)
        best = min(best, vi)
    return rise


def is_monotone(ts: Sequence[float], losses: Sequence[float],
                tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """True when the loss never rises by more than `tolerance` x L(0) over t in [0, 1]."""
    check_range("tolerance", tolerance, 0.0)
    _, v = _unit_interval(ts, losses)
    return max_rise(ts, losses) <= tolerance * abs(v[0])


@dataclass
class PathResult:
    """Loss and accuracy at points t of a path, per split ("train", "test")."""

    t: list[float]
    metrics: dict[str, dict[str, list[float]]]
    kind: str = "line"
    info: dict[str, Any] = field(default_factory=dict)

    def loss(self, split: str = "train") -> list[float]:
        return self._get(split)["loss"]

    def accuracy(self, split: str = "train") -> list[float]:
        return self._get(split)["accuracy"]

    def _get(self, split: str) -> dict[str, list[float]]:
        if split not in self.metrics:
            raise ConfigError(f"split must be one of {', '.join(self.metrics)}; got '{split}'")
        return self.metrics[split]

    def at(self, t: float, split: str = "train") -> dict[str, float]:
        """Loss and accuracy at the evaluated point t (exact match)."""
        if t not in self.t:
            raise ConfigError(f"t={t} was not evaluated on this path")
        i = self.t.index(t)
        m = self._get(split)
        return {"loss": m["loss"][i], "accuracy": m["accuracy"][i]}

    def barrier(self, split: str = "train") -> float:
        return barrier_height(self.t, self.loss(split))

    def max_rise(self, split: str = "train") -> float:
        return max_rise(self.t, self.loss(split))

    def monotone(self, split: str = "train", tolerance: float = DEFAULT_TOLERANCE) -> bool:
        return is_monotone(self.t, self.loss(split), tolerance)

    def summary(self, tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
        """Endpoint losses, barrier, rise and monotonicity per split."""
        out: dict[str, Any] = {}
        for split in self.metrics:
            end_a, end_b = self.at(0.0, split), self.at(1.0, split)
            out[split] = {
                "loss_a": end_a["loss"], "loss_b": end_b["loss"],
                "accuracy_a": end_a["accuracy"], "accuracy_b": end_b["accuracy"],
                "max_loss": max(self.loss(split)[i] for i, t in enumerate(self.t)
                                if 0.0 <= t <= 1.0),
                "barrier": self.barrier(split), "max_rise": self.max_rise(split),
                "monotone": self.monotone(split, tolerance),
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "t": self.t, "metrics": self.metrics,
                "summary": self.summary(), "info": self.info}


# ----------------------------------------------------------------------------- the engine


def float_dtype(tensors: Sequence[torch.Tensor] | Any) -> torch.dtype:
    """The floating dtype all of `tensors`' floating ones promote to (float32 when there are
    none): paths and curves compute in the models' own precision."""
    dtype = None
    for t in tensors:
        if t.is_floating_point():
            dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    return dtype or torch.float32


def _split_data(data: DataLike,
                splits: Sequence[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(data, DataSource):  # held in memory: a streamed split only when asked for
        table = {s: split_tensors(data, s) if s in splits else None for s in ("train", "test")}
    elif isinstance(data, Mapping):
        table = dict(data)
    else:
        raise ConfigError("data must be a data source (Dataset) or a mapping split -> (x, y)")
    unknown = [s for s in splits if s not in table]
    if unknown:
        raise ConfigError(f"split '{unknown[0]}' is not in the data; valid: {', '.join(table)}")
    return {s: table[s] for s in splits}


def _first_layer_split(model: nn.Module):
    """(prefix, first layer name, first layer, rest) when the fast first-layer path applies:
    a buffer-free nn.Sequential whose leading parameter-free children are followed by a Linear
    or Conv layer. None otherwise."""
    if not isinstance(model, nn.Sequential) or any(True for _ in model.buffers()):
        return None
    names = list(model._modules)
    for i, name in enumerate(names):
        mod = model._modules[name]
        if not any(True for _ in mod.parameters()):
            continue
        if type(mod) not in (nn.Linear, nn.Conv1d, nn.Conv2d) or i == len(names) - 1:
            return None
        return model[:i], name, mod, model[i + 1:]
    return None


class PathEvaluator:
    """Evaluates phi = sum_j c_j theta_j for many coefficient rows c at once on a private copy
    of `model` (eval mode), in chunks of `batch_size` samples and `points_per_batch` points, in
    the model's floating dtype (floating inputs are cast to it batch by batch)."""

    def __init__(
        self,
        model: nn.Module,
        control: Sequence[Params],
        *,
        loss_fn: LossFn | None = None,
        batch_size: int = 2048,
        points_per_batch: int = 4,
        bn: str = "recompute",
        bn_samples: int | None = None,
        fast_first_layer: bool = True,
        device: torch.device | str | None = None,
    ):
        check_range("batch_size", batch_size, 1)
        check_range("points_per_batch", points_per_batch, 1)
        if bn not in BN_POLICIES:
            raise ConfigError(f"bn must be one of {', '.join(BN_POLICIES)}; got '{bn}'")
        if bn_samples is not None:
            check_range("bn_samples", bn_samples, 1)
        if not control:
            raise ConfigError("a path needs at least one control point")
        if device is None:
            first = next(model.parameters(), None)
            device = first.device if first is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.model = copy.deepcopy(model).to(self.device).eval()
        self.dtype = float_dtype(self.model.parameters())
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.loss_fn = loss_fn or F.cross_entropy
        self.batch_size, self.points_per_batch = batch_size, points_per_batch
        self.bn, self.bn_samples = bn, bn_samples
        self.has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                          for m in self.model.modules())
        self.param_names = [n for n, _ in self.model.named_parameters()]
        buffers = dict(self.model.named_buffers())
        # Float buffers are interpolated like weights; others (counters) come from theta_0.
        self.float_buffers = [n for n, b in buffers.items()
                              if b.is_floating_point() and all(n in c for c in control)]
        self.fixed_buffers = {n: control[0].get(n, b).to(self.device)
                              for n, b in buffers.items() if n not in self.float_buffers}
        names = self.param_names + self.float_buffers
        self.stacked = {n: torch.stack([c[n].detach().to(self.device, self.dtype)
                                        if c[n].is_floating_point() else c[n].to(self.device)
                                        for c in control]) for n in names}
        self.split = _first_layer_split(self.model) if fast_first_layer else None

    def combine(self, coeffs: torch.Tensor, names: Sequence[str] | None = None) -> Params:
        """Stacked parameters {name: (P, *shape)} for coefficient rows `coeffs` (P, J)."""
        names = list(self.stacked) if names is None else names
        c = coeffs.to(self.device, self.dtype)
        return {n: torch.tensordot(c, self.stacked[n], dims=([1], [0])) for n in names}

    @torch.no_grad()
    def evaluate(self, coeffs: torch.Tensor, data: DataLike,
                 splits: Sequence[str] = ("train", "test"),
                 bn_data: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> dict[str, dict[str, list[float]]]:
        """Mean loss and accuracy at each coefficient row, per split, accumulated over sample
        chunks in the same order as `prunelab.train.evaluate`."""
        coeffs = torch.as_tensor(coeffs, dtype=torch.float64)
        if coeffs.dim() != 2 or coeffs.shape[1] != next(iter(self.stacked.values())).shape[0]:
            raise ConfigError(f"coefficients must have shape (points, {len(self.stacked)}) ")
        table = _split_data(data, splits)
        if self.has_bn and self.bn == "recompute":
            if bn_data is None:
                if "train" not in table and not isinstance(data, DataSource):
                    raise ConfigError("bn='recompute' needs training data (a 'train' split)")
                bn_data = split_tensors(data, "train") if isinstance(data, DataSource) \
                    else table["train"]
            return self._evaluate_recompute(coeffs, table, bn_data[0])
        chunks = [coeffs[i:i + self.points_per_batch]
                  for i in range(0, coeffs.shape[0], self.points_per_batch)]
        if self.split is not None:
            _, first_name, first, rest = self.split
            rest_names = [f"{first_name}.{k}" for k, _ in first.named_parameters()]
            rest_names = [n for n in self.param_names if n not in rest_names]
            chunk_params = [self.combine(c, rest_names) for c in chunks]
        else:
            chunk_params = [self.combine(c) for c in chunks]
        out: dict[str, dict[str, list[float]]] = {}
        for split, (x, y) in table.items():
            totals = [0.0] * coeffs.shape[0]
            correct = [0] * coeffs.shape[0]
            for i in range(0, x.shape[0], self.batch_size):
                xb = self._inputs(x[i:i + self.batch_size])
                yb = y[i:i + self.batch_size].to(self.device)
                pos = 0
                if self.split is not None:
                    z = self._first_layer_outputs(xb)
                for c, params in zip(chunks, chunk_params):
                    if self.split is not None:
                        logits = self._forward_rest(c, z, params)
                    else:
                        logits = self._forward_full(params, xb)
                    for k in range(logits.shape[0]):
                        totals[pos + k] += float(self.loss_fn(logits[k], yb)) * xb.shape[0]
                    correct_k = (logits.argmax(dim=-1) == yb).sum(dim=-1).tolist()
                    for k, v in enumerate(correct_k):
                        correct[pos + k] += int(v)
                    pos += logits.shape[0]
            n = max(x.shape[0], 1)
            out[split] = {"loss": [v / n for v in totals], "accuracy": [v / n for v in correct]}
        return out

    def _inputs(self, xb: torch.Tensor) -> torch.Tensor:
        if xb.is_floating_point():
            return xb.to(self.device, self.dtype)
        return xb.to(self.device)

    def _first_layer_outputs(self, xb: torch.Tensor) -> torch.Tensor:
        prefix, first_name, first, _ = self.split
        h = prefix(xb)
        zs = []
        for j in range(next(iter(self.stacked.values())).shape[0]):
            p = {k: self.stacked[f"{first_name}.{k}"][j] for k, _ in first.named_parameters()}
            zs.append(functional_call(first, p, (h,)))
        return torch.stack(zs)  # (J, n, ...)

    def _forward_rest(self, coeffs: torch.Tensor, z: torch.Tensor, params: Params) -> torch.Tensor:
        _, _, _, rest = self.split
        mixed = torch.tensordot(coeffs.to(self.device, self.dtype), z,
                                dims=([1], [0]))  # (P, n, ...)
        return vmap(lambda p, h: functional_call(rest, p, (h,)))(params, mixed)

    def _forward_full(self, params: Params, xb: torch.Tensor) -> torch.Tensor:
        fixed = self.fixed_buffers

        def one(p: Params) -> torch.Tensor:
            return functional_call(self.model, (p, fixed), (xb,))

        return vmap(one)(params)

    def _evaluate_recompute(self, coeffs: torch.Tensor, table, x_bn: torch.Tensor):
        """Point by point: load phi(t) into a scratch copy, re-estimate BatchNorm statistics
        from training batches in train mode, then evaluate in eval mode."""
        from prunelab.train import evaluate

        scratch = copy.deepcopy(self.model)
        bns = [m for m in scratch.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        x_bn = x_bn if self.bn_samples is None else x_bn[: self.bn_samples]
        out = {s: {"loss": [], "accuracy": []} for s in table}
        params = dict(scratch.named_parameters())
        for k in range(coeffs.shape[0]):
            point = self.combine(coeffs[k:k + 1])
            for n, p in params.items():
                p.copy_(point[n][0])
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the batches seen
            scratch.train()
            for i in range(0, x_bn.shape[0], self.batch_size):
                scratch(self._inputs(x_bn[i:i + self.batch_size]))
            scratch.eval()
            for s, (x, y) in table.items():
                x = x.to(self.dtype) if x.is_floating_point() else x
                ev = evaluate(scratch, x, y, self.batch_size, self.loss_fn)
                out[s]["loss"].append(ev["loss"])
                out[s]["accuracy"].append(ev["accuracy"])
        return out


# ----------------------------------------------------------------------------- lines


def line_points(points: int = DEFAULT_POINTS, lo: float = DEFAULT_RANGE[0],
                hi: float = DEFAULT_RANGE[1]) -> list[float]:
    """`points` evenly spaced coefficients in [lo, hi], snapped so that 0 and 1 are hit exactly
    (added when the grid misses them)."""
    check_range("points", points, 2)
    if not lo < hi:
        raise ConfigError(f"range must have LO < HI, got {lo} {hi}")
    if lo > 0.0 or hi < 1.0:
        raise ConfigError(f"range must contain [0, 1] (both endpoints), got [{lo}, {hi}]")
    step = (hi - lo) / (points - 1)
    ts = [lo + i * step for i in range(points)]
    ts = [0.0 if abs(t) < 1e-9 else 1.0 if abs(t - 1.0) < 1e-9 else round(t, 12) for t in ts]
    for end in (0.0, 1.0):
        if end not in ts:
            ts.append(end)
    return sorted(ts)


def interpolate(
    a: EndpointLike | Endpoint,
    b: EndpointLike | Endpoint,
    data: DataLike,
    *,
    model: nn.Module | None = None,
    points: int = DEFAULT_POINTS,
    t_range: tuple[float, float] = DEFAULT_RANGE,
    ts: Sequence[float] | None = None,
    splits: Sequence[str] = ("train", "test"),
    loss_fn: LossFn | None = None,
    batch_size: int = 2048,
    points_per_batch: int = 4,
    bn: str = "recompute",
    bn_samples: int | None = None,
    fast_first_layer: bool = True,
    device: torch.device | str | None = None,
) -> PathResult:
    """Loss and accuracy along w(t) = (1 - t) w_A + t w_B at `points` values of t in `t_range`
    (default -0.2..1.2, 29 points; 0 and 1 always included), for each split. Endpoints are
    parameter dicts, models or run directories; the model is never mutated."""
    end_a, end_b = load_endpoint(a, "endpoint A"), load_endpoint(b, "endpoint B")
    model = resolve_model(model, [end_a, end_b])
    check_endpoints(model, [end_a, end_b])
    if ts is None:
        ts = line_points(points, *t_range)
    else:
        ts = sorted(float(t) for t in ts)
    if any(not math.isfinite(t) for t in ts):
        raise ConfigError("path coefficients must be finite")
    evaluator = PathEvaluator(model, [end_a.state, end_b.state], loss_fn=loss_fn,
                              batch_size=batch_size, points_per_batch=points_per_batch, bn=bn,
                              bn_samples=bn_samples, fast_first_layer=fast_first_layer,
                              device=device)
    t = torch.tensor(ts, dtype=torch.float64)
    coeffs = torch.stack([1.0 - t, t], dim=1)
    metrics = evaluator.evaluate(coeffs, data, splits)
    return PathResult(list(ts), metrics, "line",
                      {"a": end_a.name, "b": end_b.name, "bn": bn,
                       "fast_first_layer": evaluator.split is not None})


def plot_path(ax: Any, result: PathResult, *, split: str = "train", metric: str = "loss",
              label: str | None = None, mark_barrier: bool = True, **style: Any) -> None:
    """Draw one path's loss (or accuracy) against t on a Matplotlib axis, marking t=0, 1; on
    a loss plot the barrier (`barrier_height`) is marked where it is reached: the chord
    between the endpoints' losses (dotted) and the gap from it to the path (a vertical bar
    labelled B)."""
    values = result.loss(split) if metric == "loss" else result.accuracy(split)
    line = ax.plot(result.t, values, label=label or f"{result.kind} ({split})", **style)
    for end in (0.0, 1.0):
        ax.axvline(end, color="0.8", lw=0.8, zorder=0)
    ax.set(xlabel="t", ylabel=f"{split} {metric}")
    if metric == "loss" and mark_barrier:
        try:
            ts, vs = _unit_interval(result.t, values)
        except ConfigError:  # not evaluated at both endpoints: no barrier to mark
            return
        gaps = [v - ((1.0 - s) * vs[0] + s * vs[-1]) for s, v in zip(ts, vs)]
        i = max(range(len(gaps)), key=gaps.__getitem__)
        color = line[0].get_color()
        ax.plot([0.0, 1.0], [vs[0], vs[-1]], ls=":", lw=0.8, color=color)
        if gaps[i] > 0:
            ax.plot([ts[i], ts[i]], [vs[i] - gaps[i], vs[i]], lw=2.0, color=color, alpha=0.6)
            ax.annotate(f"B={gaps[i]:.3g}", (ts[i], vs[i]), textcoords="offset points",
                        xytext=(3, 3), fontsize=7, color=color)
