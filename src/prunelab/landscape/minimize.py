"""Drive a model to a genuine minimum of its full-batch training loss before measuring it.

Curvature measured away from a minimum is not the curvature of a minimum: plain gradient
descent at a fixed step size settles at the edge of stability (top eigenvalue ~ 2 / lr, the
gradient norm stalls) and its Hessian mixes in the descent dynamics. `converge` runs two
phases on the full batch:

1. gradient descent with step size `lr_fraction / lambda_max` (capped at `lr_max`), where
   lambda_max (the top Hessian eigenvalue) is measured by Lanczos at the start, every
   `sharpness_every` steps and when the loss rises, so the step stays a fixed factor below the
   stability limit 2 / lambda_max however the curvature grows (the 1/L rule for
   lr_fraction = 1);
2. a finish until the gradient norm is at most `tol`: L-BFGS with a strong-Wolfe line search
   (`torch.optim.LBFGS`, restarted from a fresh history when it stalls), or, for small models,
   damped saddle-free Newton steps -(|H| + mu I)^-1 g on the exact Hessian (mu adapted so that
   every accepted step lowers the loss).

The gradient norm is measured on a fresh full-batch gradient after each phase step, and the
run says `converged` only when that norm is below `tol`. Train in float64 (`model.double()`)
when the model is small: float32 gradients of a near-zero loss bottom out near 1e-6.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from prunelab.errors import ConfigError, MaskError, check_range
from prunelab.landscape.hessian import DEFAULT_MAX_BYTES

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
FINISHES = ("lbfgs", "newton", "none")


@dataclass
class ConvergeResult:
    """Where `converge` stopped: the loss and gradient norm there (a fresh full-batch
    measurement), the steps of each phase, the step sizes and sharpness it used, and a
    history of (phase, step, loss, grad_norm) rows."""

    converged: bool
    loss: float
    grad_norm: float
    tol: float
    gd_steps: int
    finish: str
    finish_iterations: int
    function_evals: int
    lr: float
    sharpness: list[float]
    gd_loss_rises: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    stop_reason: str = ""

    @property
    def steps(self) -> int:
        """Gradient-descent steps plus finishing iterations."""
        return self.gd_steps + self.finish_iterations

    def to_dict(self) -> dict[str, Any]:
        return {"converged": self.converged, "loss": self.loss, "grad_norm": self.grad_norm,
                "tol": self.tol, "gd_steps": self.gd_steps, "finish": self.finish,
                "finish_iterations": self.finish_iterations, "steps": self.steps,
                "function_evals": self.function_evals, "lr": self.lr,
                "sharpness": self.sharpness, "gd_loss_rises": self.gd_loss_rises,
                "stop_reason": self.stop_reason,
                "seconds": self.seconds, "history": self.history}


class _FullBatch:
    """Full-batch mean loss and gradient of a model (chunked for memory; masks zero the
    gradients of pruned entries so every step stays in the free subspace)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                 batch_size: int | None, masks: Mapping[str, torch.Tensor] | None):
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError("the model has no trainable parameters to minimise over")
        ref = self.params[0]
        self.x = x.to(ref.device, ref.dtype) if x.is_floating_point() else x.to(ref.device)
        self.y = y.to(ref.device)
        self.n = int(x.shape[0])
        if self.n == 0 or self.n != y.shape[0]:
            raise ConfigError(f"x and y must hold the same positive number of samples, got "
                              f"{x.shape[0]} and {y.shape[0]}")
        self.batch_size = self.n if batch_size is None else int(check_range(
            "batch_size", batch_size, 1))
        self.loss_fn = loss_fn
        named = dict(model.named_parameters())
        self.masks: dict[str, torch.Tensor] = {}
        for name, m in (masks or {}).items():
            if name not in named:
                raise MaskError(f"mask for '{name}' matches no parameter of the model")
            p = named[name]
            if tuple(m.shape) != tuple(p.shape):
                raise MaskError(f"mask for '{name}' has shape {tuple(m.shape)}, the "
                                  f"parameter has {tuple(p.shape)}")
            keep = m.to(p.device, torch.bool)
            with torch.no_grad():
                p.mul_(keep)
            self.masks[name] = keep
        self._masked = [(named[n], k) for n, k in self.masks.items()]
        self.evals = 0

    def loss_and_grad(self) -> float:
        """Sets .grad of every parameter to the full-batch gradient; returns the loss."""
        for p in self.params:
            p.grad = None
        total = 0.0
        for i in range(0, self.n, self.batch_size):
            xb, yb = self.x[i : i + self.batch_size], self.y[i : i + self.batch_size]
            part = self.loss_fn(self.model(xb), yb) * (xb.shape[0] / self.n)
            part.backward()
            total += float(part.detach())
        for p, keep in self._masked:
            p.grad.mul_(keep)
        self.evals += 1
        return total

    def grad_norm(self) -> float:
        return math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in self.params
                             if p.grad is not None))

    def sharpness(self, seed: int) -> float:
        """The top Hessian eigenvalue at the current parameters (Lanczos, 1e-3 relative)."""
        from scipy.sparse.linalg import ArpackError

        from prunelab.landscape.spectrum import top_eigenvalues

        try:
            return float(top_eigenvalues(self.operator(), 1, tol=1e-3, seed=seed).values[0])
        except ArpackError:  # H v = 0 for the start vector: a piecewise-linear loss
            return 0.0

    def operator(self):
        """The Hessian operator at the current parameters (the masks' free coordinates)."""
        from prunelab.landscape.hessian import HessianOperator

        return HessianOperator(self.model, self.x, self.y, self.loss_fn,
                               masks=self.masks or None,
                               subspace="sparse" if self.masks else "dense",
                               dtype=self.params[0].dtype, batch_size=self.batch_size)


