"""Bernoulli gates on channel groups of graph models: one gate per coupled channel.

The graph counterpart of `prunelab.gates.BernoulliGates` (same attributes and methods, so
`prunelab.methods.bernoulli` drives either). Group g's channel j has a keep probability
theta_j; at the start of every forward pass one xi_j ~ Bernoulli(theta_j) is drawn per example
(training mode) or xi_j = 1[theta_j >= 0.5] (eval mode), and every consumer of the group reads
the channel multiplied by xi_j (forward pre-hooks on the consumers: the read points of
`prunelab.group_scores`). So xi_j = 0 is exactly the network without channel j, the one
`prunelab.graph_shrink` builds, in train and eval mode alike, and one gate removes a residual
stream channel from every block of its stage at once. With `straight_through` the hard sample
is used forward and theta gets the gradient as if xi were theta.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from prunelab.errors import ConfigError
from prunelab.gates import Gates, sample
from prunelab.groups import Group, Member


class GroupGates(Gates):
    """Gates for the channel groups of a graph model, one theta vector per group (by group
    name). `forced` ({group -> (batch, channels)}) overrides sampling; `last_xi` holds the hard
    gates of the latest training forward pass; `theta_grad` False builds no gradient path."""

    def __init__(
        self,
        model: nn.Module,
        groups: Iterable[Group],
        theta: Mapping[str, torch.Tensor] | None = None,
        *,
        init: float = 1.0,
        layers: Sequence[str] | None = None,
        straight_through: bool = True,
    ):
        groups = list(groups)
        by_name = {g.name: g for g in groups}
        names = list(by_name) if layers is None else list(layers)
        for name in names:
            if name not in by_name:
                raise ConfigError(f"'{name}' cannot carry gates; gated layers of this model "
                                  f"are its channel groups: {', '.join(by_name)}")
        if not names:
            raise ConfigError("layers is empty; name at least one channel group to gate")
        self.groups = {n: by_name[n] for n in names}
        self.straight_through = straight_through
        self.forced: dict[str, torch.Tensor] | None = None
        self.last_xi: dict[str, torch.Tensor] = {}
        self.enabled = True
        self.theta_grad = True
        self.features: dict[str, tuple[str, str | None]] = {}  # chains only
        p = next(model.parameters())
        self.theta: dict[str, torch.Tensor] = {}
        for name, g in self.groups.items():
            if theta is not None and name in theta:
                t = theta[name].detach().clone().to(device=p.device, dtype=p.dtype)
                if t.shape != (g.size,):
                    raise ConfigError(f"theta for '{name}' must have shape ({g.size},), got "
                                      f"{tuple(t.shape)}")
            else:
                t = torch.full((g.size,), float(init), device=p.device, dtype=p.dtype)
            self.theta[name] = t.requires_grad_(True)
        self._xi: dict[str, torch.Tensor] = {}
        by_consumer: dict[str, list[tuple[str, Member]]] = {}
        for name, g in self.groups.items():
            for m in g.consumers:
                by_consumer.setdefault(m.module, []).append((name, m))
        self._modules = {c: model.get_submodule(c) for c in by_consumer}
        self._handles = [model.register_forward_pre_hook(self._draw)]
        self._handles += [self._modules[c].register_forward_pre_hook(self._gate(c, reads))
                          for c, reads in by_consumer.items()]

    # ------------------------------------------------------------------ forward
    def _draw(self, model: nn.Module, args) -> None:
        """One gate vector per group and example for this forward pass."""
        self._xi = {}
        if not self.enabled or not args or not isinstance(args[0], torch.Tensor):
            return
        batch = args[0].shape[0]
        for name, theta in self.theta.items():
            value = theta.detach()
            if not model.training:
                xi = (value >= 0.5).to(value.dtype).expand(batch, -1)
            else:
                if self.forced is not None and name in self.forced:
                    xi = self.forced[name].to(value)
                else:
                    xi = sample(value, batch)
                self.last_xi[name] = xi
                if self.straight_through:
                    xi = xi + (theta if self.theta_grad else value) - value
            self._xi[name] = xi

    def _gate(self, consumer: str, reads: list[tuple[str, Member]]):
        def hook(mod: nn.Module, args):
            if not self._xi or mod is not self._modules[consumer]:
                return None
            x = args[0]
            mult = torch.ones(x.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
            for name, m in reads:
                xi = self._xi[name].to(x.dtype)
                if m.per > 1:
                    xi = xi.repeat_interleave(m.per, dim=1)
                mult = mult.index_copy(1, m.positions().to(x.device), xi)
            return (x * mult.view(*mult.shape, *([1] * (x.dim() - 2))), *args[1:])
        return hook

    def remove(self) -> None:
        """Detach the hooks from the model (the thetas stay)."""
        super().remove()
        self._xi = {}
