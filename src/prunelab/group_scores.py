"""Unit scores per channel group (graph models; `prunelab.scores` sends them here).

Where a group's "unit output" is taken: at its read points, the inputs of the layers that
consume its channels (`Group.consumers`), as each of them reads it: after BatchNorm and ReLU
(and pooling) for a plain conv-BN-ReLU group; for a residual stream, the summed stream after
each block's ReLU (He et al.'s blocks) or the stream's BN-ReLU in front of each pre-activation
block (WRN); through flatten, every column of the channel. This is what physical removal and
mean replacement act on (`prunelab.graph_shrink`: each consumer gets the channel's mean as it
reads it), so the scores are first-order estimates of exactly those changes:

- MRS_j = sum_n |sum_p sum_s g_{n,p,s,j} (a_{n,p,s,j} - a_bar_{p,j})| over samples n, read
  points p and positions s, where g is the loss gradient through consumer p alone (each read
  point gets its own autograd node, so a stream read by a block and carried on by the residual
  addition is not counted twice) and a_bar_{p,j} the mean of what consumer p reads;
- removal saliency the same with a_bar = 0; the oracle the exact loss change of giving every
  consumer the channel's mean; norm the L2 norm of all incoming weights of the coupled channel
  (every producer's row); random.

For a chain (one consumer per group, the next layer) the read point is the next layer's
input, after pooling and flatten; the chain functions of `prunelab.scores` keep theirs (the
activation before pooling) so chain results do not move.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from prunelab.errors import ConfigError, UnknownNameError, check_range
from prunelab.groups import Group, Member, channel_groups
from prunelab.scores import _batches, _eval_mode

UNIT_SCORES = ("mrs", "norm", "removal", "oracle", "random")


@dataclass
class GroupStats:
    """Per group: MRS, removal saliency, the mean of every channel at each consumer
    ({group -> {consumer -> (channels,)}}), the largest std over the read points."""

    mrs: dict[str, torch.Tensor]
    removal: dict[str, torch.Tensor]
    means: dict[str, dict[str, torch.Tensor]]
    stds: dict[str, torch.Tensor]
    samples: int


def _view(t: torch.Tensor, m: Member, size: int) -> torch.Tensor:
    """A consumer input's columns of a group as (batch, channels, positions)."""
    sel = t.index_select(1, m.positions().to(t.device))
    return sel.reshape(sel.shape[0], size, -1)