def converge(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn | None = None,
    *,
    tol: float = 1e-4,
    gd_steps: int = 2000,
    lr: float | None = None,
    lr_fraction: float = 1.0,
    lr_max: float = 0.1,
    sharpness_every: int = 250,
    finish: str = "lbfgs",
    finish_iterations: int = 2000,
    lbfgs_block: int = 25,
    history_size: int = 100,
    record_every: int = 50,
    masks: Mapping[str, torch.Tensor] | None = None,
    batch_size: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    seed: int = 0,
) -> ConvergeResult:
    """Minimise the full-batch mean loss of `model` on (x, y) in place: gradient descent at a
    step size a fixed factor below the stability limit, then a finish (L-BFGS or damped
    Newton) until the gradient norm is at most `tol`; returns where it stopped and whether it
    converged (`converged` is True only when the final gradient norm is at most `tol`).

    lr: a fixed gradient-descent step; by default `lr_fraction / lambda_max`, lambda_max
        re-measured every `sharpness_every` steps and when the loss rises (at most every
        `sharpness_every // 5` steps), and never above `lr_max` (the curvature at a small
        initialisation is tiny, and a step of 1 / lambda_max there overshoots). Rises are
        counted (`gd_loss_rises`): many of them at a step below 2 / lambda_max mean the loss
        is not smooth there (e.g. ReLU kinks).
    finish: "lbfgs", "newton" (exact Hessian: small models, `max_bytes` as in exact mode) or
        "none"; `finish_iterations` bounds its iterations, `gd_steps` the descent (0 skips).
    lbfgs_block: L-BFGS iterations between fresh gradient-norm checks.
    masks: {name: bool tensor}; pruned entries are zeroed and stay zero.
    The model is used in its current mode (call `model.eval()` first if it has dropout or
    batch norm) and dtype (call `model.double()` first for a float64 run).
    """
    check_range("tol", tol, 0.0, low_inclusive=False)
    check_range("gd_steps", gd_steps, 0)
    check_range("finish_iterations", finish_iterations, 0)
    check_range("lr_fraction", lr_fraction, 0.0, 2.0, low_inclusive=False,
                high_inclusive=False)
    check_range("lr_max", lr_max, 0.0, low_inclusive=False)
    check_range("sharpness_every", sharpness_every, 1)
    check_range("lbfgs_block", lbfgs_block, 1)
    check_range("record_every", record_every, 1)
    if lr is not None:
        check_range("lr", lr, 0.0, low_inclusive=False)
    if finish not in FINISHES:
        raise ConfigError(f"finish must be one of {', '.join(FINISHES)}; got '{finish}'")
    start = time.perf_counter()
    fb = _FullBatch(model, x, y, loss_fn or F.cross_entropy, batch_size, masks)
    if finish == "newton" and len(fb.params) != len(list(model.parameters())):
        raise ConfigError("finish 'newton' needs every parameter trainable (the Hessian is "
                          "over all of them); use finish 'lbfgs'")
    history: list[dict[str, Any]] = []

    def record(phase: str, step: int, loss: float, gnorm: float, **extra: Any) -> None:
        history.append({"phase": phase, "step": step, "loss": loss, "grad_norm": gnorm,
                        **extra})

    loss = fb.loss_and_grad()
    gnorm = fb.grad_norm()
    record("start", 0, loss, gnorm)
    gd = _descend(fb, loss, gnorm, tol=tol, steps=gd_steps, lr=lr, lr_fraction=lr_fraction,
                  lr_max=lr_max, sharpness_every=sharpness_every, record=record,
                  record_every=record_every, seed=seed)
    loss, gnorm = gd["loss"], gd["grad_norm"]
    done, reason = 0, ""
    if gnorm > tol and finish_iterations and finish == "lbfgs":
        loss, gnorm, done, reason = _lbfgs(fb, loss, gnorm, tol=tol,
                                           iterations=finish_iterations, block=lbfgs_block,
                                           history_size=history_size, record=record,
                                           step0=gd["steps"])
    elif gnorm > tol and finish_iterations and finish == "newton":
        loss, gnorm, done, reason = _newton(fb, loss, gnorm, tol=tol,
                                            iterations=finish_iterations, record=record,
                                            step0=gd["steps"], max_bytes=max_bytes)
    converged = gnorm <= tol
    if converged:
        reason = "tolerance reached"
    elif not reason:
        reason = "iteration budget spent"
    for p in fb.params:
        p.grad = None
    return ConvergeResult(converged, loss, gnorm, float(tol), gd["steps"], finish, done,
                          fb.evals, gd["lr"], gd["sharpness"], gd["rises"], history,
                          time.perf_counter() - start, reason)


