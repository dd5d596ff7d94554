"""Unit pruning (Evci 2018; Mean Replacement Pruning): iterative rounds of removing the
least salient units/filters, each followed by fine-tuning, then a physically smaller model.

During training the removed units are masked (incoming weights, bias and outgoing weights,
kept zero by a MaskEnforcer). Scores come from the training steps themselves: forward hooks on
the post-activation outputs and tensor hooks on their gradients accumulate MRS, removal
saliency and the unit means over the last `score_steps` steps before each round, so scoring
costs no extra pass. With `mean_replacement` the removed units' mean outputs are folded into
the next layer's bias (bias propagation) at the moment they are removed; at the end
`shrunk_model()` is a genuinely smaller network computing what the masked model computes.

Graph models (ResNets, VGG with BatchNorm, ...) prune channel groups (`prunelab.groups`): a
removed channel is masked in every member (producer rows, BatchNorm weight and bias, consumer
columns), scores and means are read at the group's consumers (`prunelab.group_scores`), mean
replacement folds into a consumer's bias or the running mean of the BatchNorm that alone reads
a bias-free consumer (`prunelab.graph_shrink.fold_group_means`; a consumer with neither is
refused), and the shrunk model comes from `prunelab.graph_shrink`. A model whose channels the
analysis cannot follow is refused in one line naming the node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab import atomic
from prunelab.data.source import sample
from prunelab.errors import ConfigError, MaskError, UnknownNameError, check_range
from prunelab.graph_shrink import fold_group_means, fold_refusal, fold_targets_missing
from prunelab.group_scores import GroupCollector, group_means, group_unit_scores
from prunelab.groups import group_weight_masks, is_chain, method_groups
from prunelab.masks import UnitMasks, unit_masks_to_weight_masks
from prunelab.methods.base import MaskedMethod, TrainContext, _restored, _saved
from prunelab.models import count_parameters
from prunelab.scores import UNIT_SCORES, select_units, unit_means, unit_scores
from prunelab.shrink import (
    architecture,
    flat_modules,
    fold_means,
    save_shrunk,
    shrink,
    unit_layers,
    widths,
)


class _Collector:
    """Accumulates MRS, removal saliency and means of every hidden unit from the training
    steps' own forward and backward passes (hooks fire only while `active`)."""

    def __init__(self, model: nn.Module):
        self.layers = unit_layers(model)
        flat = flat_modules(model)
        self.active = False
        self.handles = [flat[L.point][1].register_forward_hook(self._hook(L.name))
                        for L in self.layers]
        self.reset()

    def reset(self) -> None:
        self.mrs: dict[str, torch.Tensor] = {}
        self.removal: dict[str, torch.Tensor] = {}
        self.sums: dict[str, torch.Tensor] = {}
        self.positions: dict[str, int] = {}
        self.samples: dict[str, int] = {}

    def _hook(self, name: str):
        def forward_hook(mod, inp, out):
            if not (self.active and mod.training and torch.is_grad_enabled()
                    and out.requires_grad):
                return
            a = out.detach()

            def grad_hook(g: torch.Tensor) -> None:
                self._accumulate(name, a, g.detach())

            out.register_hook(grad_hook)
        return forward_hook

    @torch.no_grad()
    def _accumulate(self, name: str, a: torch.Tensor, g: torch.Tensor) -> None:
        spatial = tuple(range(2, a.dim()))
        shape = (1, -1) + (1,) * len(spatial)
        a_bar = a.mean(dim=(0, *spatial))
        d_mean, d_rem = g * (a - a_bar.view(shape)), g * a
        if spatial:
            d_mean, d_rem = d_mean.sum(dim=spatial), d_rem.sum(dim=spatial)
        per_unit = a.transpose(0, 1).reshape(a.shape[1], -1)
        for store, val in ((self.mrs, d_mean.abs().sum(0)), (self.removal, d_rem.abs().sum(0)),
                           (self.sums, per_unit.sum(1))):
            store[name] = store.get(name, 0) + val.double()
        self.positions[name] = self.positions.get(name, 0) + per_unit.shape[1]
        self.samples[name] = self.samples.get(name, 0) + 1  # batches (g has the 1/b already)

    def scores(self, kind: str) -> dict[str, torch.Tensor]:
        src = self.mrs if kind == "mrs" else self.removal
        return {L.name: (src[L.name] / self.samples[L.name]).float() for L in self.layers}

    def means(self) -> dict[str, torch.Tensor]:
        return {L.name: (self.sums[L.name] / self.positions[L.name]).float()
                for L in self.layers}

    @property
    def ready(self) -> bool:
        return all(L.name in self.samples for L in self.layers)

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


