"""Bernoulli gates on the units (Linear) and filters (Conv2d) of an `nn.Sequential` chain.

Each gated unit j of a hidden layer has a keep probability theta_j in [0, 1]; its output is
multiplied by xi_j. In training mode xi_j ~ Bernoulli(theta_j) is drawn per example (like
dropout: shape (batch, units) for Linear, (batch, filters, 1, 1) for Conv2d); in eval mode the
network is deterministic with xi_j = 1[theta_j >= 0.5]. The gates are forward hooks, so the
model keeps its plain modules and parameters (theta is never in the model's optimizer), and
`shrink.shrink` applies to it unchanged.

Where the gate sits (`at`):
- "output" (default): on the unit's output after its activation (the point `shrink.unit_layers`
  names), so xi_j = 0 is exactly the network without unit j, for any activation.
- "layer": on the layer's pre-activation output. This equals gating the unit's output only when
  every activation between the layer and the next pooling/flatten maps 0 to 0 (relu, tanh,
  leaky_relu, gelu, elu); other activations (sigmoid, softplus, ...) are refused.

Gradient paths: with `straight_through` the hard sample is used forward and the gradient
reaches theta as if xi were theta (xi + theta - theta.detach()); otherwise theta gets no
gradient through the network (score-function and two-point estimators work on the losses).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from prunelab.errors import ConfigError
from prunelab.shrink import ACTIVATIONS, unit_layers

GATE_POINTS = ("output", "layer")


def _maps_zero_to_zero(act: nn.Module) -> bool:
    with torch.no_grad():
        return bool(act(torch.zeros(4)).abs().max() == 0)


class Gates:
    """What every gate set offers `prunelab.methods.bernoulli`: the thetas (by layer or group
    name), the hooks' removal, and the masks and counts they imply. `BernoulliGates` (chains)
    and `prunelab.group_gates.GroupGates` (channel groups) fill in `theta`, `features` and
    `_handles` and add the hooks."""

    theta: dict[str, torch.Tensor]
    features: dict[str, tuple[str, str | None]]
    _handles: list[torch.utils.hooks.RemovableHandle]

    def remove(self) -> None:
        """Detach the hooks from the model (the thetas stay)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def parameters(self) -> list[torch.Tensor]:
        return list(self.theta.values())

    def free(self, name: str) -> torch.Tensor:
        """Units (channels) whose gate is still stochastic (0 < theta < 1)."""
        t = self.theta[name].detach()
        return (t > 0) & (t < 1)

    def unit_masks(self, rule: str = "alive") -> dict[str, torch.Tensor]:
        """Bool unit masks of the gated layers or groups (feature sites excluded): 'alive' =
        theta > 0 (not removed), 'final' = theta >= 0.5."""
        th = {n: t.detach() for n, t in self.theta.items() if n not in self.features}
        if rule == "alive":
            return {n: t > 0 for n, t in th.items()}
        return {n: t >= 0.5 for n, t in th.items()}

    def counts(self) -> dict[str, int]:
        return {n: int((t.detach() > 0).sum()) for n, t in self.theta.items()}


