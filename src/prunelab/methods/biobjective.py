"""Weighted-sum biobjective training (Reiners, Klamroth, Heldmann, Stiglmayr 2022): minimise
(f1, f2) = (CE + L2 of the conv kernels, l1 of the dense kernels) through the weighted sum
lambda * f1 + (1 - lambda) * f2, with intra-training pruning.

How the weighted sum is realised: the Trainer's loss is CE and a method can only *add* a
penalty, so for lambda in (0, 1] the method adds

    penalty = (conv_l2 / 2) * ||w_conv||^2 + ((1 - lambda) / lambda) * ||w_l1||_1,

i.e. it trains on (lambda * f1 + (1 - lambda) * f2) / lambda. Dividing by the positive constant
lambda changes neither the minimisers nor the Pareto point reached; under SGD the gradient is
that of the weighted sum times 1 / lambda (the same as learning rate lr / lambda); Adam is
invariant to that scale. lambda = 0 (pure l1) has the trivial minimiser w_l1 = 0 and cannot be
written as CE + penalty, so it is refused with a one-line error; the knee search never needs it
(it starts from (1, 0) and (0.9, 0.1)).

Which parameters count toward l1 (`l1_params`): entries are module type names ("Linear",
"Conv2d", ...; their kernels count) or exact parameter names ("6.weight"). Default: the
kernels of every Linear layer. Conv kernels not in the l1 set get the L2 term (coefficient
`conv_l2`, the weight-decay convention: gradient conv_l2 * w).

Intra-training pruning: before training and after every optimizer step, weights of the l1
set with |w| <= tau are set to exactly zero (the paper's rule; such weights may grow back on
the next step). With `persistent_mask=True` a pruned weight stays pruned for good: the method
keeps a mask enforced through `prunelab.masks.MaskEnforcer` (gradients masked, optimizer state
cleared at pruned entries).

Fine-tune phase (`finetune_epochs=K`, default 0: off): the last K epochs of the run recover
accuracy on the sparse solution. At the end of epoch `epochs - K` the current zeros of the l1
set become a persistent mask, the l1 term is dropped (the loss is CE + the conv L2 term only),
threshold pruning stops and the optimizer's moments are reset (they hold the l1 gradient). The
zero pattern, hence the nonzero count reached by the weighted sum, is kept exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunelab.errors import ConfigError, check_range
from prunelab.masks import MaskEnforcer, Masks, first_last_layers
from prunelab.methods.base import PruningMethod, TrainContext

CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def l1_parameters(model: nn.Module, spec: Sequence[str] = ("Linear",)) -> dict[str, nn.Parameter]:
    """The parameters whose l1 norm is the second objective, by name, in model order.

    `spec` entries are module type names (the module's kernel, `.weight`, counts) or exact
    parameter names. Raises ConfigError if nothing matches or a name matches nothing."""
    if isinstance(spec, str):
        spec = [spec]
    params = dict(model.named_parameters())
    type_names = {type(m).__name__ for m in model.modules()}
    known_type = lambda s: s in type_names or isinstance(getattr(nn, s, None), type)  # noqa: E731
    unknown = [s for s in spec if s not in params and not known_type(s)]
    if unknown:
        raise ConfigError(
            f"l1_params entry '{unknown[0]}' is neither a module type (the model has "
            f"{', '.join(sorted(type_names))}) nor a parameter name (e.g. "
            f"{', '.join(list(params)[:4])})"
        )
    chosen: set[str] = {s for s in spec if s in params}
    for mod_name, mod in model.named_modules():
        if type(mod).__name__ in spec and isinstance(getattr(mod, "weight", None), nn.Parameter):
            chosen.add(f"{mod_name}.weight" if mod_name else "weight")
    out = {n: p for n, p in params.items() if n in chosen}
    if not out:
        raise ConfigError(
            f"no parameters in the l1 set (l1_params={list(spec)}); the model's module types "
            f"are {', '.join(sorted(type_names))}"
        )
    return out


def conv_kernels(model: nn.Module, exclude: Sequence[str] = ()) -> dict[str, nn.Parameter]:
    """Convolution kernels (not biases) that are not in `exclude`: they get the L2 term."""
    out: dict[str, nn.Parameter] = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, CONV_TYPES):
            name = f"{mod_name}.weight" if mod_name else "weight"
            if name not in exclude:
                out[name] = mod.weight
    return out


def l1_norm(params: dict[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of |w| over the given tensors (differentiable)."""
    tensors = list(params.values()) if isinstance(params, dict) else list(params)
    return torch.stack([t.abs().sum() for t in tensors]).sum()


def l2_half(params: dict[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor | None:
    """0.5 * sum of w^2 over the given tensors (None when there are none)."""
    tensors = list(params.values()) if isinstance(params, dict) else list(params)
    if not tensors:
        return None
    return 0.5 * torch.stack([t.pow(2).sum() for t in tensors]).sum()


@torch.no_grad()
def prune_small_(params: dict[str, torch.Tensor], tau: float, *, count: bool = True) -> int:
    """Set every entry with |w| <= tau to exactly zero, in place; returns the number of zeros
    (0 without `count`, which saves a device sync per call)."""
    zeros = 0
    for p in params.values():
        p.masked_fill_(p.abs() <= tau, 0.0)
        if count:
            zeros += int((p == 0).sum())
    return zeros


def weight_ratio(weight: float) -> float:
    """(1 - lambda) / lambda: the l1 coefficient of CE + r * l1, the weighted sum over lambda."""
    if weight <= 0.0:
        raise ConfigError(
            "weight must be in (0, 1] for training through CE + penalty; weight=0 is pure l1, "
            "whose minimiser is the all-zero l1 set"
        )
    return (1.0 - weight) / weight


def check_weight(weight: float) -> None:
    """Weights of the first objective (CE) must lie in [0, 1]."""
    check_range("weight", float(weight), 0.0, 1.0)


@dataclass
class BiobjectiveTraining(PruningMethod):
    """Weighted sum lambda * (CE + L2 conv) + (1 - lambda) * l1 with threshold pruning."""

    weight: float = 0.99
    tau: float = 1e-3
    l1_params: list[str] = field(default_factory=lambda: ["Linear"])
    conv_l2: float = 5e-4
    persistent_mask: bool = False
    finetune_epochs: int = 0
    keep_first_last: bool = False  # no l1 (and so no pruning) on the first and last layer

    name = "biobjective"

    def __post_init__(self) -> None:
        check_weight(self.weight)
        self.ratio = weight_ratio(self.weight)
        check_range("tau", float(self.tau), 0.0)
        check_range("conv_l2", float(self.conv_l2), 0.0)
        check_range("finetune_epochs", int(self.finetune_epochs), 0)
        if isinstance(self.l1_params, str):
            self.l1_params = [self.l1_params]
        if not self.l1_params:
            raise ConfigError("l1_params must name at least one module type or parameter")

    def attach(self, ctx: TrainContext) -> None:
        super().attach(ctx)
        self._l1 = l1_parameters(ctx.model, self.l1_params)
        if self.keep_first_last:
            dense = set(first_last_layers(ctx.model))
            self._l1 = {n: p for n, p in self._l1.items() if n.rpartition(".")[0] not in dense}
            if not self._l1:
                raise ConfigError("keep_first_last leaves no l1-penalised parameter "
                                  f"(l1_params {self.l1_params})")
        self._l2 = conv_kernels(ctx.model, exclude=tuple(self._l1))
        if self.finetune_epochs and self.finetune_epochs >= ctx.epochs:
            raise ConfigError(
                f"finetune_epochs must be < the run's epochs ({ctx.epochs}) so that at least "
                f"one epoch trains the weighted sum; got {self.finetune_epochs}"
            )
        self.enforcer: MaskEnforcer | None = None
        self.finetuning = False
        self._prune()
        if self.persistent_mask:
            self._freeze_mask()

    def _freeze_mask(self) -> None:
        masks = {n: p.detach() != 0 for n, p in self._l1.items()}
        if self.enforcer is None:
            self.enforcer = MaskEnforcer(self.ctx.model, masks).attach(self.ctx.optimizer)
        else:
            self.enforcer.update(masks)

    def start_finetune(self) -> None:
        """Switch to the fine-tune phase: freeze the l1 set's zeros, drop l1, stop pruning."""
        self._freeze_mask()
        self.ctx.optimizer.state.clear()
        self.finetuning = True

    def _prune(self) -> None:
        prune_small_(self._l1, self.tau, count=False)
        if self.enforcer is not None:
            newly = {n: self.enforcer.masks[n] & (p.detach() != 0) for n, p in self._l1.items()}
            if any(int(newly[n].sum()) != int(self.enforcer.masks[n].sum()) for n in newly):
                self.enforcer.update(newly)

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        total = None
        if self.ratio > 0.0 and not self.finetuning:
            total = self.ratio * l1_norm(self._l1)
        if self.conv_l2 > 0.0:
            l2 = l2_half(self._l2)
            if l2 is not None:
                total = self.conv_l2 * l2 if total is None else total + self.conv_l2 * l2
        return total

    def after_step(self, step: int) -> None:
        if not self.finetuning:
            self._prune()

    def after_epoch(self, epoch: int) -> None:
        if self.finetune_epochs and epoch == self.ctx.epochs - self.finetune_epochs:
            self.start_finetune()

    @property
    def l1_set(self) -> dict[str, nn.Parameter]:
        """The parameters in the l1 set (available after attach)."""
        return self._l1

    @property
    def masks(self) -> Masks | None:
        return None if self.enforcer is None else self.enforcer.masks

    def metrics(self) -> dict[str, float]:
        total = sum(p.numel() for p in self._l1.values())
        with torch.no_grad():
            l1 = float(l1_norm(self._l1))
            zeros = sum(int(p.eq(0).sum()) for p in self._l1.values())
        return {"l1": l1, "l1_set_sparsity": zeros / max(total, 1)}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["ratio"] = self.ratio
        state["finetuning"] = getattr(self, "finetuning", False)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The persistent mask (held from the start, or since the fine-tune began) and the
        phase; the l1 and L2 parameter sets are the model's, found again by `attach`."""
        super().load_state_dict(state)
        masks = state.get("masks")
        if masks is not None:
            if self.enforcer is None:
                self.enforcer = MaskEnforcer(self.ctx.model, masks).attach(self.ctx.optimizer)
            else:
                self.enforcer.update(masks)
        self.finetuning = bool(state.get("finetuning", False))
