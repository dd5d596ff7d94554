"""Layer gates and complexity-aware structure discovery: Guenter & Sideris' follow-ups of the
Bernoulli-gate method ("Concurrent Training and Layer Pruning of Deep Neural Networks", arXiv
2406.04549; "Complexity-Aware Training of Deep Neural Networks for Optimal Structure
Discovery", arXiv 2411.09127), from their published outlines. Their full equations are not
public; every choice we had to make is listed here, and the alternatives are options.

Structure (`prunelab.sections`). Each nonlinear section (a hidden Linear + activation of an
MLP, a basic block of a CIFAR ResNet or WRN) is wrapped with a shortcut: y = shortcut(x) +
z * body(x) (a ResNet block's ReLU after the addition stays after it). Shortcuts are the
identity where the shapes match and a linear projection where they differ: for an MLP a
bias-free Linear, initialised as PyTorch initialises a Linear (our choice; the paper says
"linear residual connections"); ResNet blocks keep their own shortcut (option A's zero
padding needs no projection, option B's 1x1 conv + BN is one). With `projection=False` a
section that needs a projection is refused (leave it out of `sections`). `attach` rewires an
MLP chain or ResNet in place (its layers and parameters kept; the projections join the
optimizer as a new param group); a model already built with `prunelab.sections.to_sections`
is used as it is.

Gates. z_l ~ Bernoulli(theta_l) per section, drawn per example in training (layer-wise
adaptive dropout, as the outline says), z_l = 1[theta_l >= 0.5] in eval; with `unit_gates`
each unit j of an MLP section's body (its Linear's outputs, after the activation) also gets
xi_j ~ Bernoulli(theta_j), the gate of `prunelab.methods.bernoulli`. Unit gates on ResNet
blocks are refused: channels of graph models are gated by channel groups, which is other
work (`unit_gates=False` there). The gradient of the expected data loss is the
straight-through estimator of the Bernoulli method (`estimator='st'`, the only one offered
here); theta follows the same projected SGD (`lr_theta`, clipping to [0, 1]), warm-up
(`warmup`: theta frozen, gate prior off), `penalty_ramp`, hyper-prior schedule (`gamma`,
`gamma_final`, `gamma_ramp`) and weight prior (`weight_prior`, `prior_sigma`,
`gaussian_prior_as`) as `BernoulliGating`, whose options and schedule code this class
inherits; the gate prior is added to the loss (`gate_prior_as='loss'` only).

Gate prior, per training example, over the gates still free (0 < theta < 1), two forms
(`cost`):
- "pi" (2406.04549's outline: one Bernoulli prior and the flattening hyper-prior per layer):
  (penalty_scale / N) R(theta; pi, gamma), R = KL(Bern(theta) || Bern(pi)) + gamma H(theta)
  (`prunelab.methods.bernoulli.gate_regulariser`), the same cost log((1 - pi)/pi) per kept
  structure whatever it holds.
- "complexity" (default; 2411.09127's outline, our reconstruction): the flattening part
  alone, (penalty_scale / N) R(theta; 1/2, gamma) = (penalty_scale / N)((gamma - 1) H(theta)
  + log 2), plus the expected complexity cost theta_s c_s of structure s, with
      c_s = strength * m_kind * [(1 - flops_weight) params_s / P + flops_weight flops_s / F]
  where params_s / flops_s are what removing s saves (a section's body; one unit's Linear
  row: in_features + bias, 2 x in_features FLOPs), P and F those of the starting (sectioned)
  network, m_section = 2 * layer_balance and m_unit = 2 * (1 - layer_balance). The three user
  parameters: `strength` >= 0 (nats per example: keeping the starting network's whole
  complexity costs `strength` at layer_balance 0.5, removing a tenth of it saves a tenth),
  `layer_balance` in [0, 1] (1: only sections cost, 0: only units; 0.5 both alike) and
  `flops_weight` in [0, 1] (0: parameters only, 1: FLOPs only). Choices where the paper's
  equations are not public: the cost enters as the linear term theta_s c_s, which is what
  R(theta; pi_s) contributes with a per-structure prior pi_s = 1/(1 + exp(c_s N /
  penalty_scale)), while the flattening force stays the same for every gate; c_s is per
  example (not / N), so the trade-off between loss and complexity does not change with the
  training set size; unit and section costs add independently (a unit's cost does not
  shrink when its section's theta does).
At theta in {0, 1} the gate prior is constant and adds nothing (fixed gates are skipped).

Pruning during training. After each theta step, a section whose theta falls below
`threshold` is removed for good, one above 1 - threshold is fixed on (deterministic, no
longer sampled); likewise units. A section all of whose units are removed is removed. At
most every `shrink_every` steps the network is rebuilt without removed sections (their
shortcuts kept; a removed projection followed directly by a Linear is folded into it when
that has fewer parameters, `fold`) and removed units (`prunelab.sections.rebuild`), and the
optimizer is rebuilt with its state carried over (`carry_optimizer`: momentum and Adam
moments copied or sliced to the kept rows, folded layers starting afresh), so later steps
cost fewer FLOPs; training FLOPs are counted (forward + 2x backward) against the starting
network's. The network never loses its last nonlinear section (a network of shortcuts alone
is linear) when no nonlinearity lies outside the gated sections: `on_empty_network='keep'`
(default) fixes on the section with the largest theta and records it, 'error' raises
ConfigError.

Defaults are `BernoulliGating`'s (theta_init 0.9, lr_theta 1.0, ...) except `warmup` 0.1 and
the new options; `prunelab.experiments.layer_pruning.METHOD_OPTIONS` gives the reproduction's
(chosen on validation splits, docs/layer-pruning.md).

End of training (`finalize`): free gates are rounded (theta >= 0.5 -> 1), the network is
rebuilt without the structures at 0, the hooks are removed and `ctx.model` is the small
deterministic network (sections with bodies, removed sections as their shortcuts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunelab.errors import ConfigError, check_range
from prunelab.gates import sample
from prunelab.methods.base import PruningMethod, TrainContext
from prunelab.methods.bernoulli import BernoulliGating, gate_regulariser
from prunelab.sections import (
    architecture,
    complexity,
    has_nonlinearity_outside,
    is_sectioned,
    layout,
    rebuild_with_optimizer,
    sections_of,
    to_sections,
)

COSTS = ("complexity", "pi")
EMPTY_NETWORK = ("keep", "error")


def structure_costs(cx, *, strength: float, layer_balance: float, flops_weight: float
                    ) -> tuple[dict[str, float], dict[str, float]]:
    """c_s of every section and of one unit of every unit-gated section (module docstring),
    from a `prunelab.sections.Complexity`: nats per example for keeping the structure."""
    def mixed(params: int, flops: int) -> float:
        p = params / cx.params if cx.params else 0.0
        f = flops / cx.flops if cx.flops else 0.0
        return (1.0 - flops_weight) * p + flops_weight * f

    sec = {n: strength * 2.0 * layer_balance * mixed(*v) for n, v in cx.sections.items()}
    unit = {n: strength * 2.0 * (1.0 - layer_balance) * mixed(*v) for n, v in cx.units.items()}
    return sec, unit


class SectionGates:
    """Forward hooks multiplying each gated section's body output by z (one theta per
    section) and each unit-gated body's units by xi (one theta per unit); sampling, eval
    rounding and the straight-through path as in `prunelab.gates.BernoulliGates`. All thetas
    are one flat leaf tensor (`theta`); `sections` / `units` give each one's slice. `draw`
    samples every gate of a training forward pass at once (the method calls it before the
    forward; a hook draws itself if it was not called), so a hook is one product, or none
    for a section fixed on."""

    def __init__(self, model: nn.Module, theta: torch.Tensor,
                 sections: dict[str, slice], units: dict[str, slice]):
        secs = sections_of(model)
        self.theta = theta
        self.theta_grad = True
        self._xi: torch.Tensor | None = None
        self._batch: int | None = None
        self._state: list[str] = []
        self._parts: list[slice] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for name, part in [*sections.items(), *units.items()]:
            k = len(self._parts)
            self._parts.append(part)
            if name in units and part is units[name]:
                module = secs[name].body[secs[name].unit_point]
            else:
                module = secs[name].body
            self._handles.append(module.register_forward_hook(self._hook(k)))
        seg = torch.zeros(theta.numel(), dtype=torch.long)
        for k, part in enumerate(self._parts):
            seg[part] = k
        self._seg = seg.to(theta.device)

    @torch.no_grad()
    def _decided(self) -> list[str]:
        """Per gate vector: 'on' (all 1), 'off' (all 0), 'fixed' (all decided, mixed) or
        'free', from two segment sums."""
        value = self.theta.detach()
        n = len(self._parts)
        free = value.new_zeros(n).index_add_(0, self._seg, ((value > 0) & (value < 1)).to(
            value.dtype)).tolist()
        on = value.new_zeros(n).index_add_(0, self._seg, (value >= 1).to(value.dtype)).tolist()
        out = []
        for k, part in enumerate(self._parts):
            size = part.stop - part.start
            out.append("free" if free[k] else "on" if on[k] == size else
                       "off" if on[k] == 0 else "fixed")
        return out

    def draw(self, batch: int) -> None:
        """Sample the gates of one training forward pass of `batch` examples (nothing to
        sample once every gate is decided: the hooks then need no draw)."""
        self._state = self._decided()
        self._batch = batch
        if "free" not in self._state:
            self._xi = None
            return
        value = self.theta.detach()
        xi = sample(value, batch).to(value.dtype)
        if self.theta_grad:
            xi = xi + self.theta - value
        self._xi = xi

    def clear(self) -> None:
        self._xi = None
        self._batch = None

    def _hook(self, k: int):
        def hook(module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
            part = self._parts[k]
            shape = (output.shape[0], -1) + (1,) * (output.dim() - 2)
            if not module.training:
                keep = self.theta.detach()[part] >= 0.5
                if bool(keep.all()):
                    return output
                return output * keep.to(output.dtype).view(1, *shape[1:])
            if self._batch != output.shape[0]:
                self.draw(output.shape[0])
            state = self._state[k]
            if state == "on":
                return output
            if state == "off":
                return torch.zeros_like(output)
            if state == "fixed":
                return output * self.theta.detach()[part].view(1, *shape[1:])
            return output * self._xi[:, part].reshape(shape)

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


@dataclass
class LayerGating(BernoulliGating):
    """Bernoulli gates on whole sections (and optionally the units inside them), with
    complexity-aware costs; removed sections are rebuilt away during training."""

    warmup: float = 0.1
    sections: list[str] | None = None
    unit_gates: bool = False
    projection: bool = True
    cost: str = "complexity"
    strength: float = 0.1
    layer_balance: float = 0.5
    flops_weight: float = 0.5
    on_empty_network: str = "keep"
    fold: bool = True

    name = "layer-gates"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cost not in COSTS:
            raise ConfigError(f"cost must be one of {', '.join(COSTS)}; got '{self.cost}'")
        if self.on_empty_network not in EMPTY_NETWORK:
            raise ConfigError(f"on_empty_network must be one of {', '.join(EMPTY_NETWORK)}; "
                              f"got '{self.on_empty_network}'")
        if not isinstance(self.strength, (int, float)) or not math.isfinite(self.strength):
            raise ConfigError(f"strength must be a finite number >= 0, got {self.strength!r}")
        check_range("strength", self.strength, 0.0)
        check_range("layer_balance", self.layer_balance, 0.0, 1.0)
        check_range("flops_weight", self.flops_weight, 0.0, 1.0)
        if self.estimator != "st":
            raise ConfigError("layer-gates uses the straight-through estimator: estimator must "
                              f"be 'st', got '{self.estimator}'")
        if self.gate_prior_as != "loss":
            raise ConfigError("layer-gates adds the gate prior to the loss: gate_prior_as must "
                              "be 'loss'")
        if self.gate_inputs or self.gate_at != "output" or self.layers is not None:
            raise ConfigError("gate_inputs, gate_at and layers are options of the unit method "
                              "'bernoulli'; layer-gates gates sections (option sections) and, "
                              "with unit_gates, the units inside them")
        if self.sections is not None and len(self.sections) == 0:
            raise ConfigError("sections is empty: name at least one section to gate (or leave "
                              "it unset to gate every hidden layer / block)")

    # ------------------------------------------------------------------ setup
    def attach(self, ctx: TrainContext) -> None:
        PruningMethod.attach(self, ctx)
        model = ctx.model
        if is_sectioned(model):
            names = [n for n, s in sections_of(model).items() if not s.removed]
            if self.sections is not None:
                unknown = [n for n in self.sections if n not in names]
                if unknown:
                    raise ConfigError(f"section '{unknown[0]}' does not exist; sections of "
                                      f"this model: {', '.join(names)}")
                names = [n for n in names if n in self.sections]
        else:
            _, created = to_sections(model, sections=self.sections, projection=self.projection,
                                     inplace=True)
            if created:
                ctx.optimizer.add_param_group({"params": created})
            names = [n for n, s in sections_of(model).items() if not s.removed]
            if self.sections is not None:
                names = [n for n in names if n in self.sections]
        secs = sections_of(model)
        if self.unit_gates:
            bad = [n for n in names if secs[n].units() is None]
            if bad:
                raise ConfigError(
                    f"unit gates inside section '{bad[0]}' are not supported: units are gated "
                    "inside MLP sections only (ResNet channels need channel-group gates); use "
                    "unit_gates=False")
        p = next(model.parameters())
        init = float(self.theta_init)
        self.protect_last = not has_nonlinearity_outside(model, names)
        self.start_sections = list(names)
        self.start_units = {n: secs[n].units() for n in (names if self.unit_gates else [])}
        self.orig_index = {n: torch.arange(k) for n, k in self.start_units.items()}
        self.removed_at: dict[str, int] = {}
        self.section_cost: dict[str, float] = {}
        self.unit_cost: dict[str, float] = {}
        self.gates: SectionGates | None = None
        self._set_theta({n: p.new_full((1,), init) for n in names},
                        {n: p.new_full((k,), init) for n, k in self.start_units.items()})
        self._hook_prior_gradient(ctx.optimizer)
        self.step = 0
        self.input_shape: tuple[int, ...] | None = None
        self.flops_now = self.flops_start = 0
        self.params_start = sum(q.numel() for q in model.parameters())
        self.train_flops = self.train_flops_dense = 0.0
        self.trajectory: list[dict[str, Any]] = []
        self.empty_network_events: list[dict[str, Any]] = []
        self.rebuilds = 0
        self.undecided_at_end: int | None = None
        self.max_undecided_distance: float | None = None
        self.final_layout: dict[str, str] | None = None
        self._pending = False

    def _setup_costs(self, model: nn.Module) -> None:
        """Structure costs and FLOPs from the starting network (first batch: input shape)."""
        cx = complexity(model, self.input_shape)
        self.complexity_start = cx
        if self.cost == "complexity":
            sec, unit = structure_costs(cx, strength=self.strength,
                                        layer_balance=self.layer_balance,
                                        flops_weight=self.flops_weight)
            self.section_cost = {n: sec[n] for n in self.theta_sections}
            self.unit_cost = {n: unit[n] for n in self.theta_units}
        self._set_costs()
        self.flops_now = self.flops_start = self._forward_flops(model)

    def _set_theta(self, sections: dict[str, torch.Tensor],
                   units: dict[str, torch.Tensor]) -> None:
        """All thetas as one flat leaf (sections first), `theta_sections` / `theta_units` as
        detached views of it (for the rules, under no_grad), and the hooks on ctx.model."""
        parts = [*sections.values(), *units.values()]
        ref = next(self.ctx.model.parameters())
        self.theta = (torch.cat(parts) if parts else ref.new_zeros(0)).detach().clone()
        self.theta.requires_grad_(True)
        bounds, start = {}, 0
        for key, t in [((k, n), t) for k, d in (("s", sections), ("u", units))
                       for n, t in d.items()]:
            bounds[key] = slice(start, start + t.numel())
            start += t.numel()
        flat = self.theta.detach()
        self.theta_sections = {n: flat[bounds["s", n]] for n in sections}
        self.theta_units = {n: flat[bounds["u", n]] for n in units}
        self._slices = bounds
        if self.gates is not None:
            self.gates.remove()
        self.gates = SectionGates(self.ctx.model, self.theta,
                                  {n: bounds["s", n] for n in sections},
                                  {n: bounds["u", n] for n in units})
        self._set_costs()

    def _set_costs(self) -> None:
        """The cost per kept structure of every gate, aligned with `theta`."""
        cost = torch.zeros_like(self.theta.detach())
        for (kind, n), part in self._slices.items():
            cost[part] = (self.section_cost if kind == "s" else self.unit_cost).get(n, 0.0)
        self.cost_vec = cost

    # ------------------------------------------------------------------ loss
    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn):
        if self.gates is None:
            return loss_fn(model(x), y)
        batch = x.shape[0]
        if self.input_shape is None:
            self.input_shape = tuple(x.shape[1:])
            self._n_est = self.ctx.steps_per_epoch * batch
            self._setup_costs(model)
            self._record()
        self.gates.theta_grad = self.step + 1 > self._warmup_steps()
        self.gates.draw(batch)
        loss = loss_fn(model(x), y)
        self.gates.clear()
        self.train_flops += 3 * self.flops_now * batch
        self.train_flops_dense += 3 * self.flops_start * batch
        return loss

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        weights = self._weight_prior(model) / self._n()
        if self.gates is None:
            return weights
        factor = self.gate_cost_factor()
        if factor == 0.0:  # warm-up: theta frozen, no gate prior
            return weights
        value = self.theta.detach()
        free = (value > 0) & (value < 1)
        if not bool(free.any()):  # every gate decided: the prior is constant
            return weights
        safe = torch.where(free, self.theta, 0.5)
        scale = self.penalty_scale / self._n()
        if self.cost == "pi":
            r = gate_regulariser(safe, self.pi, self.gamma_at()) * scale
        else:
            r = gate_regulariser(safe, 0.5, self.gamma_at()) * scale + safe * self.cost_vec
        return weights + torch.where(free, r, 0.0).sum() * factor

    # ------------------------------------------------------------------ updates
    @torch.no_grad()
    def after_step(self, step: int) -> None:
        self.step = step
        if self.gates is None:
            return
        if step <= self._warmup_steps():
            self.theta.grad = None
        elif self._update_theta(step):
            self._pending = True
        if self._pending and step % self.shrink_every == 0:
            self._rebuild()
            self._pending = False
        spe = self.ctx.steps_per_epoch
        if self.records_per_epoch and step % max(1, spe // self.records_per_epoch) == 0:
            self._record()

    def _update_theta(self, step: int) -> bool:
        """Projected SGD on the free gates, then the fix-on / remove rules (all gates as one
        vector); returns whether a structure was removed."""
        grad, self.theta.grad = self.theta.grad, None
        flat = self.theta.detach()
        free = (flat > 0) & (flat < 1)
        if grad is None or not bool(free.any()):
            return False
        before = flat.clone()
        new = torch.where(free, (flat - self.lr_theta * grad).clamp_(0.0, 1.0), flat)
        new.masked_fill_(free & (new > 1.0 - self.threshold), 1.0)
        low = free & (new < self.threshold)
        new.masked_fill_(low, 0.0)
        flat.copy_(new)
        if not bool(low.any()):
            return False
        for name, units in self.theta_units.items():  # a section without units is removed
            if not bool((units > 0).any()):
                self.theta_sections[name].fill_(0.0)
        self._keep_last(before, step)
        return True

    def _keep_last(self, before: torch.Tensor, step: int) -> None:
        """The network keeps one nonlinear section (when it has no other nonlinearity):
        the one whose theta was largest (`before`: the flat thetas before the rules)."""
        alive = [n for n, t in self.theta_sections.items() if float(t) > 0]
        if alive or not self.protect_last or not self.theta_sections:
            return
        if self.on_empty_network == "error":
            raise ConfigError(
                f"every section was gated off at step {step}: the network would be linear (no "
                "nonlinear section left); lower strength (or raise pi), or use "
                "on_empty_network='keep'")
        name = max(self.theta_sections, key=lambda n: float(before[self._slices["s", n]]))
        self.theta_sections[name].fill_(1.0)
        if name in self.theta_units and not bool((self.theta_units[name] > 0).any()):
            part = self._slices["u", name]
            self.theta_units[name][int(before[part].argmax())] = 1.0
        self.empty_network_events.append({"section": name, "step": step})

    def _rebuild(self) -> None:
        remove = [n for n, t in self.theta_sections.items() if float(t) == 0.0]
        keep = {n: t > 0 for n, t in self.theta_units.items()
                if n not in remove and not bool((t > 0).all())}
        if not remove and not keep:
            return
        self.gates.remove()  # hooks must not be copied into the new model
        model, opt = rebuild_with_optimizer(self.ctx.model, self.ctx.optimizer, remove, keep,
                                            fold=self.fold)
        sections = {n: t for n, t in self.theta_sections.items() if n not in remove}
        units = {}
        for n, t in self.theta_units.items():
            if n in remove:
                self.orig_index.pop(n, None)
            elif n in keep:
                units[n] = t[keep[n]]
                self.orig_index[n] = self.orig_index[n][keep[n].cpu()]
            else:
                units[n] = t
        for n in remove:
            self.removed_at[n] = self.step
        self.ctx.model, self.ctx.optimizer = model, opt
        self.gates = None
        self._set_theta(sections, units)
        self._hook_prior_gradient(opt)
        self.rebuilds += 1
        if self.input_shape is not None:
            self.flops_now = self._forward_flops(model)

    @torch.no_grad()
    def finalize_network(self) -> nn.Module:
        """Round undecided gates, rebuild without the structures at 0 and drop the gates; the
        deterministic network replaces ctx.model (and is returned)."""
        if self.gates is None:
            return self.ctx.model
        flat = self.theta.detach()
        before = flat.clone()
        free = (flat > 0) & (flat < 1)
        self.undecided_at_end = int(free.sum())
        self.max_undecided_distance = float(torch.minimum(flat, 1 - flat)[free].max()) \
            if bool(free.any()) else 0.0
        flat.copy_((flat >= 0.5).to(flat.dtype))
        for name, units in self.theta_units.items():
            if not bool((units > 0).any()):
                self.theta_sections[name].fill_(0.0)
        self._keep_last(before, self.step)
        self._record()
        self._rebuild()
        self.gates.remove()
        self.gates = None
        self.final_layout = layout(self.ctx.model)
        self.ctx.model.train(True)
        return self.ctx.model

    # ------------------------------------------------------------------ reporting
    def _record(self) -> None:
        row: dict[str, Any] = {"step": self.step}
        for n in self.start_sections:
            t = self.theta_sections.get(n)
            row[n] = 0.0 if t is None else float(t)
        row["units"] = {n: int((t > 0).sum()) for n, t in self.theta_units.items()}
        self.trajectory.append(row)

    def sections_kept(self) -> list[str]:
        """Sections not removed (so far, or at the end)."""
        return [n for n in self.start_sections if n not in self.removed_at]

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {"sections": len(self.sections_kept())}
        if self.start_units:
            out["units"] = sum(self.unit_widths().values())
        flat = self.theta.detach()
        out["undecided"] = 0 if self.gates is None else int(((flat > 0) & (flat < 1)).sum())
        if self.train_flops_dense:
            out["train_flops_ratio"] = self.train_flops / self.train_flops_dense
        return out

    def unit_widths(self) -> dict[str, int]:
        """Units alive per kept unit-gated section."""
        return {n: int((t > 0).sum()) for n, t in self.theta_units.items()}

    def summary(self) -> dict[str, Any]:
        """Start and final structure, removal steps, training FLOPs, gate statistics."""
        return {
            "start_sections": list(self.start_sections),
            "sections_kept": self.sections_kept(),
            "sections_removed": dict(self.removed_at),
            "start_units": dict(self.start_units),
            "final_units": self.unit_widths(),
            "layout": layout(self.ctx.model) if self.final_layout is None
            else dict(self.final_layout),
            "section_cost": dict(self.section_cost),
            "unit_cost": dict(self.unit_cost),
            **self._outcome_summary(),
            "rebuilds": self.rebuilds,
            "empty_network_events": list(self.empty_network_events),
        }

    def state_dict(self) -> dict[str, Any]:
        ctx = getattr(self, "ctx", None)
        theta = {}
        if getattr(self, "gates", None) is not None:
            theta = {"sections": {n: float(t) for n, t in self.theta_sections.items()},
                     "units": {n: t.cpu().clone() for n, t in self.theta_units.items()}}
        return {"options": self.options(), "masks": None, "theta": theta,
                "summary": self.summary() if hasattr(self, "start_sections") else {},
                # the rebuilt network fits no registry model: its description rebuilds it
                "architecture": architecture(ctx.model) if ctx is not None
                and is_sectioned(ctx.model) else None}


__all__ = ["LayerGating", "SectionGates", "structure_costs"]
