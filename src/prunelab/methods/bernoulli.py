"""Bernoulli-gate variational pruning (Guenter & Sideris, "Robust Learning of Parsimonious
Deep Neural Networks", arXiv 2205.04650), from the published outline.

Model. Every unit of a hidden Linear layer and every filter of a hidden Conv2d layer (never the
output layer) has a gate xi_j ~ Bernoulli(theta_j) multiplying its output, drawn per example in
training (`prunelab.gates`); the evaluated network is deterministic, xi_j = 1[theta_j >= 0.5].
The q(xi) = prod Bern(theta_j) is the variational posterior over the gates; the weights are
point estimates (MAP) under a weight prior.

Objective, per training example (N = training set size, read from the first minibatch as
steps_per_epoch * batch_size unless `n_train` is given):

    E_q[NLL(x, y; w, xi)] + (penalty_scale / N) sum_j R(theta_j) + (1 / N) (-log p(w))

    R(theta) = KL(Bern(theta) || Bern(pi)) + gamma H(theta)
             = (gamma - 1) H(theta) - theta log pi - (1 - theta) log(1 - pi)

KL = -H(theta) - theta log pi - (1 - theta) log(1 - pi) alone rewards stochastic gates (its
entropy part). Our reconstruction of the "flattening" hyper-prior adds +gamma H(theta): with
gamma > 1 R is concave in theta, so its minima over [0, 1] are at 0 or 1 and gates are driven
to a deterministic network; at theta in {0, 1} R is an L0 cost of log(1/pi) per kept unit (and
log(1/(1-pi)) per removed one). gamma = 1 drops the entropy term (a plain L0-like expected cost),
gamma = 0 is the plain KL. `penalty_scale` tempers the gate prior only (1 = the Bayesian
weighting; larger values buy smaller networks, as the lambda of L0 methods does).
penalty_scale multiplies both parts of R: the cost per kept unit, penalty_scale log((1-pi)/pi),
and the flattening force, penalty_scale (gamma - 1) log(theta/(1-theta)). Lowering it to keep
more units therefore also weakens the flattening and leaves gates at stochastic equilibria
(MNIST, penalty_scale 15: 64 of 117 gates undecided at the end); raising pi lowers the cost per
unit alone (pi = 0.2: log 4 instead of log 19 at pi = 0.05). With gamma = 2 the unstable point
of R is theta* = 1 - pi: gates above it are pushed to 1 by the prior itself, so `theta_init`
should lie below 1 - pi (the data term then has to lift the units worth keeping).
`gamma_final` (default None: constant gamma) raises gamma linearly to gamma_final over the last
`gamma_ramp` (default 0.25) of training, never before the warm-up ends. A growing gamma lowers
theta* towards 0.5, so it acts as a soft rounding while the weights still adapt: ramped over the
whole run from theta_init 0.9 it fixed every unit on (measured), over the last quarter it
decided the gates left at stochastic equilibria (MNIST validation run, x2: 12 -> 0). The
reproduction uses gamma_final = 20.
Weight prior (`weight_prior`): "gaussian" N(0, prior_sigma^2) on every Linear/Conv2d weight
(= weight decay), "mixture" the two-component scale mixture
mixture_weight N(0, prior_sigma^2) + (1 - mixture_weight) N(0, mixture_sigma^2), or "none".
Biases carry no prior. `gaussian_prior_as` chooses how the Gaussian prior enters training:
"loss" adds sum w^2 / (2 sigma^2 N) to the loss, so autograd differentiates it; "gradient"
adds its exact gradient w / (sigma^2 N) to each weight's gradient in an optimizer pre-step hook
(the same update up to float rounding, as an optimizer's L2 weight decay would do it) and
leaves it out of `penalty()`. "gradient" is one in-place add per layer instead of a forward and
backward graph: 0.03 vs 0.25 ms per step on LeNet-300-100 (1 thread), ~7% of a step, which
is why the reproduction uses it; the default "loss" keeps `penalty()` the whole objective.
`gate_prior_as` does the same for the gate prior R(theta): "loss" (default) differentiates it
in the loss; "gradient" leaves it out of `penalty()` and adds its gradient to theta's in the
theta update (`gate_prior_gradient`), written with the arithmetic autograd uses for the loss
expression, so with the straight-through estimator the updates are the same bit for bit (a
whole MNIST run gives identical weights and thetas; tested on 40,000 gates); with the other
estimators the data term's paths to theta may be summed in another order (float rounding).
It replaces a graph of ~25 small forward and ~30 backward nodes per step with ~20 vector ops
inside the update, without a graph (the reproduction uses it).

Training. The weights follow the Trainer's optimizer. theta follows its own projected SGD:
theta <- clip(theta - lr_theta * g, 0, 1) after every step, then units with theta < threshold
are removed for good (theta = 0) and units with theta > 1 - threshold are fixed on (theta = 1);
fixed gates are deterministic and get no further updates. The threshold must be in (0, 0.5) so
the two rules never overlap. The gradient g of the expected data loss (`estimator`):
- "st" (default): straight-through, xi + theta - theta.detach(): the hard sample forward, dL/dxi
  as the gradient. It is the first-order (linearised) form of the two-point difference below;
  biased, one pass.
- "reinforce": the score function, mean_i (f_i - b_i) d log q(xi_i)/d theta with per-example
  losses f_i and a baseline b_i (`baseline`: "loo" leave-one-out mean of the other examples'
  losses, "ema" moving average of batch losses with `baseline_momentum`, or "none"); unbiased.
- "exact": the two-point estimate, for each unit j mean_i (2 xi_ij - 1)(f_i(xi_i) -
  f_i(xi_i with xi_ij flipped)) = f(xi_j = 1) - f(xi_j = 0) per example; unbiased, one extra
  forward pass per stochastic unit, so refused when the model has more than `max_exact_units`
  gated units.
The R(theta) gradient is exact for every estimator.

Warm-up (`warmup`, a fraction of the training steps; default 0). For the first warmup x
total_steps steps theta is frozen at theta_init (the gates are still sampled, so the weights
train under the same dropout-like noise) and the gate prior is left out of the loss; afterwards
`penalty_ramp` (fraction of training, default 0) raises the gate prior's weight linearly from 0
to 1. Why: the per-unit gate cost is the same at every width, while one unit's share of the data
term shrinks as the network widens, and from the first step the data gradient on theta is that
of an untrained network. Without a warm-up wide starts lose most units before the weights
specialise and narrow starts fix most gates on early (theta > 1 - threshold is final), so the
final size follows the starting width (MNIST LeNet-300-100: 127/54 units from x1/x4).
Deciding the gates on a partly trained network removes most of that dependence (old options,
10k-subset validation: CV of final units 38% -> 8%; see docs/bernoulli.md, where theta_init
below 1 - pi is seen to remove part of it too; the reproduction uses warmup=0.25). A ramp after
the warm-up was measured to be worse (low early cost fixes gates on), so it is off by default.

Shrinking. With `shrink` (default) the network is physically rebuilt without removed units
(`prunelab.shrink.shrink_with_optimizer`: the optimizer's momentum/Adam state follows the kept
rows and columns) at most every `shrink_every` steps (rebuilding costs a model copy; units
removed in between are held at xi = 0), so later steps cost fewer FLOPs; training FLOPs are
counted (forward + 2x for backward, plus the extra passes of "exact"). With `shrink=False`
removed units are held at xi = 0. A layer never loses its last unit: with
`on_empty_layer="keep"` (default) the unit with the largest theta is fixed on (and counted in
`empty_layer_events`); "error" raises ConfigError instead. `theta_init` must exceed the
threshold (else every unit would be pruned at once).

Input features (`gate_inputs`, off by default): the flattened features feeding a Linear layer
(an MLP's input pixels, LeNet-5's 800 fc inputs) get gates of their own, as the published
structured baselines count them (L0-sep 266-88-33 counts 266 input pixels). shrink.py removes
layer units, not input features, so removed features are held at xi = 0 during training and
their columns of the Linear they feed are zeroed in the final network (not physically removed:
count its parameters/FLOPs by nonzero weights); features of a removed filter leave with it.
`feature_pi` (default None: `pi`) gives the feature gates a prior of their own: a larger pi
lowers the cost of a kept feature, log((1 - pi)/pi), and leaves the flattening force
(penalty_scale (gamma - 1) log(theta/(1 - theta))) as it is, which lowering penalty_scale
would weaken; the unstable point theta* = 1 - feature_pi should stay above `theta_init`.

Cost per step (all bit-identical to the plain expressions, see tests/test_bernoulli.py):
gates are drawn as torch.rand(...) < theta on the CPU (the same draws as torch.bernoulli, a
third of its cost); while theta is frozen no gradient path to it is built and the gate prior
(weight 0) is skipped; the Gaussian weight prior is one autograd Function (one product per
weight in backward); the gate prior and the theta update run on all layers' thetas at once,
and skip the stochastic part once every gate is decided; with gate_prior_as="gradient" the
gate prior needs no graph at all (above).

End of training (`finalize`, default on): gates still stochastic are rounded (theta >= 0.5 ->
1; their number is reported as `undecided_at_end`, with the largest min(theta, 1 - theta)),
the hooks are removed and the model is replaced by the deterministic shrunk network of the
units with theta = 1, so the Trainer's final evaluation, report and weights are that network.

Graph models (ResNets, VGG with BatchNorm, ...): one gate per coupled channel of each channel
group (`prunelab.group_gates.GroupGates`: every consumer of the group reads the channel times
xi, so one gate removes a residual stream channel from every block of its stage), shrinking by
`prunelab.graph_shrink` with the optimizer state carried over. `layers` then names channel
groups; `gate_inputs` and gate_at='layer' are chain options and are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunelab.errors import ConfigError, check_range
from prunelab.gates import GATE_POINTS, BernoulliGates, log_prob
from prunelab.graph_shrink import remap_groups, shrink_groups_with_optimizer
from prunelab.group_gates import GroupGates
from prunelab.groups import is_chain, method_groups
from prunelab.masks import forward_flops
from prunelab.methods.base import PruningMethod, TrainContext
from prunelab.shrink import architecture, shrink_with_optimizer

ESTIMATORS = ("st", "reinforce", "exact")
BASELINES = ("loo", "ema", "none")
WEIGHT_PRIORS = ("gaussian", "mixture", "none")
EMPTY_LAYER = ("keep", "error")


def _choice(option: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{option} must be one of {', '.join(valid)}; got '{value}'")


def gate_regulariser(theta: torch.Tensor, pi: float, gamma: float) -> torch.Tensor:
    """R(theta) = KL(Bern(theta) || Bern(pi)) + gamma H(theta), elementwise."""
    entropy = -(torch.xlogy(theta, theta) + torch.xlogy(1.0 - theta, 1.0 - theta))
    cross = -(theta * math.log(pi) + (1.0 - theta) * math.log1p(-pi))
    return (gamma - 1.0) * entropy + cross


def gate_prior_gradient(theta: torch.Tensor, free: torch.Tensor, pi: float, gamma: float,
                        scale: float) -> torch.Tensor:
    """d/dtheta of scale * sum_j R(theta_j) over the free gates (0 elsewhere), computed with
    the arithmetic autograd uses for that expression (as `BernoulliGating` writes it:
    `gate_regulariser` at the free gates, fixed gates constant), so the result equals
    autograd's gradient bit for bit (tests/test_bernoulli.py): the same products and quotients,
    summed over the six paths from theta to R in the order the engine accumulates them."""
    # autograd's incoming gradient (a 0-dim product with the Python float), then its value
    # after (gamma - 1) * entropy and a negation: ge = -(that); the signs below are moved
    # through products, which is exact
    upstream = torch.ones((), dtype=theta.dtype, device=theta.device) * scale
    ge = upstream * (gamma - 1.0)
    x = torch.where(free, theta, 0.5)
    u = 1.0 - x
    # the engine's order: the cross term's (1 - theta) path, its theta path, then the
    # entropy's xlogy(1 - theta, 1 - theta) (other, then self), then xlogy(theta, theta)
    # (self, other)
    acc = upstream * math.log1p(-pi) - upstream * math.log(pi)
    acc = acc + ge * u / u
    acc = acc + ge * torch.xlogy(u != 0, u)
    acc = acc - ge * torch.xlogy(x != 0, x)
    acc = acc - ge * x / x
    return torch.where(free, acc, 0)


class _GaussianPrior(torch.autograd.Function):
    """sum_l (w_l * w_l).sum() / (2 sigma^2) with the same value and the same gradients, bit
    for bit, as that expression under autograd (whose backward forms grad * w twice and adds
    the two), built from one product per weight instead of three and no per-layer graph."""

    @staticmethod
    def forward(ctx, scale: float, *weights: torch.Tensor) -> torch.Tensor:
        ctx.scale = scale
        ctx.save_for_backward(*weights)
        total = weights[0].new_zeros(())
        for w in weights:
            total = total + (w * w).sum() / scale
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grads = []
        scaled = grad / ctx.scale
        for w in ctx.saved_tensors:
            g = w * scaled
            grads.append(g.add_(g))
        return (None, *grads)


def gaussian_prior(weights: list[torch.Tensor], sigma: float) -> torch.Tensor:
    """-log N(w; 0, sigma^2) summed over `weights`, without constants: sum w^2 / (2 sigma^2)."""
    return _GaussianPrior.apply(2 * sigma * sigma, *weights)


def _prior_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weights the weight prior covers: every Linear/Conv2d weight (biases carry none)."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def per_sample_losses(loss_fn, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example losses via loss_fn(..., reduction='none'); ConfigError if unsupported."""
    try:
        per = loss_fn(logits, y, reduction="none")
    except TypeError:
        per = None
    if per is None or per.dim() == 0 or per.shape[0] != logits.shape[0]:
        raise ConfigError("estimators 'reinforce' and 'exact' need per-example losses: the "
                          "loss function must accept reduction='none'; use estimator 'st'")
    return per.reshape(per.shape[0], -1).mean(dim=1)


