"""Dynamic sparse training: `set` (Mocanu et al. 2018) and `rigl` (Evci et al. 2020).

Training starts from a random mask with each layer's budget count (`budget`: erk, er or
uniform; `prunelab.selection.layer_keep_counts`). Every `update_interval` steps before `end`
(a step, or a fraction of training), each layer drops the n = round(f_t * k) active weights of
smallest magnitude (k its kept count, f_t the drop fraction, cosine-decayed from
`drop_fraction` by default) and grows n among the entries inactive after the drop, by a grow
score: random for SET, |dense gradient| for RigL. So every layer keeps exactly k weights
through every update (the density never changes). Choices where the papers leave room:

- A weight dropped and grown back in the same update keeps its value (nothing moved); every
  other grown weight starts at exactly zero and has its optimizer state (momentum, Adam
  moments) cleared, as has every dropped weight. Adam's step count is per tensor, so a grown
  weight's first update uses the tensor's bias correction.
- RigL's dense gradient is computed only at update steps, after that step's optimizer update,
  on the same minibatch, by a separate forward/backward (`torch.autograd.grad` of a
  `functional_call` with detached parameters): it never goes through `.grad`, so it does not
  depend on how the mask enforcer treats gradients, and the model's BatchNorm statistics are
  untouched. In a multi-process run it is averaged over ranks, so the masks stay equal.
- Mask changes are logged: weights moved per layer at each update (`metrics()` sums them per
  epoch; `mask_updates.json` in the run directory lists every update).

`sparse_compute=True` runs the Linear layers whose CSR kernels beat dense ones (measured per
layer on a training batch) with `prunelab.sparse_compute`, between mask updates (CPU only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from prunelab import atomic
from prunelab.errors import ConfigError, check_range
from prunelab.init_scores import random_scores, sample_batches, select_with_budget
from prunelab.masks import Masks, clear_optimizer_state, prunable_parameters
from prunelab.methods.at_init import layer_summary, method_generator
from prunelab.methods.base import MaskedMethod, TrainContext
from prunelab.methods.magnitude import _resolve_step
from prunelab.schedules import CosineSchedule
from prunelab.selection import _keep_top, check_budget

DROP_SCHEDULES = ("cosine", "constant")


@dataclass
class DynamicSparse(MaskedMethod):
    """The shared update of SET and RigL; subclasses give the grow score."""

    sparsity: float = 0.9
    budget: str = "erk"
    drop_fraction: float = 0.3
    drop_schedule: str = "cosine"
    update_interval: int = 100
    end: float | int = 0.75
    seed: int | None = None
    sparse_compute: bool = False

    name = "dst"

    def __post_init__(self) -> None:
        check_range("sparsity", self.sparsity, 0.0, 1.0, high_inclusive=False)
        check_budget(self.budget)
        if self.scope != "global":
            raise ConfigError(f"method '{self.name}' keeps each layer's budget count through "
                              "every update; scope does not apply (choose the counts with "
                              "budget: uniform, erk or er)")
        check_range("drop_fraction", self.drop_fraction, 0.0, 1.0, low_inclusive=False,
                    high_inclusive=False)
        if self.drop_schedule not in DROP_SCHEDULES:
            raise ConfigError(f"drop_schedule must be one of {', '.join(DROP_SCHEDULES)}; got "
                              f"'{self.drop_schedule}'")
        check_range("update_interval", self.update_interval, 1)
        if isinstance(self.end, float):
            check_range("end", self.end, 0.0, 1.0, low_inclusive=False)
        else:
            check_range("end", self.end, 1)

    # -------------------------------------------------------------------------- set-up

    def initial_masks(self, model: nn.Module) -> Masks:
        """A random mask with each layer's budget count (what `random` draws)."""
        names = list(prunable_parameters(model, keep_first_last=self.keep_first_last))
        if not names:
            raise ConfigError(f"method '{self.name}': the model has no prunable layer")
        return select_with_budget(random_scores(model, names, self._generator), self.sparsity,
                                  budget=self.budget)

    def attach(self, ctx: TrainContext) -> None:
        total = ctx.total_steps
        if self.update_interval > total:
            raise ConfigError(f"update_interval ({self.update_interval} steps) is longer than "
                              f"training ({total} steps)")
        end = _resolve_step(self.end, total, "end")
        if end > total:
            raise ConfigError(f"end step {end} is after training ends ({total} steps)")
        if end <= self.update_interval:
            raise ConfigError(f"update_interval ({self.update_interval} steps) leaves no mask "
                              f"update before end (step {end}); shorten it or move end later")
        self._generator = method_generator(self.seed)
        super().attach(ctx)
        final = self.drop_fraction if self.drop_schedule == "constant" else 0.0
        self.schedule = CosineSchedule(self.drop_fraction, end, self.update_interval, final)
        self.counts = {n: int(m.sum()) for n, m in self.enforcer.masks.items()}
        self.updates: list[dict[str, Any]] = []
        self._step = 0
        self._batch: tuple | None = None
        self._epoch_moved: dict[str, int] = dict.fromkeys(self.counts, 0)
        self.sparse_choices: dict[str, Any] = {}
        if self.sparse_compute:
            self._setup_sparse_compute(ctx)

    def _setup_sparse_compute(self, ctx: TrainContext) -> None:
        from prunelab.sparse_compute import sparsify_linear_layers

        if ctx.device.type != "cpu":
            raise ConfigError("sparse_compute runs CSR kernels on the CPU; use --device cpu or "
                              "leave sparse_compute off")
        n_train = getattr(ctx.data, "n_train", None)
        batch = 128 if not n_train else max(1, math.ceil(n_train / ctx.steps_per_epoch))
        x, _ = sample_batches(ctx.data, 1, batch, torch.Generator().manual_seed(0))[0]
        self.sparse_choices = sparsify_linear_layers(ctx.model, self.enforcer.masks,
                                                     x.to(ctx.device), training=True)

    # -------------------------------------------------------------------------- hooks

    def needs_dense_gradient(self) -> bool:
        return False

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn):
        if self.needs_dense_gradient() and self.schedule.is_update_step(self._step + 1):
            self._batch = (x, y, loss_fn)  # references only: the batch of the update step
        return super().batch_loss(model, x, y, loss_fn)

    def after_step(self, step: int) -> None:
        self._step = step
        if self.schedule.is_update_step(step):
            self.update(step)
        self._batch = None

    def grow_scores(self, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # -------------------------------------------------------------------------- the update

    @torch.no_grad()
    def update(self, step: int) -> dict[str, Any]:
        """Drop and grow in every layer at `step`; returns (and logs) the moves per layer."""
        fraction = self.schedule(step)
        masks = self.enforcer.masks
        params = dict(self.ctx.model.named_parameters())
        n_update = {name: min(int(round(fraction * self.counts[name])),
                              m.numel() - self.counts[name]) for name, m in masks.items()}
        moved: dict[str, int] = dict.fromkeys(masks, 0)
        if any(n > 0 for n in n_update.values()):
            grow = self.grow_scores(step)
            new_masks: Masks = {}
            grown: Masks = {}
            for name, mask in masks.items():
                n = n_update[name]
                if n <= 0:
                    continue
                w = params[name].detach()
                drop_score = w.abs().float().masked_fill(~mask, float("-inf"))
                kept = _keep_top(drop_score, self.counts[name] - n)
                grow_score = grow[name].float().masked_fill(kept, float("-inf"))
                new = kept | _keep_top(grow_score, n)
                new_masks[name] = new
                grown[name] = new & ~mask
                moved[name] = int(grown[name].sum())
            self.enforcer.update(new_masks)  # zeroes dropped weights and their state
            for name, g in grown.items():
                params[name].masked_fill_(g, 0.0)
            clear_optimizer_state(self.ctx.optimizer, {n: params[n] for n in grown},
                                  {n: ~g for n, g in grown.items()})
            if self.sparse_compute:
                from prunelab.sparse_compute import refresh_sparse_layers

                refresh_sparse_layers(self.ctx.model, self.enforcer.masks)
        for name, n in moved.items():
            self._epoch_moved[name] += n
        record = {"step": step, "drop_fraction": fraction, "moved": moved,
                  "moved_total": sum(moved.values())}
        self.updates.append(record)
        return record

    # -------------------------------------------------------------------------- outputs

    def metrics(self) -> dict[str, float]:
        """Mask sparsity, updates so far, the current drop fraction, and the weights moved
        (in total and per layer) since the last call (the Trainer calls it once per epoch)."""
        out: dict[str, float] = {"mask_sparsity": self.current_sparsity()}
        if hasattr(self, "updates"):
            out["mask_updates"] = float(len(self.updates))
            out["drop_fraction"] = float(self.schedule(self._step))
            out["moved"] = float(sum(self._epoch_moved.values()))
            out.update({f"moved/{n}": float(v) for n, v in self._epoch_moved.items()})
            self._epoch_moved = dict.fromkeys(self._epoch_moved, 0)
        return out

    def write_outputs(self, out_dir: Path) -> None:
        atomic.write_json(Path(out_dir) / "mask_updates.json", {
            "method": self.name, "sparsity": self.sparsity, "budget": self.budget,
            "drop_fraction": self.drop_fraction, "drop_schedule": self.drop_schedule,
            "update_interval": self.update_interval, "end_step": self.schedule.end,
            "layers": layer_summary(self.enforcer.masks),
            "sparse_compute": self.sparse_choices, "updates": self.updates})

    # the grow generator (SET) and this epoch's moves so far; the CSR/dense choice per layer
    # (measured by timing at attach) is restored rather than measured again
    resume_attributes = ("_generator", "_epoch_moved", "sparse_choices")

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["updates"] = list(getattr(self, "updates", []))
        state["step"] = getattr(self, "_step", 0)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if hasattr(self, "enforcer"):
            self.counts = {n: int(m.sum()) for n, m in self.enforcer.masks.items()}
            self.updates = list(state.get("updates", []))
            self._step = int(state.get("step", 0))
            if self.sparse_compute:
                from prunelab.sparse_compute import SparseLinear, refresh_sparse_layers

                for name, entry in self.sparse_choices.items():
                    layer = self.ctx.model.get_submodule(name)
                    if isinstance(layer, SparseLinear):
                        layer.mode = entry["choice"]
                refresh_sparse_layers(self.ctx.model, self.enforcer.masks)


@dataclass
class SET(DynamicSparse):
    """Sparse Evolutionary Training: drop the smallest magnitudes, grow at random."""

    name = "set"

    def grow_scores(self, step: int) -> dict[str, torch.Tensor]:
        return {n: torch.rand(m.shape, generator=self._generator).to(m.device)
                for n, m in self.enforcer.masks.items()}


@dataclass
class RigL(DynamicSparse):
    """Rigged Lottery: drop the smallest magnitudes, grow the largest |dense gradient|."""

    name = "rigl"

    def needs_dense_gradient(self) -> bool:
        return True

    def grow_scores(self, step: int) -> dict[str, torch.Tensor]:
        if self._batch is None:
            raise RuntimeError("rigl: no minibatch recorded for the update step")
        x, y, loss_fn = self._batch
        grads = dense_gradient(self.ctx.model, x, y, loss_fn, list(self.enforcer.masks))
        return {n: g.abs() for n, g in grads.items()}


def dense_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn,
                   names: list[str]) -> dict[str, torch.Tensor]:
    """The gradient of loss_fn(model(x), y) with respect to the named parameters, dense (also
    at masked entries), computed on detached parameters and cloned buffers with
    `torch.autograd.grad`: `.grad`, gradient hooks and BatchNorm statistics are untouched.
    Averaged over ranks when a process group is running."""
    from prunelab.sparse_compute import dense_compute

    params = dict(model.named_parameters())
    leaves = {n: params[n].detach().requires_grad_(True) for n in names}
    state: dict[str, torch.Tensor] = {n: p.detach() for n, p in params.items()
                                      if n not in leaves}
    state.update(leaves)
    state.update({n: b.clone() for n, b in model.named_buffers()})
    with torch.enable_grad(), dense_compute(model):
        loss = loss_fn(functional_call(model, state, (x,)), y)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    out = {n: torch.zeros_like(leaves[n]) if g is None else g.detach()
           for n, g in zip(leaves, grads)}
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        for g in out.values():
            torch.distributed.all_reduce(g)
            g.div_(world)
    return out
