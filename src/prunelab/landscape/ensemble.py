"""Train R independent small networks at once, each with its own seed (init and batch order).

Every member's parameters are stacked along a leading axis of size R and trained by one
optimizer: the loss is the sum of the members' mean losses, so each member's gradient is
exactly its own, and SGD (momentum, Nesterov, weight decay), Adam and AdamW update every
entry independently. Member r therefore follows the same trajectory, to float rounding, as
`prunelab.train.Trainer` run alone with `seed = seeds[r]` (batch order) and the init built
after `torch.manual_seed(init_seeds[r])`; `tests/test_census.py` checks this.

Two backends compute the stacked forward pass:
- `bmm`: for `nn.Sequential` chains of Linear layers, Flatten and elementwise activations
  (all `prunelab.models.mlp` nets): one batched matmul per layer. The fastest on CPU
  (benchmarks/ensemble_vs_loop.py measures it against `vmap`).
- `vmap`: any model, via `torch.func.functional_call` under `torch.vmap`. Buffers (BatchNorm
  running statistics) are stacked per member like the parameters: training runs the base model
  in train mode, so each member's BatchNorm normalises with its own batch statistics and
  updates its own running statistics in place; evaluation runs in eval mode on them. Dropout
  draws different masks per member (`randomness="different"`), so with dropout a member no
  longer follows its lone Trainer run exactly.

Methods: dense (`PruningMethod`), `AnnealedPruning` (each member anneals its own mask, same
schedule and selection rule as the method) and `FixedMask` (one mask for all members, or
per-member stacked masks through `masks=`). Pruned weights stay exactly zero: gradients are
masked before each step, weights re-zeroed after it, optimizer state cleared at newly pruned
entries, as `prunelab.masks.MaskEnforcer` does for one model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from prunelab.config import TrainConfig
from prunelab.data import Dataset
from prunelab.errors import ConfigError
from prunelab.masks import prunable_parameters
from prunelab.methods.annealed import AnnealedPruning, AnnealingPlan, protect_top
from prunelab.methods.base import PruningMethod
from prunelab.methods.magnitude import FixedMask
from prunelab.train import lr_factor, make_optimizer

BACKENDS = ("auto", "bmm", "vmap")
_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.GELU, nn.ELU, nn.Identity)


def _leaves(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    out = []
    for name, child in model.named_children():
        full = f"{prefix}.{name}" if prefix else name
        out += _leaves(child, full) if isinstance(child, nn.Sequential) else [(full, child)]
    return out


def bmm_supported(model: nn.Module) -> bool:
    """True for Sequential chains of Linear, Flatten and elementwise activations."""
    return isinstance(model, nn.Sequential) and all(
        isinstance(m, (nn.Linear, nn.Flatten, *_ELEMENTWISE)) for _, m in _leaves(model)
    )


class _Holder(nn.Module):
    """Carries the stacked parameters so the optimizer factory of `prunelab.train` applies."""

    def __init__(self, params: dict[str, torch.Tensor]):
        super().__init__()
        self.plist = nn.ParameterList([nn.Parameter(p) for p in params.values()])
        self.names = list(params)

    def as_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.plist))


@dataclass
class EnsembleResult:
    """Final stacked parameters (R leading), masks and per-member final metrics."""

    params: dict[str, torch.Tensor]
    initial_params: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor] | None
    seeds: list[int]
    final: dict[str, torch.Tensor]  # train_loss, train_accuracy, test_loss, test_accuracy: (R,)
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # stacked, final
    initial_buffers: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.seeds)

    def member_state(self, r: int, initial: bool = False) -> dict[str, torch.Tensor]:
        """One member's weights (and buffers, e.g. BatchNorm statistics) as a state dict of
        the base model."""
        src = self.initial_params if initial else self.params
        bufs = self.initial_buffers if initial else self.buffers
        return {k: v[r].clone() for k, v in {**src, **bufs}.items()}

    def member_masks(self, r: int) -> dict[str, torch.Tensor] | None:
        return None if self.masks is None else {k: v[r].clone() for k, v in self.masks.items()}


class EnsembleTrainer:
    """Trains `len(seeds)` copies of the model built by `model_fn` on `data`, member r with
    batch order from `seeds[r]` and init from `init_seeds[r]` (default: the same seeds).

    `config` is the shared recipe (its `seed`/`init_seed` are ignored); `method` is dense,
    `AnnealedPruning` or `FixedMask`; `masks` gives stacked per-member fixed masks.
    """

    def __init__(
        self,
        model_fn: Callable[[], nn.Module],
        data: Dataset,
        config: TrainConfig,
        seeds: Sequence[int],
        *,
        method: PruningMethod | None = None,
        init_seeds: Sequence[int] | None = None,
        initial_states: Sequence[dict[str, torch.Tensor]] | None = None,
        masks: dict[str, torch.Tensor] | None = None,
        backend: str = "auto",
    ):
        self.config = config.validate()
        if config.device != "cpu":
            raise ConfigError("ensemble training runs on cpu only; set device cpu")
        if len(seeds) < 1:
            raise ConfigError("ensemble needs at least one seed")
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}; got '{backend}'")
        self.method = method or PruningMethod()
        if type(self.method) not in (PruningMethod, AnnealedPruning, FixedMask):
            raise ConfigError(f"ensemble training supports methods dense, annealed and "
                              f"fixed-mask; got '{self.method.name}'")
        self.data = data
        self.seeds = [int(s) for s in seeds]
        self.init_seeds = [int(s) for s in (init_seeds if init_seeds is not None else seeds)]
        if len(self.init_seeds) != len(self.seeds):
            raise ConfigError("init_seeds must have one entry per seed")
        models = []
        for r, s in enumerate(self.init_seeds):
            torch.manual_seed(s)
            m = model_fn()
            if initial_states is not None:
                m.load_state_dict(initial_states[r])
            models.append(m)
        self.base = models[0]
        self.backend = backend
        if backend == "auto":
            self.backend = "bmm" if bmm_supported(self.base) else "vmap"
        elif backend == "bmm" and not bmm_supported(self.base):
            raise ConfigError("backend 'bmm' needs a Sequential of Linear layers, Flatten and "
                              "elementwise activations; use backend 'vmap'")
        names = [n for n, _ in self.base.named_parameters()]
        self.initial = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models])
                        for n in names}
        self.initial_buffers = {
            n: torch.stack([dict(m.named_buffers())[n].detach() for m in models])
            for n, _ in self.base.named_buffers()}
        self.buffers = {k: v.clone() for k, v in self.initial_buffers.items()}
        self.prunable = list(prunable_parameters(self.base))
        self.masks = self._initial_masks(masks)

    def _initial_masks(self, masks: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        r = len(self.seeds)
        if masks is not None:
            out = {}
            for n, m in masks.items():
                if n not in self.initial or tuple(m.shape) != tuple(self.initial[n].shape):
                    raise ConfigError(f"stacked mask '{n}' must have shape "
                                      f"{tuple(self.initial.get(n, torch.empty(0)).shape)}")
                out[n] = m.bool().clone()
            return out
        if isinstance(self.method, FixedMask):
            fixed = self.method.initial_masks(self.base)
            return {n: m.unsqueeze(0).expand(r, *m.shape).clone() for n, m in fixed.items()}
        if isinstance(self.method, AnnealedPruning):
            return {n: torch.ones_like(self.initial[n], dtype=torch.bool) for n in self.prunable}
        return {}

    # ------------------------------------------------------------------ forward

    def forward(self, params: dict[str, torch.Tensor], x: torch.Tensor,
                buffers: dict[str, torch.Tensor] | None = None, *, train: bool = False
                ) -> torch.Tensor:
        """Stacked logits (R, B, classes) for stacked inputs x (R, B, ...): in train mode
        (batch statistics; `buffers` updated in place) or eval mode. `buffers` defaults to the
        trainer's current stacked buffers."""
        if self.backend == "vmap":
            from torch.func import functional_call

            buffers = self.buffers if buffers is None else buffers
            self.base.train(train)
            return torch.vmap(lambda p, b, xb: functional_call(self.base, (p, b), (xb,)),
                              randomness="different")(params, buffers, x)
        h = x
        for name, mod in _leaves(self.base):
            if isinstance(mod, nn.Linear):
                w = params[f"{name}.weight"].transpose(1, 2)
                b = params.get(f"{name}.bias")
                h = torch.bmm(h, w) if b is None else torch.baddbmm(b.unsqueeze(1), h, w)
            elif isinstance(mod, nn.Flatten):
                h = h.reshape(h.shape[0], h.shape[1], -1)
            else:
                h = mod(h)
        return h

    @torch.no_grad()
    def evaluate(
        self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
        buffers: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-member mean loss and accuracy on (x, y) in eval mode: tensors of shape (R,).
        `buffers` (stacked) defaults to the trainer's current ones."""
        r = len(self.seeds)
        bs = self.config.eval_batch_size
        loss = torch.zeros(r)
        correct = torch.zeros(r)
        for i in range(0, x.shape[0], bs):
            xb, yb = x[i : i + bs], y[i : i + bs]
            out = self.forward(params, xb.unsqueeze(0).expand(r, *xb.shape), buffers)
            ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.repeat(r), reduction="none")
            loss += ce.view(r, -1).sum(1)
            correct += (out.argmax(-1) == yb.unsqueeze(0)).sum(1)
        n = max(x.shape[0], 1)
        return {"loss": loss / n, "accuracy": correct / n}

    @torch.no_grad()
    def predict(self, params: dict[str, torch.Tensor], x: torch.Tensor,
                buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Predicted classes (R, n) of every member on x (eval mode)."""
        r = len(self.seeds)
        bs = self.config.eval_batch_size
        outs = [self.forward(params, x[i : i + bs].unsqueeze(0).expand(r, *x[i : i + bs].shape),
                             buffers).argmax(-1) for i in range(0, x.shape[0], bs)]
        return torch.cat(outs, dim=1)

    # ------------------------------------------------------------------ training

    @torch.no_grad()
    def _anneal(self, plan: AnnealingPlan, t: int, opt: torch.optim.Optimizer,
                params: dict[str, torch.Tensor]) -> None:
        counts = plan.keep_counts(t)
        if counts is None:
            return
        r = len(self.seeds)
        groups = [self.prunable] if plan.scope == "global" else [[n] for n in self.prunable]
        for names in groups:
            k = counts["*"] if plan.scope == "global" else counts[names[0]]
            blocks = [params[n].detach().abs().masked_fill(~self.masks[n], -math.inf)
                      .reshape(r, -1) for n in names]
            if plan.scope == "global" and self.method.min_layer_keep > 0:
                blocks = [protect_top(b, self.method.min_layer_keep, stacked=True)
                          for b in blocks]
            scores = torch.cat(blocks, dim=1)
            alive = int(torch.isfinite(scores).sum(1).max())
            if alive <= k:
                continue
            keep = torch.zeros_like(scores, dtype=torch.bool)
            keep.scatter_(1, torch.topk(scores, k, dim=1, sorted=False).indices, True)
            offset = 0
            for n in names:
                size = params[n][0].numel()
                self.masks[n] = keep[:, offset : offset + size].reshape(params[n].shape)
                offset += size
        for n in self.prunable:
            p = params[n]
            p.mul_(self.masks[n])
            for value in opt.state.get(p, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    value.mul_(self.masks[n])

    def fit(self) -> EnsembleResult:
        cfg, data = self.config, self.data
        r = len(self.seeds)
        x, y = data.x_train, data.y_train
        n = x.shape[0]
        steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
        total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
        epochs = math.ceil(total_steps / steps_per_epoch)
        plan = None
        if isinstance(self.method, AnnealedPruning):
            sizes = {k: self.initial[k][0].numel() for k in self.prunable}
            plan = self.method.plan(sizes, epochs=epochs, total_steps=total_steps)
        holder = _Holder({k: v.clone() for k, v in self.initial.items()})
        params = holder.as_dict()
        initial = {k: v.detach().clone() for k, v in params.items()}  # before masking, as Trainer
        self.buffers = {k: v.clone() for k, v in self.initial_buffers.items()}
        with torch.no_grad():
            for k, m in self.masks.items():
                params[k].mul_(m)
        opt = make_optimizer(holder, cfg)
        gens = [torch.Generator().manual_seed(s) for s in self.seeds]
        start = time.perf_counter()
        history: list[dict[str, float]] = []
        step = 0
        for epoch in range(1, epochs + 1):
            orders = torch.stack([torch.randperm(n, generator=g) for g in gens])
            running, seen = torch.zeros(r), 0
            for b in range(steps_per_epoch):
                if step >= total_steps:
                    break
                idx = orders[:, b * cfg.batch_size : (b + 1) * cfg.batch_size]
                xb, yb = x[idx], y[idx]
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * lr_factor(cfg, step, total_steps)
                out = self.forward(params, xb, train=True)
                ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1),
                                     reduction="none").view(r, -1).mean(1)
                opt.zero_grad(set_to_none=True)
                ce.sum().backward()
                if self.masks:
                    with torch.no_grad():
                        for k, m in self.masks.items():
                            if params[k].grad is not None:
                                params[k].grad.mul_(m)
                opt.step()
                if self.masks:
                    with torch.no_grad():
                        for k, m in self.masks.items():
                            params[k].mul_(m)
                step += 1
                running += ce.detach() * idx.shape[1]
                seen += idx.shape[1]
                if plan is not None and plan.unit == "step":
                    self._anneal(plan, step, opt, params)
            if plan is not None and plan.unit == "epoch":
                self._anneal(plan, epoch, opt, params)
            history.append({"epoch": epoch, "step": step,
                            "train_loss_mean": float(running.mean()) / max(seen, 1)})
            if step >= total_steps:
                break
        seconds = time.perf_counter() - start
        final_params = {k: v.detach().clone() for k, v in params.items()}
        tr = self.evaluate(final_params, data.x_train, data.y_train)
        te = self.evaluate(final_params, data.x_test, data.y_test)
        final = {"train_loss": tr["loss"], "train_accuracy": tr["accuracy"],
                 "test_loss": te["loss"], "test_accuracy": te["accuracy"]}
        masks = {k: m.clone() for k, m in self.masks.items()} if self.masks else None
        return EnsembleResult(final_params, initial, masks, self.seeds, final, seconds, history,
                              {k: v.clone() for k, v in self.buffers.items()},
                              {k: v.clone() for k, v in self.initial_buffers.items()})


def train_ensemble(
    model_fn: Callable[[], nn.Module],
    data: Dataset,
    config: TrainConfig,
    seeds: Sequence[int],
    **kwargs,
) -> EnsembleResult:
    """Convenience wrapper: `EnsembleTrainer(...).fit()`."""
    return EnsembleTrainer(model_fn, data, config, seeds, **kwargs).fit()