@dataclass
class BernoulliGating(PruningMethod):
    """Learned Bernoulli unit gates driven to {0, 1}; removed units are shrunk away."""

    estimator: str = "st"
    pi: float = 0.05
    gamma: float = 2.0
    penalty_scale: float = 1.0
    weight_prior: str = "gaussian"
    prior_sigma: float = 1.0
    gaussian_prior_as: str = "loss"
    gate_prior_as: str = "loss"
    mixture_sigma: float = 0.05
    mixture_weight: float = 0.5
    theta_init: float = 0.9
    lr_theta: float = 1.0
    threshold: float = 0.05
    shrink: bool = True
    gate_at: str = "output"
    layers: list[str] | None = None
    baseline: str = "loo"
    baseline_momentum: float = 0.9
    max_exact_units: int = 64
    n_train: int | None = None
    on_empty_layer: str = "keep"
    finalize: bool = True
    records_per_epoch: int = 4
    gate_inputs: bool = False
    feature_pi: float | None = None
    shrink_every: int = 50
    warmup: float = 0.0
    penalty_ramp: float = 0.0
    gamma_final: float | None = None
    gamma_ramp: float = 0.25

    name = "bernoulli"
    loss_scaling_ok = False  # gate gradients are read after the step, outside the optimizer
    ddp_ok = False  # removes units physically mid-training

    def __post_init__(self) -> None:
        _choice("estimator", self.estimator, ESTIMATORS)
        _choice("baseline", self.baseline, BASELINES)
        _choice("weight_prior", self.weight_prior, WEIGHT_PRIORS)
        _choice("gaussian_prior_as", self.gaussian_prior_as, ("loss", "gradient"))
        _choice("gate_prior_as", self.gate_prior_as, ("loss", "gradient"))
        _choice("on_empty_layer", self.on_empty_layer, EMPTY_LAYER)
        _choice("gate_at", self.gate_at, GATE_POINTS)
        check_range("threshold", self.threshold, 0.0, 0.5, low_inclusive=False,
                    high_inclusive=False)
        check_range("pi", self.pi, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        if self.feature_pi is not None:
            check_range("feature_pi", self.feature_pi, 0.0, 1.0, low_inclusive=False,
                        high_inclusive=False)
            if not self.gate_inputs:
                raise ConfigError("feature_pi is the prior of the input-feature gates: it needs "
                                  "gate_inputs=True")
        check_range("gamma", self.gamma, 0.0)
        check_range("penalty_scale", self.penalty_scale, 0.0)
        check_range("prior_sigma", self.prior_sigma, 0.0, low_inclusive=False)
        check_range("mixture_sigma", self.mixture_sigma, 0.0, low_inclusive=False)
        check_range("mixture_weight", self.mixture_weight, 0.0, 1.0)
        check_range("lr_theta", self.lr_theta, 0.0, low_inclusive=False)
        check_range("baseline_momentum", self.baseline_momentum, 0.0, 1.0,
                    high_inclusive=False)
        check_range("max_exact_units", self.max_exact_units, 1)
        check_range("records_per_epoch", self.records_per_epoch, 0)
        check_range("shrink_every", self.shrink_every, 1)
        check_range("warmup", self.warmup, 0.0, 1.0, high_inclusive=False)
        check_range("penalty_ramp", self.penalty_ramp, 0.0, 1.0)
        if self.gamma_final is not None:
            check_range("gamma_final", self.gamma_final, self.gamma)
        check_range("gamma_ramp", self.gamma_ramp, 0.0, 1.0, low_inclusive=False)
        if self.warmup + self.penalty_ramp >= 1.0:
            raise ConfigError(f"warmup + penalty_ramp must be below 1 (a fraction of training "
                              f"must remain for gating at full cost); got {self.warmup:g} + "
                              f"{self.penalty_ramp:g}")
        if self.n_train is not None:
            check_range("n_train", self.n_train, 1)
        if not self.threshold < self.theta_init <= 1.0:
            raise ConfigError(
                f"theta_init must be in (threshold, 1] = ({self.threshold:g}, 1], got "
                f"{self.theta_init!r}: at or below the threshold every unit is pruned at once"
            )

    # ------------------------------------------------------------------ setup
    def attach(self, ctx: TrainContext) -> None:
        super().attach(ctx)
        self.gates: BernoulliGates | GroupGates | None
        if is_chain(ctx.model):
            self.gates = BernoulliGates(
                ctx.model, init=self.theta_init, at=self.gate_at, layers=self.layers,
                straight_through=self.estimator == "st", features=self.gate_inputs)
        else:
            self.gates = self._group_gates(ctx)
        n_units = sum(t.numel() for t in self.gates.theta.values())
        if self.estimator == "exact" and n_units > self.max_exact_units:
            self.gates.remove()
            raise ConfigError(
                f"estimator 'exact' needs one extra forward pass per gated unit; the model has "
                f"{n_units} gated units, more than max_exact_units={self.max_exact_units}: use "
                "estimator 'st' or 'reinforce' for large layers (or raise max_exact_units)"
            )
        self.start_widths = {n: t.numel() for n, t in self.gates.theta.items()}
        self._hook_prior_gradient(ctx.optimizer)
        self.feature_sites = list(self.gates.features)
        self.orig_index = {n: torch.arange(k) for n, k in self.start_widths.items()}
        self.step = 0
        self.ema: float | None = None
        self.input_shape: tuple[int, ...] | None = None
        self.flops_now = self.flops_start = 0
        self.train_flops = self.train_flops_dense = 0.0
        self.trajectory: list[dict[str, Any]] = []
        self.empty_layer_events: list[dict[str, Any]] = []
        self.shrink_events = 0
        self.undecided_at_end: int | None = None
        self.max_undecided_distance: float | None = None
        self.final_widths: dict[str, int] | None = None
        self._fixed_cost_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _group_gates(self, ctx: TrainContext) -> GroupGates:
        """Gates on the channel groups of a graph model (refusals in one line)."""
        if self.gate_inputs:
            raise ConfigError("gate_inputs gates the flattened inputs of a chain's Linear "
                              "layer; graph models gate their channel groups only")
        if self.gate_at != "output":
            raise ConfigError("gate_at='layer' is a chain option; graph models gate each "
                              "channel where its consumers read it (gate_at='output')")
        shape = getattr(ctx.data, "input_shape", None)
        p = next(ctx.model.parameters())
        x = None if shape is None else torch.zeros(1, *shape, device=p.device, dtype=p.dtype)
        groups = method_groups(ctx.model, x, "method 'bernoulli'")
        return GroupGates(ctx.model, groups, init=self.theta_init, layers=self.layers,
                          straight_through=self.estimator == "st")

    def _n(self) -> int:
        return self.n_train or self._n_est

    def _warmup_steps(self) -> int:
        return int(round(self.warmup * self.ctx.total_steps))

    def gate_cost_factor(self, step: int | None = None) -> float:
        """Weight of the gate prior at `step` (default: the current one): 0 during the warm-up,
        then rising linearly to 1 over `penalty_ramp` of training, then 1."""
        step = self.step if step is None else step
        start = self._warmup_steps()
        if step < start:
            return 0.0
        ramp = self.penalty_ramp * self.ctx.total_steps
        return 1.0 if ramp <= 0 else min(1.0, (step - start + 1) / ramp)

    def gamma_at(self, step: int | None = None) -> float:
        """Hyper-prior strength at `step`: `gamma`, rising linearly to `gamma_final` over the
        last `gamma_ramp` of training (never before the warm-up ends; constant `gamma` when
        gamma_final is None)."""
        if self.gamma_final is None:
            return self.gamma
        step = self.step if step is None else step
        end = self.ctx.total_steps
        start = max(self._warmup_steps(), int(round((1.0 - self.gamma_ramp) * end)))
        frac = min(1.0, max(0.0, (step - start) / max(1, end - start)))
        return self.gamma + frac * (self.gamma_final - self.gamma)

    def _forward_flops(self, model: nn.Module) -> int:
        return int(forward_flops(model, self.input_shape))

    # ------------------------------------------------------------------ loss
    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn):
        gates = self.gates
        if gates is None:  # finalized: plain training of the deterministic network
            return loss_fn(model(x), y)
        batch = x.shape[0]
        if self.input_shape is None:
            self.input_shape = tuple(x.shape[1:])
            self._n_est = self.ctx.steps_per_epoch * batch
            self.flops_now = self.flops_start = self._forward_flops(model)
            self._record()
        extra_passes = 0
        # theta is frozen in this step (warm-up): no gradient path to it is needed
        gates.theta_grad = self.step + 1 > self._warmup_steps()
        if self.estimator == "st":
            loss = loss_fn(model(x), y)
        else:
            per = per_sample_losses(loss_fn, model(x), y)
            loss = per.mean()
            xi = {n: v.detach() for n, v in gates.last_xi.items()}
            if self.estimator == "reinforce":
                grads_src = self._reinforce_surrogate(per.detach(), xi)
            else:
                grads_src, extra_passes = self._two_point_surrogate(model, x, y, loss_fn,
                                                                    per.detach(), xi)
            loss = loss + (grads_src - grads_src.detach())
        self.train_flops += (3 + extra_passes) * self.flops_now * batch
        self.train_flops_dense += 3 * self.flops_start * batch
        return loss

    def _safe_theta(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        free = self.gates.free(name)
        return torch.where(free, self.gates.theta[name], 0.5), free

    def _reinforce_surrogate(self, per: torch.Tensor, xi: dict[str, torch.Tensor]):
        b = per.shape[0]
        if self.baseline == "loo" and b > 1:
            base = (per.sum() - per) / (b - 1)
        elif self.baseline == "ema" and self.ema is not None:
            base = torch.full_like(per, self.ema)
        else:
            base = torch.zeros_like(per)
        if self.baseline == "ema":
            m = float(per.mean())
            self.ema = m if self.ema is None else (
                self.baseline_momentum * self.ema + (1 - self.baseline_momentum) * m)
        total = per.new_zeros(())
        adv = (per - base)[:, None]
        for name in self.gates.theta:
            theta, free = self._safe_theta(name)
            lq = log_prob(xi[name], theta) * free
            total = total + (adv * lq).sum(dim=1).mean()
        return total

    @torch.no_grad()
    def _two_point_gradients(self, model, x, y, loss_fn, per, xi) -> tuple[dict, int]:
        gates = self.gates
        grads = {n: torch.zeros_like(t) for n, t in gates.theta.items()}
        passes = 0
        try:
            for name in gates.theta:
                for j in self.gates.free(name).nonzero().flatten().tolist():
                    forced = {n: v.clone() for n, v in xi.items()}
                    forced[name][:, j] = 1.0 - forced[name][:, j]
                    gates.forced = forced
                    flipped = per_sample_losses(loss_fn, model(x), y)
                    sign = 2.0 * xi[name][:, j] - 1.0
                    grads[name][j] = (sign * (per - flipped)).mean()
                    passes += 1
        finally:
            gates.forced = None
            gates.last_xi = xi
        return grads, passes

    def _two_point_surrogate(self, model, x, y, loss_fn, per, xi):
        grads, passes = self._two_point_gradients(model, x, y, loss_fn, per, xi)
        total = per.new_zeros(())
        for name, theta in self.gates.theta.items():
            total = total + (theta * grads[name]).sum()
        return total, passes

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        weights = self._weight_prior(model) / self._n()
        if self.gates is None:
            return weights
        factor = self.gate_cost_factor()
        if factor == 0.0 or self.gate_prior_as == "gradient":
            # warm-up: weights + 0 * R(theta) is weights, theta is frozen; "gradient": the
            # theta update adds the gate prior's gradient itself
            return weights
        total = weights.new_zeros(())
        theta = self.gates.theta
        for names, pi in self._prior_groups():
            total = self._gate_prior_sum(total, [theta[n] for n in names], pi)
        return weights + total * (self.penalty_scale * factor / self._n())

    def _prior_groups(self) -> list[tuple[list[str], float]]:
        """The gated layers grouped by their prior's pi: one group, unless `feature_pi` gives
        the input-feature gates a pi of their own."""
        if self.feature_pi is None or not self.feature_sites:
            return [(list(self.gates.theta), self.pi)]
        sites = set(self.feature_sites)
        units = [n for n in self.gates.theta if n not in sites]
        features = [n for n in self.gates.theta if n in sites]
        return [(g, pi) for g, pi in ((units, self.pi), (features, self.feature_pi)) if g]

    def _gate_prior_gradients(self, step: int, flat: torch.Tensor, free: torch.Tensor,
                              sizes: dict[str, int]) -> dict[str, torch.Tensor]:
        """With gate_prior_as="gradient": the gate prior's gradient per layer, for the loss of
        the step just taken (its weight and gamma are those of step - 1, as penalty() saw
        them), from the current thetas `flat` (all layers, concatenated, `sizes` units each)
        and their `free` mask; a group of layers with no free gate gets none, as under
        autograd."""
        factor = self.gate_cost_factor(step - 1)
        if self.gate_prior_as != "gradient" or factor == 0.0:
            return {}
        scale = self.penalty_scale * factor / self._n()
        gamma = self.gamma_at(step - 1)
        out: dict[str, torch.Tensor] = {}
        for names, pi in self._prior_groups():
            if len(names) == len(sizes):
                value, mask = flat, free
            else:  # feature_pi: the group's layers out of the concatenation
                parts = dict(zip(sizes, flat.split(list(sizes.values()))))
                value = torch.cat([parts[n] for n in names])
                mask = (value > 0) & (value < 1)
            if not bool(mask.any()):
                continue
            grad = gate_prior_gradient(value, mask, pi, gamma, scale)
            out.update(zip(names, grad.split([sizes[n] for n in names])))
        return out

    def _gate_prior_sum(self, total: torch.Tensor, thetas: list[torch.Tensor],
                        pi: float) -> torch.Tensor:
        """`total` plus sum_j R(theta_j) over `thetas`, all of them as one vector (elementwise
        the same arithmetic as per layer, fewer small ops); fixed gates (theta in {0, 1}) add
        R(0) or R(1) and no gradient."""
        raw = torch.cat(thetas) if len(thetas) > 1 else thetas[0]
        value = raw.detach()
        free = (value > 0) & (value < 1)
        r0, r1 = self._fixed_costs(value, pi)
        per_gate = torch.where(value > 0, r1, r0)
        if bool(free.any()):  # else every gate is decided: the same value, no gradient
            r = gate_regulariser(torch.where(free, raw, 0.5), pi, self.gamma_at())
            per_gate = torch.where(free, r, per_gate)
        for part in per_gate.split([t.numel() for t in thetas]):
            total = total + part.sum()
        return total

    def _fixed_costs(self, like: torch.Tensor, pi: float) -> tuple[torch.Tensor, torch.Tensor]:
        """R(0) and R(1) for prior `pi` as 0-dim tensors like `like` (cached): at theta in
        {0, 1} the entropy terms are exactly zero, so they do not depend on gamma."""
        key = (like.dtype, like.device, pi)
        cache = self._fixed_cost_cache
        if key not in cache:
            ends = gate_regulariser(like.new_tensor([0.0, 1.0]), pi, self.gamma)
            cache[key] = (ends[0], ends[1])
        return cache[key]

    def _prior_by_gradient(self) -> bool:
        return self.weight_prior == "gaussian" and self.gaussian_prior_as == "gradient"

    def _hook_prior_gradient(self, optimizer: torch.optim.Optimizer) -> None:
        """Add the Gaussian prior's gradient w / (sigma^2 N) to every Linear/Conv2d weight's
        gradient just before each `optimizer.step()`. The weights are those of the model this
        optimizer trains (`ctx.model` now): shrinking builds a new model and optimizer and
        hooks it again, so the list is read once here, not walked every step."""
        self._prior_hooked_on = optimizer
        if not self._prior_by_gradient():
            return
        weights = _prior_weights(self.ctx.model)

        def add_prior_gradient(_opt, _args, _kwargs) -> None:
            scale = 1.0 / (self.prior_sigma * self.prior_sigma * self._n())
            with torch.no_grad():
                for w in weights:
                    if w.grad is not None:
                        w.grad.add_(w, alpha=scale)

        optimizer.register_step_pre_hook(add_prior_gradient)

    def _weight_prior(self, model: nn.Module) -> torch.Tensor:
        p = next(model.parameters())
        total = p.new_zeros(())
        if self.weight_prior == "none" or self._prior_by_gradient():
            return total
        s1 = self.prior_sigma
        weights = _prior_weights(model)
        if self.weight_prior == "gaussian":
            return gaussian_prior(weights, s1) if weights else total
        s2, a = self.mixture_sigma, self.mixture_weight
        for w in weights:
            log1 = -0.5 * (w / s1) ** 2 - math.log(s1) + math.log(max(a, 1e-300))
            log2 = -0.5 * (w / s2) ** 2 - math.log(s2) + math.log(max(1 - a, 1e-300))
            total = total - torch.logaddexp(log1, log2).sum()
        return total

    # ------------------------------------------------------------------ updates
    @torch.no_grad()
    def after_step(self, step: int) -> None:
        self.step = step
        gates = self.gates
        if gates is None:
            return
        if step <= self._warmup_steps():  # frozen theta
            for theta in gates.theta.values():
                theta.grad = None
            removed_any = False
        else:
            removed_any = self._update_theta(step)
        self._pending = getattr(self, "_pending", False) or removed_any
        if self._pending and self.shrink and step % self.shrink_every == 0:
            self._shrink()
            self._pending = False
        spe = self.ctx.steps_per_epoch
        if self.records_per_epoch and step % max(1, spe // self.records_per_epoch) == 0:
            self._record()

    def _update_theta(self, step: int) -> bool:
        """Projected SGD step on the free gates, then fix gates above 1 - threshold on and
        remove those below the threshold; all layers at once (as one vector), layer by layer
        only where a unit is removed. Returns whether a unit was removed."""
        thetas = self.gates.theta
        sizes = {n: t.numel() for n, t in thetas.items()}
        flat = torch.cat(list(thetas.values()))
        free = (flat > 0) & (flat < 1)
        grads = [t.grad for t in thetas.values()]
        if not bool(free.any()):  # every gate decided: nothing moves
            for theta in thetas.values():
                theta.grad = None
            return False
        prior = self._gate_prior_gradients(step, flat, free, sizes)
        if prior:  # theta's gradient is the data term's plus the prior's, as autograd adds them
            grads = [g if n not in prior else prior[n] if g is None else g + prior[n]
                     for n, g in zip(thetas, grads)]
        if all(g is not None for g in grads):
            new = (flat - self.lr_theta * torch.cat(grads)).clamp_(0.0, 1.0)
            flat = torch.where(free, new, flat)
        elif any(g is not None for g in grads):  # some layers got no gradient: no step there
            parts = []
            for t, g in zip(thetas.values(), grads):
                parts.append(t if g is None else (t - self.lr_theta * g).clamp_(0.0, 1.0))
            flat = torch.where(free, torch.cat(parts), flat)
        low = free & (flat < self.threshold)
        flat.masked_fill_(free & (flat > 1.0 - self.threshold), 1.0)
        any_low = bool(low.any())
        counts = list(sizes.values())
        lows = low.split(counts)
        for (name, theta), part, low_part in zip(thetas.items(), flat.split(counts), lows):
            theta.copy_(part)
            theta.grad = None
            if any_low and bool(low_part.any()):
                before = theta.clone()
                theta.masked_fill_(low_part, 0.0)
                if not bool((theta > 0).any()):
                    self._empty_layer(name, theta, before, step)
        return any_low

    def _empty_layer(self, name: str, theta: torch.Tensor, before: torch.Tensor,
                     step: int) -> None:
        if self.on_empty_layer == "error":
            raise ConfigError(
                f"every unit of layer '{name}' was pruned at step {step}; a layer cannot vanish: "
                "raise pi, lower gamma or penalty_scale, or use on_empty_layer='keep'"
            )
        j = int(before.argmax())
        theta[j] = 1.0
        self.empty_layer_events.append({"layer": name, "step": step, "kept_unit":
                                        int(self.orig_index[name][j])})

    def _shrink(self, rule: str = "alive") -> None:
        gates = self.gates
        masks = {n: m for n, m in gates.unit_masks(rule).items() if not bool(m.all())}
        thetas = {n: t.detach() for n, t in gates.theta.items()}
        if not masks:
            return
        gates.remove()  # hooks must not be copied into the new model
        if isinstance(gates, GroupGates):
            return self._shrink_groups(gates, masks, thetas)
        model, opt = shrink_with_optimizer(self.ctx.model, masks, self.ctx.optimizer)
        keep = dict(masks)
        for feat, (_, before) in gates.features.items():
            if before in masks:  # the features of removed filters/units leave with them
                m = masks[before]
                keep[feat] = m.repeat_interleave(thetas[feat].numel() // m.numel())
        for n, m in keep.items():
            thetas[n] = thetas[n][m.to(thetas[n].device)]
            self.orig_index[n] = self.orig_index[n][m.cpu()]
        self.gates = BernoulliGates(
            model, thetas, at=self.gate_at, layers=[n for n in thetas if n not in gates.features],
            straight_through=self.estimator == "st", features=bool(gates.features))
        self.ctx.model, self.ctx.optimizer = model, opt
        self._hook_prior_gradient(opt)
        self.shrink_events += 1
        if self.input_shape is not None:
            self.flops_now = self._forward_flops(model)

    def _shrink_groups(self, gates: GroupGates, masks: dict[str, torch.Tensor],
                       thetas: dict[str, torch.Tensor]) -> None:
        """`_shrink` for graph models: the groups are renumbered, not traced again."""
        groups = list(gates.groups.values())
        model, opt = shrink_groups_with_optimizer(self.ctx.model, masks, self.ctx.optimizer,
                                                  groups=groups)
        new_groups = remap_groups(self.ctx.model, groups, masks)
        for n, m in masks.items():
            thetas[n] = thetas[n][m.to(thetas[n].device)]
            self.orig_index[n] = self.orig_index[n][m.cpu()]
        self.gates = GroupGates(model, new_groups, thetas, layers=list(thetas),
                                straight_through=self.estimator == "st")
        self.ctx.model, self.ctx.optimizer = model, opt
        self._hook_prior_gradient(opt)
        self.shrink_events += 1
        if self.input_shape is not None:
            self.flops_now = self._forward_flops(model)

    def after_epoch(self, epoch: int) -> None:
        if self.gates is None:
            return
        if self.finalize and (epoch >= self.ctx.epochs or self.step >= self.ctx.total_steps):
            self.finalize_network()

    @torch.no_grad()
    def finalize_network(self) -> nn.Module:
        """Round undecided gates, shrink to the units with theta = 1 and drop the gates; the
        deterministic network replaces ctx.model (and is returned)."""
        gates = self.gates
        if gates is None:
            return self.ctx.model
        undecided, dist = 0, 0.0
        for name, theta in gates.theta.items():
            free = gates.free(name)
            undecided += int(free.sum())
            if bool(free.any()):
                t = theta[free]
                dist = max(dist, float(torch.minimum(t, 1 - t).max()))
            before = theta.clone()
            theta.copy_((theta >= 0.5).to(theta.dtype))
            if not bool((theta > 0).any()):
                self._empty_layer(name, theta, before, self.step)
        self.undecided_at_end, self.max_undecided_distance = undecided, dist
        self._record()
        self._shrink(rule="final")
        for feat, (linear, _) in self.gates.features.items():
            dropped = self.gates.theta[feat].detach() == 0
            self.ctx.model.get_submodule(linear).weight[:, dropped] = 0.0
        self.final_widths = self.gates.counts()
        self.final_theta = {n: t.detach().cpu().clone() for n, t in self.gates.theta.items()}
        self.gates.remove()
        self.gates = None
        self.ctx.model.train(True)
        return self.ctx.model

    # ------------------------------------------------------------------ reporting
    def _record(self) -> None:
        if self.gates is None:
            return
        row: dict[str, Any] = {"step": self.step}
        for name, theta in self.gates.theta.items():
            full = torch.zeros(self.start_widths[name])
            full[self.orig_index[name]] = theta.detach().cpu().float()
            row[name] = full.tolist()
        self.trajectory.append(row)

    def widths(self) -> dict[str, int]:
        """Current units per gated layer (alive, theta > 0)."""
        if self.gates is None:
            return dict(self.final_widths or {})
        return self.gates.counts()

    def metrics(self) -> dict[str, float]:
        w = self.widths()
        out: dict[str, float] = {"units": sum(w.values())}
        out.update({f"units[{n}]": k for n, k in w.items()})
        if self.gates is not None:
            out["undecided"] = sum(int(self.gates.free(n).sum()) for n in self.gates.theta)
        else:
            out["undecided"] = 0
        if self.train_flops_dense:
            out["train_flops_ratio"] = self.train_flops / self.train_flops_dense
        return out

    def _outcome_summary(self) -> dict[str, Any]:
        """The summary fields every gate method reports: gates left undecided at the end and the
        training FLOPs spent against dense training."""
        return {
            "undecided_at_end": self.undecided_at_end,
            "max_undecided_distance": self.max_undecided_distance,
            "train_flops": self.train_flops,
            "train_flops_dense": self.train_flops_dense,
            "train_flops_saved": (1.0 - self.train_flops / self.train_flops_dense
                                  if self.train_flops_dense else None),
        }

    def summary(self) -> dict[str, Any]:
        """Final architecture, training FLOPs, gate statistics (JSON-friendly)."""
        return {
            "start_widths": dict(self.start_widths),
            "final_widths": self.widths(),
            "feature_sites": list(self.feature_sites),
            **self._outcome_summary(),
            "shrink_events": self.shrink_events,
            "empty_layer_events": list(self.empty_layer_events),
        }

    # what a resumed run needs besides theta (see load_state_dict)
    resume_attributes = ("step", "ema", "input_shape", "_n_est", "flops_now", "flops_start",
                         "train_flops", "train_flops_dense", "trajectory", "empty_layer_events",
                         "shrink_events", "undecided_at_end", "max_undecided_distance",
                         "final_widths", "final_theta", "_pending", "orig_index")

    def state_dict(self) -> dict[str, Any]:
        theta = {}
        if self.gates is not None:
            theta = {n: t.detach().cpu().clone() for n, t in self.gates.theta.items()}
        ctx = getattr(self, "ctx", None)
        state = super().state_dict()
        state.update({"masks": None, "theta": theta, "gated": self.gates is not None,
                      "orig_index": dict(getattr(self, "orig_index", {})),
                      "summary": self.summary() if hasattr(self, "start_widths") else {},
                      # the shrunk network no longer fits the registry model: its architecture
                      # (prunelab.shrink.from_architecture) rebuilds it for the saved weights
                      "architecture": architecture(ctx.model) if ctx is not None else None})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Gates with the saved thetas on `ctx.model` (the Trainer has rebuilt it at its saved,
        possibly shrunk, architecture and made its optimizer), the prior-gradient hook on that
        optimizer, and the counters, logs and trajectory; no gates once finalized."""
        super().load_state_dict(state)
        if self.gates is None or "gated" not in state:
            return
        old = self.gates
        old.remove()
        self._fixed_cost_cache = {}
        if not state["gated"]:
            self.gates = None
        else:
            theta = {n: t.to(self.ctx.device) for n, t in state["theta"].items()}
            self.gates = self._gates_for(self.ctx.model, theta, old)
        if self._prior_hooked_on is not self.ctx.optimizer:
            self._hook_prior_gradient(self.ctx.optimizer)

    def _gates_for(self, model: nn.Module, theta: dict[str, torch.Tensor],
                   like: BernoulliGates | GroupGates) -> BernoulliGates | GroupGates:
        """Gates of the same kind as `like` on `model`, with the given thetas."""
        st = self.estimator == "st"
        if isinstance(like, GroupGates):
            shape = getattr(self.ctx.data, "input_shape", None)
            p = next(model.parameters())
            x = None if shape is None else torch.zeros(1, *shape, device=p.device, dtype=p.dtype)
            groups = method_groups(model, x, "method 'bernoulli'")
            missing = sorted(set(theta) - {g.name for g in groups})
            if missing:
                raise ConfigError(f"cannot resume method 'bernoulli': the rebuilt network has "
                                  f"no channel group '{missing[0]}'")
            return GroupGates(model, groups, theta, layers=list(theta), straight_through=st)
        return BernoulliGates(model, theta, at=self.gate_at,
                              layers=[n for n in theta if n not in like.features],
                              straight_through=st, features=bool(like.features))


__all__ = ["BernoulliGating", "gate_regulariser", "per_sample_losses"]