class GroupCollector:
    """Reads every group's channels at its consumers' inputs (forward pre-hooks) while
    `active` and gradients are on, and accumulates MRS, removal saliency, means and second
    moments. With `store` the read tensors are kept for an explicit `autograd.grad`
    (`group_statistics`); otherwise tensor hooks collect the gradients of the training step's
    own backward pass (`prunelab.methods.units`), each batch finished at the next forward or
    when scores are asked for."""

    def __init__(self, model: nn.Module, groups: list[Group], *, store: bool = False):
        self.groups = {g.name: g for g in groups}
        self.by_consumer: dict[str, list[tuple[Group, Member]]] = {}
        for g in groups:
            for m in g.consumers:
                self.by_consumer.setdefault(m.module, []).append((g, m))
        self.store = store
        self.active = False
        self.reads: list[tuple[str, torch.Tensor]] = []
        self.modules = {name: model.get_submodule(name) for name in self.by_consumer}
        self.handles = [mod.register_forward_pre_hook(self._pre(name))
                        for name, mod in self.modules.items()]
        self.handles.append(model.register_forward_pre_hook(lambda *_: self.flush()))
        self.reset()

    def reset(self) -> None:
        self.mrs: dict[str, torch.Tensor] = {}
        self.removal: dict[str, torch.Tensor] = {}
        self.batches: dict[str, float] = {}
        self.s1: dict[tuple[str, str], torch.Tensor] = {}
        self.s2: dict[tuple[str, str], torch.Tensor] = {}
        self.count: dict[tuple[str, str], int] = {}
        self._pending: dict[str, list[torch.Tensor]] = {}

    def _pre(self, name: str):
        def hook(mod, args):
            if (not (self.active and torch.is_grad_enabled()) or not args[0].requires_grad
                    or mod is not self.modules[name]):  # (a copy of the model holds the hook)
                return None
            read = args[0].view_as(args[0])  # its own node: the gradient through this layer
            a = read.detach()
            with torch.no_grad():
                for g, m in self.by_consumer[name]:
                    v = _view(a, m, g.size).transpose(0, 1).reshape(g.size, -1).double()
                    key = (g.name, m.module)
                    self.s1[key] = self.s1.get(key, 0) + v.sum(1)
                    self.s2[key] = self.s2.get(key, 0) + (v * v).sum(1)
                    self.count[key] = self.count.get(key, 0) + v.shape[1]
            if self.store:
                self.reads.append((name, read))
            else:
                read.register_hook(lambda grad: self.accumulate(name, a, grad.detach()))
            return (read, *args[1:])
        return hook

    @torch.no_grad()
    def accumulate(self, name: str, a: torch.Tensor, grad: torch.Tensor) -> None:
        for g, m in self.by_consumer[name]:
            av, gv = _view(a, m, g.size), _view(grad, m, g.size)
            a_bar = av.mean(dim=(0, 2))
            d_mean = (gv * (av - a_bar[None, :, None])).sum(2)
            d_rem = (gv * av).sum(2)
            pend = self._pending.get(g.name)
            self._pending[g.name] = [d_mean, d_rem] if pend is None else [
                pend[0] + d_mean, pend[1] + d_rem]

    def flush(self, weight: float = 1.0) -> None:
        """Finish the pending batch: |sum over read points| per sample, summed over samples
        (g carries the 1/b of a mean loss: the batch mean of the per-sample change)."""
        for name, (d_mean, d_rem) in self._pending.items():
            self.mrs[name] = self.mrs.get(name, 0) + weight * d_mean.abs().sum(0).double()
            self.removal[name] = self.removal.get(name, 0) + weight * d_rem.abs().sum(0).double()
            self.batches[name] = self.batches.get(name, 0) + 1
        self._pending = {}

    @property
    def ready(self) -> bool:
        self.flush()
        return all(n in self.batches for n in self.groups)

    def scores(self, kind: str, *, average: bool = True) -> dict[str, torch.Tensor]:
        """MRS or removal saliency per group (averaged over the batches seen)."""
        self.flush()
        src = self.mrs if kind == "mrs" else self.removal
        return {n: (src[n] / (self.batches[n] if average else 1.0)).float()
                for n in self.groups}

    def means(self) -> dict[str, dict[str, torch.Tensor]]:
        """{group -> {consumer -> mean of each channel as the consumer reads it}}."""
        out: dict[str, dict[str, torch.Tensor]] = {}
        for (g, c), s in self.s1.items():
            out.setdefault(g, {})[c] = (s / max(self.count[(g, c)], 1)).float()
        return out

    def stds(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for (g, c), s in self.s1.items():
            n = max(self.count[(g, c)], 1)
            sd = (self.s2[(g, c)] / n - (s / n) ** 2).clamp_min(0).sqrt().float()
            out[g] = sd if g not in out else torch.maximum(out[g], sd)
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


# ----------------------------------------------------------------------------- one pass


def _groups(model: nn.Module, groups: Iterable[Group] | None, data=()) -> list[Group]:
    """`groups`, or the model's, traced on the first batch (else the build_model shape)."""
    if groups is None:
        x = data[0][0][:1].to(next(model.parameters()).device) if data else None
        groups = channel_groups(model, x)
    out = list(groups)
    if not out:
        raise ConfigError("the model has no channel group whose units could be scored")
    return out


def group_statistics(model: nn.Module, batches, *, groups: Iterable[Group] | None = None,
                     loss_fn=None) -> GroupStats:
    """MRS, removal saliency, means and stds of every channel of every group: per batch one
    forward and one `autograd.grad` wrt the read points (no parameter .grad touched), in eval
    mode; batches weighted by size."""
    loss_fn = loss_fn or F.cross_entropy
    data = _batches(batches)
    if not data:
        raise ConfigError("unit scores need data: pass at least one (x, y) batch")
    groups = _groups(model, groups, data)
    dev = next(model.parameters()).device
    n_total = sum(int(b[0].shape[0]) for b in data)
    col = GroupCollector(model, groups, store=True)
    col.active = True
    try:
        with _eval_mode(model), torch.enable_grad():
            for x, y in data:
                col.reads = []
                # the read points must need gradients even where the weights do not
                loss = loss_fn(model(x.to(dev).detach().requires_grad_(True)), y.to(dev))
                reads = [r for _, r in col.reads]
                grads = torch.autograd.grad(loss, reads, allow_unused=True)
                for (name, read), g in zip(col.reads, grads):
                    a = read.detach()
                    col.accumulate(name, a, torch.zeros_like(a) if g is None else g.detach())
                col.flush(x.shape[0] / n_total)
    finally:
        col.close()
    return GroupStats(col.scores("mrs", average=False), col.scores("removal", average=False),
                      col.means(), col.stds(), n_total)


def group_means(model: nn.Module, batches, *, groups: Iterable[Group] | None = None
                ) -> dict[str, dict[str, torch.Tensor]]:
    """The mean of every group channel as each consumer reads it: what mean replacement
    folds into that consumer (`prunelab.graph_shrink`)."""
    return group_statistics(model, batches, groups=groups).means


def norm_scores(model: nn.Module, groups: Iterable[Group]) -> dict[str, torch.Tensor]:
    """L2 norm of all incoming weights of each coupled channel (every producer's row)."""
    out = {}
    for g in groups:
        sq = torch.zeros(g.size, dtype=torch.float64)
        for m in g.producers:
            w = model.get_submodule(m.module).weight.detach()
            rows = w.index_select(0, m.index.to(w.device)).reshape(g.size, -1)
            sq += (rows.double() ** 2).sum(1).cpu()
        out[g.name] = sq.sqrt().float()
    return out


@torch.no_grad()
def replacement_loss_change(model: nn.Module, batches,
                            values: Mapping[str, Mapping[str, torch.Tensor]], *,
                            groups: Iterable[Group] | None = None,
                            loss_fn=None) -> dict[str, torch.Tensor]:
    """Exact change of the mean loss when every consumer reads channel j of a group, alone,
    as the constant values[group][consumer][j] (means: the oracle; zeros: removal)."""
    loss_fn = loss_fn or F.cross_entropy
    data = _batches(batches)
    groups = _groups(model, groups, data)
    dev = next(model.parameters()).device
    n_total = sum(int(b[0].shape[0]) for b in data)
    out = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    current: list = [None]  # (group, channel) being replaced

    def pre(name):
        def hook(mod, args):
            if current[0] is None:
                return None
            g, j = current[0]
            ms = [m for m in g.consumers if m.module == name]
            if not ms:
                return None
            z = args[0].clone()
            for m in ms:
                pos = m.positions(torch.tensor([j]))
                z[:, pos.to(z.device)] = values[g.name][m.module][j].to(z)
            return (z, *args[1:])
        return hook

    names = {m.module for g in groups for m in g.consumers}
    handles = [model.get_submodule(n).register_forward_pre_hook(pre(n)) for n in names]
    try:
        with _eval_mode(model):
            for x, y in data:
                x, y = x.to(dev), y.to(dev)
                w = x.shape[0] / n_total
                current[0] = None
                base = float(loss_fn(model(x), y))
                for g in groups:
                    for j in range(g.size):
                        current[0] = (g, j)
                        out[g.name][j] += w * (float(loss_fn(model(x), y)) - base)
    finally:
        current[0] = None
        for h in handles:
            h.remove()
    return {k: v.float() for k, v in out.items()}


def group_unit_scores(model: nn.Module, batches, score: str = "mrs", *,
                      groups: Iterable[Group] | None = None, loss_fn=None, seed: int = 0,
                      means: Mapping[str, Mapping[str, torch.Tensor]] | None = None
                      ) -> dict[str, torch.Tensor]:
    """{group -> score per channel}, higher = keep (see the module docstring)."""
    if score not in UNIT_SCORES:
        raise UnknownNameError("unit score", score, UNIT_SCORES)
    data = _batches(batches)
    groups = _groups(model, groups, data)
    if score == "norm":
        return norm_scores(model, groups)
    if score == "random":
        gen = torch.Generator().manual_seed(seed)
        return {g.name: torch.rand(g.size, generator=gen) for g in groups}
    if not data:
        raise ConfigError(f"unit score '{score}' needs data: pass at least one (x, y) batch")
    if score in ("mrs", "removal"):
        stats = group_statistics(model, data, groups=groups, loss_fn=loss_fn)
        return stats.mrs if score == "mrs" else stats.removal
    if means is None:
        means = group_means(model, data, groups=groups)
    return replacement_loss_change(model, data, means, groups=groups, loss_fn=loss_fn)


def group_dead_units(model: nn.Module, batches, *, tol: float = 1e-4,
                     groups: Iterable[Group] | None = None, loss_fn=None) -> dict[str, dict]:
    """Channels whose reads can be replaced by constants with ~no change in the loss (MRS <=
    `tol`), per group: channels, dead count and indices, constant ones (std <= tol)."""
    check_range("tol", tol, 0.0)
    stats = group_statistics(model, batches, groups=groups, loss_fn=loss_fn)
    report: dict[str, dict] = {}
    for name, m in stats.mrs.items():
        dead = (m <= tol).nonzero().flatten()
        report[name] = {"units": int(m.numel()), "dead": int(dead.numel()),
                        "dead_fraction": float(dead.numel() / m.numel()),
                        "dead_indices": dead.tolist(),
                        "constant": int((stats.stds[name] <= tol).sum())}
    return report