class BernoulliGates(Gates):
    """Gates for the hidden Linear/Conv2d layers of a chain, one theta vector per layer.

    `theta` maps layer name -> float tensor over its units (a leaf with requires_grad, owned
    here). `forced` (layer -> (batch, units) tensor) overrides sampling, for exact estimators
    and tests. `last_xi` holds the hard gates of the latest training forward pass. With
    `theta_grad` False (theta frozen, e.g. a warm-up) the straight-through gate keeps its
    forward values but builds no gradient path to theta.
    """

    def __init__(
        self,
        model: nn.Module,
        theta: Mapping[str, torch.Tensor] | None = None,
        *,
        init: float = 1.0,
        at: str = "output",
        layers: Sequence[str] | None = None,
        straight_through: bool = True,
        features: bool = False,
    ):
        if at not in GATE_POINTS:
            raise ConfigError(f"gate_at must be one of {', '.join(GATE_POINTS)}; got '{at}'")
        self.at = at
        self.straight_through = straight_through
        self.forced: dict[str, torch.Tensor] | None = None
        self.last_xi: dict[str, torch.Tensor] = {}
        self.enabled = True
        # False while theta is frozen (e.g. a warm-up): the straight-through path then builds
        # no gradient to theta (its forward values are unchanged)
        self.theta_grad = True
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        hidden = {L.name: L for L in unit_layers(model)}
        if not hidden:
            raise ConfigError("the model has no hidden Linear/Conv2d layer to gate (the output "
                              "layer's units cannot carry gates)")
        names = list(hidden) if layers is None else list(layers)
        for name in names:
            if name not in hidden:
                raise ConfigError(
                    f"layer '{name}' cannot carry gates; gated layers must be hidden Linear/"
                    f"Conv2d layers of the chain: {', '.join(hidden)}"
                )
        if not names:
            raise ConfigError("layers is empty; name at least one hidden layer to gate")
        flat = _flat(model)
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        self.theta: dict[str, torch.Tensor] = {}
        self.conv: dict[str, bool] = {}
        # feature sites: {flatten name -> (Linear it feeds, hidden layer before it or None)}
        self.features: dict[str, tuple[str, str | None]] = {}
        sites: list[tuple[int, str]] = [(hidden[n].point, n) for n in names]
        if features:
            sites += self._feature_sites(model, flat)
        for _, name in sorted(sites):
            if name in self.features:
                linear = dict(flat)[self.features[name][0]]
                module, units = dict(flat)[name], linear.in_features
                self.conv[name] = False
                self._add(name, module, units, theta, init, device, dtype)
                continue
            L = hidden[name]
            if at == "layer":
                acts = [m for _, m in flat[L.index + 1 : L.point + 1] if isinstance(m, ACTIVATIONS)]
                bad = [type(m).__name__ for m in acts if not _maps_zero_to_zero(m)]
                if bad:
                    raise ConfigError(
                        f"layer '{name}' cannot carry gates at its pre-activation output: its "
                        f"activation {bad[0]} does not map 0 to 0; use gate_at='output'"
                    )
                module = L.module
            else:
                module = flat[L.point][1]
            self.conv[name] = isinstance(L.module, nn.Conv2d)
            self._add(name, module, L.units, theta, init, device, dtype)

    def _add(self, name, module, units, theta, init, device, dtype) -> None:
        if theta is not None and name in theta:
            t = theta[name].detach().clone().to(device=device, dtype=dtype)
            if t.shape != (units,):
                raise ConfigError(f"theta for '{name}' must have shape ({units},), got "
                                  f"{tuple(t.shape)}")
        else:
            t = torch.full((units,), float(init), device=device, dtype=dtype)
        self.theta[name] = t.requires_grad_(True)
        self._handles.append(module.register_forward_hook(self._hook(name)))

    def _feature_sites(self, model: nn.Module, flat) -> list[tuple[int, str]]:
        """Every Flatten whose output feeds a Linear layer directly: its flattened features
        (the input pixels of an MLP, LeNet-5's fc inputs) get gates of their own."""
        layers = unit_layers(model, include_output=True)
        out = []
        for i, (name, mod) in enumerate(flat):
            if not isinstance(mod, nn.Flatten):
                continue
            nxt = next(((n, m) for n, m in flat[i + 1 :] if isinstance(m, (nn.Linear,
                                                                            nn.Conv2d))), None)
            if nxt is None or not isinstance(nxt[1], nn.Linear):
                continue
            before = [L.name for L in layers if L.index < i]
            self.features[name] = (nxt[0], before[-1] if before else None)
            out.append((i, name))
        if not out:
            raise ConfigError("gate_inputs needs a Flatten feeding a Linear layer in the chain "
                              "(its features are the gated inputs); the model has none")
        return out

    # ------------------------------------------------------------------ forward
    def _hook(self, name: str):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
            if not self.enabled:
                return output
            theta = self.theta[name]
            value = theta.detach()
            if not module.training:
                xi = (value >= 0.5).to(output.dtype).expand(output.shape[0], -1)
            else:
                if self.forced is not None and name in self.forced:
                    xi = self.forced[name].to(output)
                else:
                    xi = sample(value, output.shape[0]).to(output.dtype)
                self.last_xi[name] = xi
                if self.straight_through:
                    # frozen theta: the same forward values without the graph back to theta
                    xi = xi + (theta if self.theta_grad else value) - value
            if self.conv[name]:
                xi = xi[:, :, None, None]
            return output * xi

        return hook


def _flat(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from prunelab.shrink import flat_modules

    return flat_modules(model)


def sample(theta: torch.Tensor, batch: int) -> torch.Tensor:
    """Gates of shape (batch, units), entry [i, j] ~ Bernoulli(theta_j) (theta in [0, 1]),
    as 0/1 in theta's dtype.

    On the CPU this is u < theta with u = torch.rand(batch, units) compared in place: the CPU
    Bernoulli kernel draws the same uniform per entry, in the same order, and compares it with
    p, so the gates and the generator state equal torch.bernoulli(theta.expand(batch, -1))'s
    bit for bit (tested), at a fraction of the cost. Other devices use torch.bernoulli."""
    if theta.device.type != "cpu":
        return torch.bernoulli(theta.clamp(0.0, 1.0).expand(batch, -1))
    return torch.rand((batch, theta.shape[0]), dtype=theta.dtype).lt_(theta)


def log_prob(xi: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """log q(xi; theta) per entry for Bernoulli gates (xlogy, so theta in {0, 1} is finite
    wherever the sample is possible)."""
    return torch.xlogy(xi, theta) + torch.xlogy(1.0 - xi, 1.0 - theta)


def score(xi: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """d log q(xi; theta) / d theta = xi / theta - (1 - xi) / (1 - theta)."""
    return xi / theta - (1.0 - xi) / (1.0 - theta)