@dataclass
class UnitPruning(MaskedMethod):
    """Prune `fraction` of the alive units of each hidden layer (scope 'layer') or of all
    (scope 'global') per round, or `count` units per round (count overrides fraction), after
    epochs start_epoch, start_epoch + every, ... (`rounds` rounds), by `score` (mrs, norm,
    removal, random, oracle); `mean_replacement` folds removed units' means into the next
    bias, else they are plainly removed."""

    scope: str = "layer"
    fraction: float | None = 0.25
    count: int | None = None
    rounds: int = 3
    score: str = "mrs"
    mean_replacement: bool = True
    start_epoch: int = 1
    every: int = 1
    score_steps: int = 20
    score_samples: int = 1024
    seed: int = 0
    data_in: Any = field(default=None, repr=False)

    name = "units"
    loss_scaling_ok = False  # the MRS collector reads activation gradients in backward hooks
    ddp_ok = False  # removes units physically mid-training

    def __post_init__(self) -> None:
        if self.count is not None:
            check_range("count", self.count, 1)
            self.fraction = None
        elif self.fraction is None:
            raise ConfigError("method 'units' needs fraction (in [0, 1)) or count (>= 1)")
        else:
            check_range("fraction", self.fraction, 0.0, 1.0, high_inclusive=False)
        if self.score not in UNIT_SCORES:
            raise UnknownNameError("unit score", self.score, UNIT_SCORES)
        if self.scope not in ("global", "layer"):
            raise ConfigError(f"scope must be 'global' or 'layer', got '{self.scope}'")
        check_range("rounds", self.rounds, 1)
        check_range("start_epoch", self.start_epoch, 1)
        check_range("every", self.every, 1)
        check_range("score_steps", self.score_steps, 1)
        check_range("score_samples", self.score_samples, 1)

    # --------------------------------------------------------------------- protocol

    def attach(self, ctx: TrainContext) -> None:
        super().attach(ctx)
        self.groups = None if is_chain(ctx.model) else self._graph_groups(ctx)
        if self.groups is not None:
            self._attach_schedule(ctx)
            return
        layers = unit_layers(ctx.model)  # MaskError naming an unsupported layer
        if not layers:
            raise ConfigError("method 'units' needs a model with at least one hidden layer")
        self._check_schedule(ctx)
        if self.mean_replacement:
            for L in layers:
                if L.next_module.bias is None:
                    raise ConfigError(f"mean replacement needs a bias in '{L.next_name}'; "
                                      "set mean_replacement=false")
        if self.score == "oracle" and self._data() is None:
            raise ConfigError("score 'oracle' needs the training data (pass data_in=Dataset "
                              "when building the method in Python); use mrs on the CLI")
        self.unit_masks: UnitMasks = {
            L.name: torch.ones(L.units, dtype=torch.bool, device=L.module.weight.device)
            for L in layers
        }
        self.history: list[dict[str, Any]] = []
        self.params_dense = count_parameters(ctx.model)
        self._step = 0
        self.collector = _Collector(ctx.model)
        self._update_collecting()

    def _check_schedule(self, ctx: TrainContext) -> None:
        self.prune_epochs = [self.start_epoch + k * self.every for k in range(self.rounds)]
        if self.prune_epochs[-1] > ctx.epochs:
            raise ConfigError(
                f"method 'units': {self.rounds} rounds every {self.every} epoch(s) from epoch "
                f"{self.start_epoch} need at least {self.prune_epochs[-1]} epochs; "
                f"training has {ctx.epochs}"
            )

    def _graph_groups(self, ctx: TrainContext):
        """The channel groups of a graph model (one-line MaskError naming what the analysis
        cannot follow), on an example of the data's input shape when there is data."""
        data = self._data()
        shape = getattr(data, "input_shape", None)
        p = next(ctx.model.parameters())
        x = None if shape is None else torch.zeros(1, *shape, device=p.device, dtype=p.dtype)
        return method_groups(ctx.model, x, "method 'units'")

    def _attach_schedule(self, ctx: TrainContext) -> None:
        """The graph path of attach: groups instead of chain layers."""
        self._check_schedule(ctx)
        if self.mean_replacement:
            missing = fold_targets_missing(ctx.model, self.groups)
            if missing:
                raise ConfigError(f"method 'units': {fold_refusal(missing[0])}")
        if self.score == "oracle" and self._data() is None:
            raise ConfigError("score 'oracle' needs the training data (pass data_in=Dataset "
                              "when building the method in Python); use mrs on the CLI")
        dev = next(ctx.model.parameters()).device
        self.unit_masks = {g.name: torch.ones(g.size, dtype=torch.bool, device=dev)
                           for g in self.groups}
        self.history = []
        self.params_dense = count_parameters(ctx.model)
        self._step = 0
        self.collector = GroupCollector(ctx.model, self.groups)
        self._update_collecting()

    def _data(self):
        return self.data_in if self.data_in is not None else getattr(self.ctx, "data", None)

    def _round_step(self, epoch: int) -> int:
        return min(epoch * self.ctx.steps_per_epoch, self.ctx.total_steps)

    def _update_collecting(self) -> None:
        upcoming = [e for e in self.prune_epochs if self._round_step(e) > self._step]
        if not upcoming:
            self.collector.active = False
            return
        end = self._round_step(upcoming[0])
        # the backward of step self._step + 1 is the next one to run
        self.collector.active = end - self.score_steps < self._step + 1 <= end

    def after_step(self, step: int) -> None:
        self._step = step
        self._update_collecting()

    def after_epoch(self, epoch: int) -> None:
        if epoch in self.prune_epochs:
            self.prune_round(epoch)
        if epoch >= self.prune_epochs[-1]:
            self.collector.close()

    # --------------------------------------------------------------------- pruning

    def _oracle_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The oracle's scoring batch: `score_samples` training examples on the model's
        device."""
        data = self._data()
        x, y = sample(data, min(self.score_samples, data.n_train), seed=self.seed)
        dev = next(self.ctx.model.parameters()).device
        return x.to(dev), y.to(dev)

    def _collected_means(self) -> dict[str, Any]:
        if not self.collector.ready:
            raise ConfigError("no training step was seen before a pruning round; "
                              "lower score_steps or prune later")
        return self.collector.means()

    def _scores_and_means(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        model = self.ctx.model
        if self.groups is not None:
            return self._group_scores_and_means()
        if self.score == "oracle":
            batch = self._oracle_batch()
            means = unit_means(model, batch)
            return unit_scores(model, batch, "oracle", means=means), means
        means = self._collected_means()
        if self.score in ("mrs", "removal"):
            return self.collector.scores(self.score), means
        return unit_scores(model, None, self.score, seed=self.seed + len(self.history)), means

    def _group_scores_and_means(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        model, groups = self.ctx.model, self.groups
        if self.score == "oracle":
            batch = self._oracle_batch()
            means = group_means(model, batch, groups=groups)
            return group_unit_scores(model, batch, "oracle", groups=groups, means=means), means
        means = self._collected_means()
        if self.score in ("mrs", "removal"):
            return self.collector.scores(self.score), means
        return group_unit_scores(model, None, self.score, groups=groups,
                                 seed=self.seed + len(self.history)), means

    def prune_round(self, epoch: int) -> None:
        """Score, select, fold means (optional) and mask: one round of unit pruning."""
        scores, means = self._scores_and_means()
        current = {k: v.cpu() for k, v in self.unit_masks.items()}
        new = select_units(scores, fraction=self.fraction, count=self.count, scope=self.scope,
                           current=current)
        removed = {k: current[k] & ~new[k] for k in new}
        if self.mean_replacement and self.groups is not None:
            fold_group_means(self.ctx.model, self.groups, removed, means)
        elif self.mean_replacement:
            fold_means(self.ctx.model, removed, means)
        dev = next(self.ctx.model.parameters()).device
        self.unit_masks = {k: v.to(dev) for k, v in new.items()}
        if self.groups is not None:
            self.enforcer.update(group_weight_masks(self.ctx.model, self.groups,
                                                    self.unit_masks))
        else:
            self.enforcer.update(unit_masks_to_weight_masks(self.ctx.model, self.unit_masks))
        self.collector.reset()
        self.history.append({
            "epoch": epoch,
            "removed": {k: int(v.sum()) for k, v in removed.items()},
            "alive": {k: int(v.sum()) for k, v in new.items()},
            "params_after_shrink": count_parameters(self.shrunk_model()),
        })

    # --------------------------------------------------------------------- results

    def shrunk_model(self) -> nn.Module:
        """The physically smaller network (means already folded into the biases)."""
        masks = {k: v.cpu() for k, v in self.unit_masks.items()}
        if self.groups is not None:
            return shrink(self.ctx.model, masks, groups=self.groups)
        return shrink(self.ctx.model, masks)

    def metrics(self) -> dict[str, float]:
        out = super().metrics()
        if hasattr(self, "unit_masks"):
            out["units_alive"] = float(sum(int(v.sum()) for v in self.unit_masks.values()))
            out["params_after_shrink"] = float(
                self.history[-1]["params_after_shrink"] if self.history else self.params_dense
            )
        return out

    def options(self) -> dict[str, Any]:
        opts = super().options()
        opts.pop("data_in", None)
        return opts

    def summary(self) -> dict[str, Any]:
        """Widths, parameter counts and the round log, JSON-friendly."""
        small = self.shrunk_model()
        return {
            "params_dense": self.params_dense,
            "params_shrunk": count_parameters(small),
            "param_ratio": self.params_dense / max(count_parameters(small), 1),
            "widths_dense": (widths(self.ctx.model) if self.groups is None
                             else {g.name: g.size for g in self.groups}),
            "widths_shrunk": (widths(small) if self.groups is None
                              else {k: int(v.sum()) for k, v in self.unit_masks.items()}),
            "architecture": _architecture(small),
            "rounds": self.history,
        }

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if hasattr(self, "unit_masks"):
            small = self.shrunk_model()
            state["unit_masks"] = {k: v.cpu() for k, v in self.unit_masks.items()}
            state["history"] = self.history
            state["step"] = self._step
            state["collector"] = {k: _saved(v) for k, v in vars(self.collector).items()
                                  if k in _ACCUMULATORS}
            state["collector_open"] = bool(self.collector.handles)
            spec = _architecture(small)
            if spec is not None:
                state["shrunk"] = {"architecture": spec,
                                   "state_dict": {k: v.detach().cpu()
                                                  for k, v in small.state_dict().items()}}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Unit masks (the weight masks follow from them), the round log, the step, and the
        score accumulators of a scoring window the checkpoint fell into."""
        super().load_state_dict(state)
        if "unit_masks" not in state or not hasattr(self, "unit_masks"):
            return
        dev = next(self.ctx.model.parameters()).device
        self.unit_masks = {k: v.to(dev) for k, v in state["unit_masks"].items()}
        self.history = list(state["history"])
        self._step = int(state["step"])
        for k, v in state["collector"].items():
            setattr(self.collector, k, _restored(v))
        if state["collector_open"]:
            self._update_collecting()
        else:
            self.collector.close()

    def write_outputs(self, out_dir: str | Path) -> None:
        """shrunk.pt (architecture + weights, `prunelab.shrink.load_shrunk`) and shrink.json."""
        out_dir = Path(out_dir)
        small = self.shrunk_model()
        if _architecture(small) is not None:  # (a graph model build_model did not build: no)
            save_shrunk(out_dir / "shrunk.pt", small)
        atomic.write_json(out_dir / "shrink.json", self.summary())


# What the chain (_Collector) and graph (GroupCollector) score collectors accumulate.
_ACCUMULATORS = ("mrs", "removal", "sums", "positions", "samples", "batches", "s1", "s2",
                 "count", "_pending")


def _architecture(model: nn.Module) -> Any:
    """`prunelab.shrink.architecture`, or None for a graph model that was not built by
    `build_model` (it can be shrunk, not described for rebuilding)."""
    try:
        return architecture(model)
    except MaskError:
        return None
