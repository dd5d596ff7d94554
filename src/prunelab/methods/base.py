"""The method protocol: how a pruning method hooks into training.

The Trainer calls, in order: `attach(context)` once (model and optimizer exist, nothing
trained yet), `penalty(model)` inside each loss, `after_step(step)` after each optimizer step
(`step` counts completed steps from 1), `after_epoch(epoch)` after each epoch (from 1). The
method exposes `masks` (None for dense) and `state_dict()` for checkpoints. Options are the
dataclass fields, so a method serialises to and from its config.

Resuming: a resumed run builds the method afresh, calls `attach` on the freshly built model,
restores the model's weights, then calls `load_state_dict` with what `state_dict()` returned
at the checkpoint (then the optimizer's state and the random generators are restored). So
`state_dict()` must hold everything later steps depend on that `attach` does not recompute
identically: masks, counters, logs, accumulators, the method's own generators. Plain
attributes are listed in `resume_attributes` (deep-copied; a torch.Generator by its state).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from prunelab.masks import MaskEnforcer, Masks, full_masks, prunable_parameters
from prunelab.selection import select_masks


@dataclass
class TrainContext:
    """Training state shared with the method. A method may replace `model` and `optimizer`
    (e.g. after physically removing units); the Trainer reads them back after each hook."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    total_steps: int
    epochs: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    data: Any = None  # the data source trained on: ask it for batches (prunelab.data.sample)


@dataclass
class PruningMethod:
    """Dense training: the method that does nothing. Subclasses override the hooks."""

    name = "dense"
    # False for methods that read gradients outside the optimizer (backward hooks, gates
    # updated after the step), which fp16's loss scaling would leave scaled: fp16 is refused.
    loss_scaling_ok = True
    # False for methods that change the network's shape during training (units removed
    # physically): data-parallel training (DDP) cannot follow them and refuses them.
    ddp_ok = True

    def attach(self, ctx: TrainContext) -> None:
        self.ctx = ctx

    def batch_loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn
    ) -> torch.Tensor:
        """The data loss of one minibatch. Stochastic methods override it (per-sample losses
        for score-function estimators, extra forward passes for exact estimates)."""
        return loss_fn(model(x), y)

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def after_step(self, step: int) -> None:
        pass

    def after_epoch(self, epoch: int) -> None:
        pass

    @property
    def masks(self) -> Masks | None:
        return None

    def metrics(self) -> dict[str, float]:
        """Numbers to log with each epoch (e.g. the current target sparsity)."""
        return {}

    def write_outputs(self, out_dir: Path) -> None:
        """Write method-specific files into a finished run directory (e.g. a shrunk model)."""

    def options(self) -> dict[str, Any]:
        return asdict(self)

    # Attributes set during training that later steps read (see the module docstring).
    resume_attributes: ClassVar[tuple[str, ...]] = ()

    def state_dict(self) -> dict[str, Any]:
        masks = self.masks
        state = {"options": self.options(), "masks": None if masks is None else dict(masks)}
        state["attributes"] = {name: _saved(getattr(self, name))
                               for name in self.resume_attributes if hasattr(self, name)}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved (after `attach` on a freshly built model)."""
        for name, value in state.get("attributes", {}).items():
            current = getattr(self, name, None)
            if isinstance(current, torch.Generator) and _is_generator_state(value):
                current.set_state(value[_GENERATOR])
            else:
                setattr(self, name, _restored(value))


_GENERATOR = "__torch_generator_state__"  # (plain types only: loadable with weights_only)


def _is_generator_state(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {_GENERATOR}


def _saved(value: Any) -> Any:
    """A checkpoint copy of an attribute (tensors cloned to the CPU, generators by state)."""
    if isinstance(value, torch.Generator):
        return {_GENERATOR: value.get_state()}
    if isinstance(value, torch.Tensor):
        return value.detach().clone()  # (on its device: a checkpoint loads it back there)
    if isinstance(value, dict):
        return {k: _saved(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_saved(v) for v in value)
    return copy.deepcopy(value)


def _restored(value: Any) -> Any:
    """A fresh copy of a saved attribute (the checkpoint may be restored more than once)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if _is_generator_state(value):
        return value
    if isinstance(value, dict):
        return {k: _restored(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_restored(v) for v in value)
    return copy.deepcopy(value)


@dataclass
class MaskedMethod(PruningMethod):
    """Shared machinery for methods that keep a weight mask enforced during training."""

    scope: str = "global"
    keep_first_last: bool = False  # the first and last Linear/Conv layer stay dense

    name = "masked"

    def attach(self, ctx: TrainContext) -> None:
        super().attach(ctx)
        self.enforcer = MaskEnforcer(ctx.model, self.initial_masks(ctx.model)).attach(ctx.optimizer)

    def initial_masks(self, model: nn.Module) -> Masks:
        return full_masks(model, keep_first_last=self.keep_first_last)

    @property
    def masks(self) -> Masks | None:
        enforcer = getattr(self, "enforcer", None)
        return None if enforcer is None else enforcer.masks

    def current_sparsity(self) -> float:
        masks = self.masks or {}
        total = sum(m.numel() for m in masks.values())
        return 1.0 - sum(int(m.sum()) for m in masks.values()) / total if total else 0.0

    def prune_by_magnitude(self, sparsity: float) -> None:
        """Keep the largest |w| so that `sparsity` of the prunable weights are zero
        (already pruned weights stay pruned)."""
        if sparsity <= self.current_sparsity() + 1e-12:
            return
        params = prunable_parameters(self.ctx.model)
        scores = {n: params[n].detach().abs() for n in self.enforcer.masks}
        self.enforcer.update(
            select_masks(scores, sparsity=sparsity, scope=self.scope, current=self.enforcer.masks)
        )

    def metrics(self) -> dict[str, float]:
        return {"mask_sparsity": self.current_sparsity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state.get("masks") is not None and hasattr(self, "enforcer"):
            self.enforcer.update(state["masks"])