def _descend(fb: _FullBatch, loss: float, gnorm: float, *, tol: float, steps: int,
             lr: float | None, lr_fraction: float, lr_max: float, sharpness_every: int,
             record: Callable[..., None], record_every: int, seed: int) -> dict[str, Any]:
    """Phase 1: full-batch gradient descent at min(lr_max, lr_fraction / lambda_max)."""
    sharp: list[float] = []
    step_size = math.nan if lr is None else float(lr)
    done = rises = 0
    prev_loss, measured_at = loss, -math.inf
    for step in range(1, steps + 1):
        if gnorm <= tol:
            break
        rose = loss > prev_loss
        rises += rose
        since = step - measured_at
        if lr is None and (since >= sharpness_every
                           or (rose and since >= max(1, sharpness_every // 5))):
            lam = fb.sharpness(seed)  # functional: leaves the gradients in place
            sharp.append(lam)
            step_size = min(lr_max, lr_fraction / lam) if lam > 0 else lr_max
            measured_at = step
        with torch.no_grad():
            for p in fb.params:
                p.sub_(step_size * p.grad)
        prev_loss = loss
        loss = fb.loss_and_grad()
        gnorm = fb.grad_norm()
        done = step
        if step % record_every == 0 or gnorm <= tol or step == steps:
            record("gd", step, loss, gnorm, lr=step_size)
    return {"loss": loss, "grad_norm": gnorm, "steps": done, "lr": step_size,
            "sharpness": sharp, "rises": rises}


def _lbfgs(fb: _FullBatch, loss: float, gnorm: float, *, tol: float, iterations: int,
           block: int, history_size: int, record: Callable[..., None],
           step0: int) -> tuple[float, float, int, str]:
    """Phase 2a: L-BFGS (strong Wolfe), a fresh history after a block without progress."""

    def closure() -> torch.Tensor:
        return torch.tensor(fb.loss_and_grad(), dtype=torch.float64)  # not float32: the line
        # search compares losses that differ in the 10th digit

    def new() -> torch.optim.LBFGS:
        eps = torch.finfo(fb.params[0].dtype).eps
        return torch.optim.LBFGS(fb.params, lr=1.0, max_iter=block, history_size=history_size,
                                 line_search_fn="strong_wolfe", tolerance_grad=0.0,
                                 tolerance_change=eps)

    opt, counted, done, stalls = new(), 0, 0, 0  # counted: this optimizer's iterations so far
    while gnorm > tol and done < iterations:
        before = loss
        opt.param_groups[0]["max_iter"] = min(block, iterations - done)
        opt.step(closure)
        n_iter = int(opt.state[fb.params[0]].get("n_iter", counted))
        done += max(n_iter - counted, 1)
        counted = n_iter
        loss = fb.loss_and_grad()
        gnorm = fb.grad_norm()
        record("lbfgs", step0 + done, loss, gnorm)
        if not math.isfinite(loss):
            return loss, gnorm, done, "loss became non-finite"
        if loss >= before and gnorm > tol:
            stalls += 1
            if stalls >= 3:
                return loss, gnorm, done, "L-BFGS stalled (no decrease after 3 restarts)"
            opt, counted = new(), 0
        else:
            stalls = 0
    return loss, gnorm, done, ""


def _newton(fb: _FullBatch, loss: float, gnorm: float, *, tol: float, iterations: int,
            record: Callable[..., None], step0: int,
            max_bytes: int) -> tuple[float, float, int, str]:
    """Phase 2b: damped saddle-free Newton, theta <- theta - V (|Lambda| + mu)^-1 V^T g on the
    exact Hessian H = V Lambda V^T; mu x10 until the loss drops (or, within rounding of the
    loss, the gradient norm does), then mu / 3."""
    params = list(fb.model.parameters())
    mu: float | None = None
    for it in range(1, iterations + 1):
        op = fb.operator()
        g = op.gradient().to(torch.float64)
        vals, vecs = torch.linalg.eigh(op.dense(max_bytes=max_bytes))
        scale = float(vals.abs().max()) or 1.0
        mu = 1e-6 * scale if mu is None else max(mu, 1e-12 * scale)
        coeff = vecs.T @ g
        theta = torch.nn.utils.parameters_to_vector(params).detach().clone()
        while True:
            step = -(vecs @ (coeff / (vals.abs() + mu)))
            full = op.embed(step.to(theta.dtype))
            torch.nn.utils.vector_to_parameters(theta + full, params)
            new_loss = fb.loss_and_grad()
            # near a minimum the loss change falls under rounding: then a smaller gradient
            # decides
            tie = new_loss <= loss + 4 * torch.finfo(theta.dtype).eps * abs(loss)
            if new_loss < loss or (tie and fb.grad_norm() < gnorm):
                mu /= 3
                break
            mu *= 10
            if mu > 1e6 * scale:
                torch.nn.utils.vector_to_parameters(theta, params)
                fb.loss_and_grad()
                return loss, gnorm, it - 1, ("Newton stuck: no damping lowers the loss (a "
                                             "non-smooth point, e.g. a ReLU kink)")
        loss, gnorm = new_loss, fb.grad_norm()
        record("newton", step0 + it, loss, gnorm, damping=mu)
        if gnorm <= tol:
            return loss, gnorm, it, ""
    return loss, gnorm, iterations, ""


__all__ = ["FINISHES", "ConvergeResult", "converge"]
