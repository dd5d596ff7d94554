"""Stochastic multi-gradient descent (SMGD) for (f1, f2) = (CE + L2 of the conv kernels,
l1 of the dense kernels), as in Reiners et al.

Per minibatch: g1 = grad f1 (one backward pass through the network) and g2 = grad f2 (a second
backward pass, through the l1 term only); the min-norm element of their convex hull is
c1 g1 + (1 - c1) g2 with c1 = <g2 - g1, g2> / ||g2 - g1||^2 clipped to [0, 1] (c1 = 1/2 when
g1 = g2). The step goes along -(c1 g1 + (1 - c1) g2): a common descent direction of both
objectives, zero only at a Pareto-stationary point, so SMGD reaches one Pareto point without a
preference weight.

Update rules (`optimizer`), both on the combined direction d = c1 g1 + (1 - c1) g2 of the raw
stochastic gradients, as the authors combine them:
- "sgd": heavy-ball momentum, v <- mu v + d, w <- w - lr v.
- "adam" (`adam_combination="gradients"`, the default): an Adam step on d (moments of d,
  bias-corrected).
- "adam" with `adam_combination="directions"` (before issue 20.6f the only Adam variant):
  separate Adam moments per objective (m_k, v_k from g_k) give the normalised directions
  u_k = m_k / (sqrt(v_k) + eps); c1 is the min-norm coefficient of (u1, u2) and the step is
  -lr (c1 u1 + (1 - c1) u2). Normalising first makes the l1 direction (sign(w) on every dense
  weight) as long as the CE one whatever their scales, which moves c1 and drove the dense
  weights to zero in the Pareto reproduction (11.35%, every weight pruned).

Intra-training pruning as in weighted-sum training: l1-set weights with |w| <= tau are zeroed
before training and after every step. Every step's c1 is logged (`SMGDResult.coefficients`).
Training loop is our own (the Trainer's single-loss protocol cannot express the update); it
reuses `prunelab.train.evaluate` and `lr_factor`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from prunelab.data import Dataset
from prunelab.errors import ConfigError, check_range
from prunelab.methods.biobjective import (
    conv_kernels,
    l1_norm,
    l1_parameters,
    l2_half,
    prune_small_,
)

OPTIMIZERS = ("sgd", "adam")
ADAM_COMBINATIONS = ("gradients", "directions")


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([(x * y).sum() for x, y in zip(a, b)]).sum()


def min_norm_coefficient(
    g1: torch.Tensor | Sequence[torch.Tensor], g2: torch.Tensor | Sequence[torch.Tensor]
) -> float:
    """c1 in [0, 1] minimising ||c1 g1 + (1 - c1) g2||: <g2 - g1, g2> / ||g2 - g1||^2, clipped.
    Gradients are tensors or lists of per-parameter tensors (same shapes)."""
    if isinstance(g1, torch.Tensor):
        g1, g2 = [g1], [g2]
    if len(g1) != len(g2):
        raise ConfigError("the two gradients must have the same number of tensors")
    diff = [b - a for a, b in zip(g1, g2)]
    denom = float(_dot(diff, diff))
    if denom <= 0.0 or not math.isfinite(denom):
        return 0.5
    c = float(_dot(diff, g2)) / denom
    return min(1.0, max(0.0, c))


@dataclass
class SMGDConfig:
    """Options of SMGD training (the l1 set and tau as in `BiobjectiveTraining`)."""

    epochs: int = 30
    steps: int | None = None
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    adam_combination: str = "gradients"
    tau: float = 1e-3
    l1_params: list[str] = field(default_factory=lambda: ["Linear"])
    conv_l2: float = 5e-4
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> SMGDConfig:
        check_range("epochs", self.epochs, 1)
        if self.steps is not None:
            check_range("steps", self.steps, 1)
        check_range("batch_size", self.batch_size, 1)
        check_range("lr", self.lr, 0.0, low_inclusive=False)
        check_range("momentum", self.momentum, 0.0, 1.0, high_inclusive=False)
        check_range("betas[0]", self.betas[0], 0.0, 1.0, high_inclusive=False)
        check_range("betas[1]", self.betas[1], 0.0, 1.0, high_inclusive=False)
        check_range("eps", self.eps, 0.0, low_inclusive=False)
        check_range("tau", self.tau, 0.0)
        check_range("conv_l2", self.conv_l2, 0.0)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got "
                              f"'{self.optimizer}'")
        if self.adam_combination not in ADAM_COMBINATIONS:
            raise ConfigError(f"adam_combination must be one of {', '.join(ADAM_COMBINATIONS)}"
                              f"; got '{self.adam_combination}'")
        if self.adam_combination == "directions" and self.optimizer != "adam":
            raise ConfigError("adam_combination='directions' applies to optimizer 'adam' only")
        return self


@dataclass
class SMGDResult:
    """Per-epoch metrics (on the Dataset's test tensors: pass a validation split while
    selecting), the c1 chosen at every step, and the final weights."""

    metrics: list[dict[str, Any]]
    coefficients: list[float]
    final: dict[str, Any]
    final_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


class SMGDStepper:
    """One SMGD update on a model: two gradients, the min-norm coefficient, the update and
    threshold pruning. Usable on its own (the benchmark times it against a plain step)."""

    def __init__(self, model: nn.Module, config: SMGDConfig):
        self.cfg = config.validate()
        self.model = model
        self.l1 = l1_parameters(model, config.l1_params)
        self.l2 = conv_kernels(model, exclude=tuple(self.l1))
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.params = [params[n] for n in self.names]
        self.l1_params = [self.l1[n] for n in self.names if n in self.l1]
        self._l1_pos = [i for i, n in enumerate(self.names) if n in self.l1]
        self.state: dict[str, list[torch.Tensor]] = {}
        self.t = 0
        prune_small_(self.l1, config.tau, count=False)

    def gradients(
        self, xb: torch.Tensor, yb: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """(CE, g1 over all parameters, g2 over all parameters: zero outside the l1 set)."""
        out = self.model(xb)
        ce = F.cross_entropy(out, yb)
        f1 = ce
        l2 = l2_half(self.l2) if self.cfg.conv_l2 > 0 else None
        if l2 is not None:
            f1 = f1 + self.cfg.conv_l2 * l2
        g1 = list(torch.autograd.grad(f1, self.params))
        g2_l1 = torch.autograd.grad(l1_norm(self.l1_params), self.l1_params)
        g2 = [torch.zeros_like(p) for p in self.params]
        for pos, g in zip(self._l1_pos, g2_l1):
            g2[pos] = g
        return ce.detach(), g1, g2

    @torch.no_grad()
    def step(
        self, xb: torch.Tensor, yb: torch.Tensor, lr: float | None = None
    ) -> tuple[float, float]:
        """One update; returns (CE of the batch before the step, c1)."""
        cfg = self.cfg
        lr = cfg.lr if lr is None else lr
        with torch.enable_grad():
            ce, g1, g2 = self.gradients(xb, yb)
        self.t += 1
        if cfg.optimizer == "sgd":
            c1 = min_norm_coefficient(g1, g2)
            bufs = self.state.setdefault("momentum", [torch.zeros_like(p) for p in self.params])
            for p, a, b, buf in zip(self.params, g1, g2, bufs):
                buf.mul_(cfg.momentum).add_(a, alpha=c1).add_(b, alpha=1.0 - c1)
                p.sub_(buf, alpha=lr)
        elif cfg.adam_combination == "gradients":
            c1 = min_norm_coefficient(g1, g2)
            m = self.state.setdefault("m", [torch.zeros_like(p) for p in self.params])
            v = self.state.setdefault("v", [torch.zeros_like(p) for p in self.params])
            for p, a, b, mi, vi in zip(self.params, g1, g2, m, v):
                p.sub_(self._adam_direction(mi, vi, a * c1 + b * (1.0 - c1)), alpha=lr)
        else:
            dirs = []
            for k, g in (("1", g1), ("2", g2)):
                m = self.state.setdefault("m" + k, [torch.zeros_like(p) for p in self.params])
                v = self.state.setdefault("v" + k, [torch.zeros_like(p) for p in self.params])
                dirs.append([self._adam_direction(mi, vi, gi) for mi, vi, gi in zip(m, v, g)])
            c1 = min_norm_coefficient(dirs[0], dirs[1])
            for p, a, b in zip(self.params, dirs[0], dirs[1]):
                p.sub_(a, alpha=lr * c1).sub_(b, alpha=lr * (1.0 - c1))
        prune_small_(self.l1, cfg.tau, count=False)
        return float(ce), c1

    def _adam_direction(self, m: torch.Tensor, v: torch.Tensor, g: torch.Tensor
                        ) -> torch.Tensor:
        """Adam's moments m, v updated with g in place; returns the bias-corrected direction
        m_hat / (sqrt(v_hat) + eps) at the current step count."""
        b1, b2 = self.cfg.betas
        m.mul_(b1).add_(g, alpha=1.0 - b1)
        v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
        mhat = m / (1.0 - b1**self.t)
        vhat = v / (1.0 - b2**self.t)
        return mhat / (vhat.sqrt() + self.cfg.eps)


def train_smgd(
    model: nn.Module,
    data: Dataset,
    config: SMGDConfig | None = None,
    *,
    progress: bool | None = False,
    log: Callable[[str], None] | None = None,
) -> SMGDResult:
    """Train `model` with SMGD on `data` (seeded batch order); metrics each epoch on the
    dataset's test tensors (a validation split while selecting solutions)."""
    from prunelab.train import evaluate, resolve_device

    cfg = (config or SMGDConfig()).validate()
    device = resolve_device(cfg.device)
    model.to(device)
    stepper = SMGDStepper(model, cfg)
    x, y = data.x_train.to(device), data.y_train.to(device)
    n = x.shape[0]
    per_epoch = max(1, math.ceil(n / cfg.batch_size))
    total = cfg.steps if cfg.steps is not None else cfg.epochs * per_epoch
    epochs = math.ceil(total / per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed)
    coefficients: list[float] = []
    metrics: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="smgd", unit="step", leave=False)
    model.train()
    step, start = 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=gen).to(device)
        running, seen = 0.0, 0
        for b in range(per_epoch):
            if step >= total:
                break
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            ce, c1 = stepper.step(x[idx], y[idx])
            coefficients.append(c1)
            running += ce * idx.numel()
            seen += idx.numel()
            step += 1
            if bar is not None:
                bar.update(1)
        if not math.isfinite(running):
            raise ConfigError(f"SMGD diverged in epoch {epoch}; lower lr")
        ev = evaluate(model, data.x_test, data.y_test)
        with torch.no_grad():
            l1 = float(l1_norm(stepper.l1))
        nz = sum(int(p.ne(0).sum()) for p in stepper.l1.values())
        ep_c = coefficients[-(step - (epoch - 1) * per_epoch):]
        row = {"epoch": epoch, "step": step, "train_loss": running / max(seen, 1),
               "test_loss": ev["loss"], "test_accuracy": ev["accuracy"], "l1": l1,
               "nonzero": nz, "c1_mean": sum(ep_c) / max(len(ep_c), 1),
               "seconds": time.perf_counter() - start}
        metrics.append(row)
        if log is not None:
            log(f"smgd epoch {epoch}/{epochs}: CE {row['test_loss']:.4f} acc "
                f"{row['test_accuracy']:.4f} l1 {l1:.4g} nonzero {nz} c1 {row['c1_mean']:.5f}")
        if step >= total:
            break
    if bar is not None:
        bar.close()
    final = dict(metrics[-1])
    final["train_seconds"] = time.perf_counter() - start
    final["config"] = asdict(cfg)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return SMGDResult(metrics, coefficients, final, state)
