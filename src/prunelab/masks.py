"""Weight masks and unit masks, kept outside the model, and their enforcement.

A weight mask is a dict {parameter name -> bool tensor of the parameter's shape}; True means
the weight is kept. A unit mask is a dict {layer (module) name -> bool tensor over the layer's
output units or filters}. Masks never live inside the module, so a pruned checkpoint is plain
weights plus a masks file and loads into an unpruned model.

Enforcement (`MaskEnforcer`) keeps pruned weights exactly zero through any `torch.optim`
optimizer: gradients of pruned entries are zeroed as soon as backward accumulates them into
`.grad` (a post-accumulate-grad hook on each masked parameter), so gradient clipping, logging
or anything else that reads `.grad` before the step sees what `torch.nn.utils.prune` would give
it; a step pre-hook masks any gradient that did not come through such a backward (assigned by
hand, or dense on purpose under `MaskEnforcer.dense_gradients()`, which methods such as RigL
need at their mask updates); weights are re-zeroed after the step, and optimizer state
(momentum, Adam moments) is cleared at newly pruned entries, so momentum, Adam state or weight
decay can never revive a pruned weight.

For plain SGD, Adam and AdamW the re-zeroing is skipped by default: with a zero weight, a
zero (masked) gradient and zero state, every term of their updates is exactly zero (momentum,
coupled or decoupled weight decay, m / (sqrt(v) + eps)), so the weight stays exactly zero and
the extra pass over the weights (about half the masking cost) buys nothing. Any other
optimizer, including subclasses of these, keeps the re-zeroing; `rezero=True` forces it.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab import atomic
from prunelab.errors import DataError, MaskError

Masks = dict[str, torch.Tensor]
UnitMasks = dict[str, torch.Tensor]

PRUNABLE_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d, nn.Conv1d)

# The feed-forward chains that unit masks, the sparsity report and `prunelab.shrink` follow.
CHAIN_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
CHAIN_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.GELU, nn.ELU, nn.SiLU, nn.Softplus,
)
CHAIN_PASSTHROUGH: tuple[type[nn.Module], ...] = (nn.Dropout, nn.Identity)
CHAIN_POOLS: tuple[type[nn.Module], ...] = (nn.MaxPool2d, nn.AvgPool2d)
CHAIN_MODULES: tuple[type[nn.Module], ...] = (
    CHAIN_LAYERS + CHAIN_ACTIVATIONS + CHAIN_PASSTHROUGH + CHAIN_POOLS + (nn.Flatten,)
)


def first_last_layers(
    model: nn.Module, layer_types: tuple[type, ...] = PRUNABLE_LAYERS
) -> tuple[str, ...]:
    """Names of the first and the last Linear/Conv layer in registration order (the stem
    convolution and the classifier of the usual networks), which Gale et al. keep dense."""
    names = [n for n, m in model.named_modules() if isinstance(m, layer_types)]
    return tuple(dict.fromkeys(names[:1] + names[-1:]))


def prunable_parameters(
    model: nn.Module,
    *,
    include_bias: bool = False,
    layer_types: tuple[type, ...] = PRUNABLE_LAYERS,
    keep_first_last: bool = False,
) -> dict[str, nn.Parameter]:
    """Weights (and optionally biases) of Linear/Conv layers, by parameter name, in order.
    BatchNorm (and any other) parameters are never included; `keep_first_last` leaves out the
    first and last layer (`first_last_layers`)."""
    out: dict[str, nn.Parameter] = {}
    skip = set(first_last_layers(model, layer_types)) if keep_first_last else set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, layer_types) and mod_name not in skip:
            prefix = f"{mod_name}." if mod_name else ""
            out[prefix + "weight"] = mod.weight
            if include_bias and getattr(mod, "bias", None) is not None:
                out[prefix + "bias"] = mod.bias
    return out


def full_masks(
    model: nn.Module, *, include_bias: bool = False, keep_first_last: bool = False
) -> Masks:
    """All-True masks for every prunable parameter (without the first and last layer when
    `keep_first_last`: those stay dense because no mask covers them)."""
    params = prunable_parameters(model, include_bias=include_bias,
                                 keep_first_last=keep_first_last)
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}


def masks_from_weights(model: nn.Module) -> Masks:
    """Masks read off the model: True where a prunable weight is nonzero."""
    return {n: p.detach() != 0 for n, p in prunable_parameters(model).items()}


def validate_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Raise MaskError naming the first parameter whose mask is missing from the model or
    whose shape differs."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            known = ", ".join(list(params)[:8])
            raise MaskError(f"mask for '{name}' matches no parameter of the model (has: {known})")
        if tuple(mask.shape) != tuple(params[name].shape):
            raise MaskError(
                f"mask for '{name}' has shape {tuple(mask.shape)}, the parameter has "
                f"{tuple(params[name].shape)}"
            )
        if mask.dtype != torch.bool:
            raise MaskError(f"mask for '{name}' must be bool, got {mask.dtype}")


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned weights in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        p = params[name]
        p.mul_(mask.to(device=p.device, dtype=p.dtype))


def mask_sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of masked-out entries over all masks."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / total if total else 0.0


# Exact classes whose update is exactly zero for a zero weight with zero gradient and state.
ZERO_PRESERVING_OPTIMIZERS: tuple[type, ...] = (
    torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW,
)


class MaskEnforcer:
    """Keeps masked weights exactly zero through training with any torch.optim optimizer.

    Use `attach(optimizer)`; from then on every backward leaves the gradients of pruned
    entries zero, and every `optimizer.step()` masks any gradient that did not come through
    such a backward before the update and re-zeroes the weights after it. `update(masks)`
    installs new masks (pruning more) and clears optimizer state at the newly pruned entries;
    `dense_gradients()` lets one backward leave unmasked gradients; `detach()` removes every
    hook.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]):
        validate_masks(model, masks)
        self.model = model
        params = dict(model.named_parameters())
        self._params = {n: params[n] for n in masks}
        self._set(masks)
        self._handles: list = []
        self._grad_handles: dict[str, Any] = {}
        # The gradient each parameter's hook last masked (weakly held): a step pre-hook masks
        # only gradients that are not that tensor (assigned by hand, or left dense on purpose).
        self._masked_grad: dict[str, weakref.ref] = {}
        self._dense = 0
        self._optimizers: list[torch.optim.Optimizer] = []
        apply_masks(model, self.masks)

    def _set(self, masks: Mapping[str, torch.Tensor]) -> None:
        self.masks: Masks = {
            n: m.detach().to(self._params[n].device).clone() for n, m in masks.items()
        }
        # Float copies so enforcement is one in-place multiply per tensor.
        self._factors = {n: m.to(self._params[n].dtype) for n, m in self.masks.items()}
        self._masked_grad = {}  # gradients masked with the old masks count as unmasked

    def attach(
        self, optimizer: torch.optim.Optimizer, *, rezero: bool | None = None
    ) -> MaskEnforcer:
        """Hook into `optimizer` (and, once, into the masked parameters' gradient
        accumulation) so gradients of pruned entries are zero when backward returns, each step
        masks any other gradient first, and (unless the optimizer is one that provably keeps
        zeros, see the module docstring) re-zeroes weights after it."""
        if rezero is None:
            rezero = type(optimizer) not in ZERO_PRESERVING_OPTIMIZERS
        clear_optimizer_state(optimizer, self._params, self.masks)
        self._hook_gradients()
        self._handles.append(optimizer.register_step_pre_hook(lambda *_: self._before_step()))
        if rezero:
            self._handles.append(optimizer.register_step_post_hook(lambda *_: self.enforce()))
        self._optimizers.append(optimizer)
        return self

    def _hook_gradients(self) -> None:
        for n, p in self._params.items():
            if n not in self._grad_handles:
                self._grad_handles[n] = p.register_post_accumulate_grad_hook(
                    self._grad_hook(n))

    def _grad_hook(self, name: str):
        @torch.no_grad()
        def hook(p: torch.Tensor) -> None:
            if self._dense or p.grad is None:
                return
            p.grad.mul_(self._factors[name])
            self._masked_grad[name] = weakref.ref(p.grad)
        return hook

    @contextlib.contextmanager
    def dense_gradients(self) -> Iterator[None]:
        """Within this block, backward leaves the gradients of pruned entries as they are
        (for methods that rank pruned connections by their gradient, e.g. RigL's regrowth).
        The weights stay masked: the next `optimizer.step()` still masks the gradients before
        its update; call `mask_gradients()` to mask them earlier (e.g. before clipping).
        Gradients from `torch.autograd.grad` never pass through the hooks and are always
        dense."""
        self._dense += 1
        try:
            yield
        finally:
            self._dense -= 1

    def detach(self) -> None:
        """Remove the optimizer and gradient hooks (the weights keep their zeros)."""
        for h in self._handles:
            h.remove()
        for h in self._grad_handles.values():
            h.remove()
        self._handles.clear()
        self._grad_handles.clear()
        self._masked_grad.clear()
        self._optimizers.clear()

    def _before_step(self) -> None:
        for n, p in self._params.items():
            g = p.grad
            if g is not None:
                ref = self._masked_grad.get(n)
                if ref is None or ref() is not g:
                    with torch.no_grad():
                        g.mul_(self._factors[n])
                    self._masked_grad[n] = weakref.ref(g)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of pruned entries now."""
        for n, p in self._params.items():
            if p.grad is not None:
                p.grad.mul_(self._factors[n])
                self._masked_grad[n] = weakref.ref(p.grad)

    @torch.no_grad()
    def enforce(self) -> None:
        for n, p in self._params.items():
            p.mul_(self._factors[n])

    @torch.no_grad()
    def update(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Install new masks, zero the newly pruned weights and their optimizer state."""
        validate_masks(self.model, masks)
        new_params = {n for n in masks if n not in self._params}
        if new_params:
            params = dict(self.model.named_parameters())
            self._params.update({n: params[n] for n in new_params})
        merged = dict(self.masks)
        merged.update(masks)
        self._set(merged)
        self.enforce()
        if self._grad_handles:
            self._hook_gradients()
        for opt in self._optimizers:
            clear_optimizer_state(opt, self._params, self.masks)


@torch.no_grad()
def clear_optimizer_state(
    optimizer: torch.optim.Optimizer,
    params: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
) -> None:
    """Zero every per-parameter state tensor (momentum, Adam moments...) at masked entries."""
    for name, p in params.items():
        state = optimizer.state.get(p)
        if not state:
            continue
        keep = masks[name]
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.shape == p.shape:
                value.mul_(keep.to(value.dtype))


# ----------------------------------------------------------------------------- unit masks


def layer_chain(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The Linear/Conv layers of a pure feed-forward chain (nested Sequentials of layers,
    activations, pooling, flatten, dropout), in order; None if the model is not such a chain."""
    allowed = CHAIN_MODULES
    chain: list[tuple[str, nn.Module]] = []

    def walk(mod: nn.Module, prefix: str) -> bool:
        if isinstance(mod, nn.Sequential):
            return all(
                walk(child, f"{prefix}{name}" if not prefix else f"{prefix}.{name}")
                for name, child in mod.named_children()
            )
        if not isinstance(mod, allowed):
            return False
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            chain.append((prefix, mod))
        return True

    if not isinstance(model, nn.Sequential) or not walk(model, ""):
        return None
    return chain


def _out_units(mod: nn.Module) -> int:
    return mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels


def _in_units(mod: nn.Module) -> int:
    return mod.in_features if isinstance(mod, nn.Linear) else mod.in_channels


def unit_masks_to_weight_masks(
    model: nn.Module, unit_masks: Mapping[str, torch.Tensor], *, include_outgoing: bool = True
) -> Masks:
    """Expand unit masks to weight (and bias) masks.

    A removed unit loses its incoming weights and bias; with `include_outgoing` (feed-forward
    chains only) also its outgoing weights in the next layer, through flatten: a removed
    conv filter masks every column of the following Linear that reads its feature map.
    """
    modules = dict(model.named_modules())
    masks: Masks = {}
    for layer, um in unit_masks.items():
        mod = modules.get(layer)
        if mod is None or not isinstance(mod, (nn.Linear, nn.Conv2d)):
            raise MaskError(f"unit mask for '{layer}': no Linear or Conv2d layer by that name")
        if um.shape != (_out_units(mod),):
            raise MaskError(
                f"unit mask for '{layer}' has shape {tuple(um.shape)}, the layer has "
                f"{_out_units(mod)} units"
            )
        prefix = f"{layer}." if layer else ""
        shape = (-1,) + (1,) * (mod.weight.dim() - 1)
        masks[prefix + "weight"] = um.view(shape).expand_as(mod.weight).clone()
        if mod.bias is not None:
            masks[prefix + "bias"] = um.clone()
    if include_outgoing:
        chain = layer_chain(model)
        if chain is None:
            raise MaskError("outgoing weights can only be masked on a feed-forward chain model")
        for (name, _), (next_name, nxt) in zip(chain, chain[1:]):
            if name not in unit_masks:
                continue
            um = unit_masks[name]
            n_in = _in_units(nxt)
            if n_in % um.numel():
                raise MaskError(f"cannot map units of '{name}' onto inputs of '{next_name}'")
            per_unit = n_in // um.numel()  # spatial positions per filter after flatten
            cols = um.repeat_interleave(per_unit)
            key = f"{next_name}.weight" if next_name else "weight"
            shape = (1, -1) + (1,) * (nxt.weight.dim() - 2)
            col_mask = cols.view(shape).expand_as(nxt.weight)
            masks[key] = masks.get(key, torch.ones_like(col_mask)) & col_mask
    return masks


def alive_units(model: nn.Module) -> UnitMasks:
    """Units that matter: nonzero incoming weights and (except the output layer) some nonzero
    outgoing weight; iterated to a fixed point along the chain. Empty for non-chain models.

    A dead unit that still feeds a live one outputs a constant (activation(bias), e.g.
    ReLU(bias) > 0 with no incoming weights): removing it keeps the function only with that
    constant folded into the next layer's bias, as `shrink.shrink_dead_units` does and as
    `sparsity_report`'s `params_after_shrink` counts."""
    chain = layer_chain(model)
    if chain is None:
        return {}
    alive = {}
    for name, mod in chain:
        w = mod.weight.detach()
        alive[name] = w.reshape(w.shape[0], -1).ne(0).any(dim=1)
    last = chain[-1][0]
    alive[last] = torch.ones_like(alive[last])  # output units are never removed
    changed = True
    while changed:
        changed = False
        for i, (name, mod) in enumerate(chain[:-1]):
            nxt = chain[i + 1][1]
            w = nxt.weight.detach()
            n_units = alive[name].numel()
            per_unit = w.shape[1] // n_units
            w_in = w.reshape(w.shape[0], w.shape[1], -1)[alive[chain[i + 1][0]]]
            used = w_in.ne(0).any(dim=0).any(dim=-1).reshape(n_units, per_unit).any(dim=1)
            incoming_prev = alive[chain[i - 1][0]] if i > 0 else None
            if incoming_prev is not None:
                wi = mod.weight.detach()
                wi = wi.reshape(wi.shape[0], wi.shape[1], -1)
                per_prev = wi.shape[1] // incoming_prev.numel()
                cols = incoming_prev.repeat_interleave(per_prev)
                fed = wi[:, cols].ne(0).any(dim=-1).any(dim=1)
            else:
                fed = torch.ones_like(alive[name])
            new = alive[name] & used & fed
            if not torch.equal(new, alive[name]):
                alive[name], changed = new, True
    return alive


# ----------------------------------------------------------------------------- reporting


def _layer_geometry(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Output spatial positions per layer (1 for Linear), from one forward pass with hooks."""
    positions: dict[str, int] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d, nn.Conv1d)):
            def hook(m, inp, out, name=name):
                positions[name] = int(out[0, 0].numel()) if out.dim() > 2 else 1
            hooks.append(mod.register_forward_hook(hook))
    was_training = model.training
    try:
        p = next(model.parameters())
        model.eval()  # a train-mode probe would fold the zeros into BatchNorm's running stats
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return positions


def sparsity_report(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor] | None = None,
    input_shape: Iterable[int] | None = None,
) -> dict:
    """Per layer and global counts: weights and biases separately (total, nonzero, fraction
    zero), units alive, and with `input_shape` the FLOPs (2 x multiply-accumulates per sample)
    dense, sparse (nonzero weights only) and after shrinking dead units; parameters after
    shrinking (the network `shrink.shrink_dead_units` builds: dead units' constant outputs
    folded into the next biases). Nonzero counts are read from the weights; `masks` adds the
    kept counts."""
    positions = _layer_geometry(model, tuple(input_shape)) if input_shape is not None else {}
    alive = alive_units(model)
    chain = layer_chain(model)
    layers = []
    totals = dict(weights=0, weights_nonzero=0, biases=0, biases_nonzero=0, weights_kept=0)
    flops = dict(dense=0, sparse=0, shrunk=0)
    prev_alive: torch.Tensor | None = None
    shrunk_params = 0
    chain_names = [n for n, _ in chain] if chain else []
    for name, mod in model.named_modules():
        if not isinstance(mod, PRUNABLE_LAYERS):
            continue
        prefix = f"{name}." if name else ""
        w = mod.weight.detach()
        entry = {
            "layer": name,
            "type": type(mod).__name__,
            "weights": w.numel(),
            "weights_nonzero": int(w.ne(0).sum()),
        }
        if masks is not None and prefix + "weight" in masks:
            entry["weights_kept"] = int(masks[prefix + "weight"].sum())
            totals["weights_kept"] += entry["weights_kept"]
        else:
            totals["weights_kept"] += entry["weights_nonzero"]
        entry["weight_sparsity"] = 1.0 - entry["weights_nonzero"] / entry["weights"]
        b = mod.bias.detach() if mod.bias is not None else None
        entry["biases"] = 0 if b is None else b.numel()
        entry["biases_nonzero"] = 0 if b is None else int(b.ne(0).sum())
        entry["units"] = w.shape[0]
        if name in alive:
            entry["units_alive"] = int(alive[name].sum())
        for k in ("weights", "weights_nonzero", "biases", "biases_nonzero"):
            totals[k] += entry[k]
        if name in positions:
            pos = positions[name]
            entry["flops_dense"] = 2 * w.numel() * pos
            entry["flops_sparse"] = 2 * entry["weights_nonzero"] * pos
            flops["dense"] += entry["flops_dense"]
            flops["sparse"] += entry["flops_sparse"]
        if name in chain_names:
            out_alive = int(alive[name].sum())
            fan_in_units = w.shape[1] if w.dim() == 2 else w.shape[1]
            if prev_alive is not None:
                per_unit = fan_in_units // prev_alive.numel()
                in_alive = int(prev_alive.sum()) * per_unit
            else:
                in_alive = fan_in_units
            kernel = w[0, 0].numel() if w.dim() > 2 else 1
            shrunk_w = out_alive * in_alive * kernel
            # removed units' constant outputs are folded into this layer's bias, which
            # `shrink.shrink_dead_units` adds where the layer has none
            folds = prev_alive is not None and not bool(prev_alive.all())
            shrunk_params += shrunk_w + (out_alive if b is not None or folds else 0)
            entry["weights_after_shrink"] = shrunk_w
            if name in positions:
                entry["flops_shrunk"] = 2 * shrunk_w * positions[name]
                flops["shrunk"] += entry["flops_shrunk"]
            prev_alive = alive[name]
        layers.append(entry)
    other = sum(
        p.numel() for n, p in model.named_parameters()
        if not any(n == f"{e['layer']}.weight" or n == f"{e['layer']}.bias"
                   or (e["layer"] == "" and n in ("weight", "bias")) for e in layers)
    )
    total_params = totals["weights"] + totals["biases"] + other
    graph_after = (None, None) if chain else _graph_after_shrink(model, input_shape)
    glob = {
        **totals,
        "weight_sparsity": 1.0 - totals["weights_nonzero"] / max(totals["weights"], 1),
        "bias_sparsity": 1.0 - totals["biases_nonzero"] / max(totals["biases"], 1),
        "params": total_params,
        "params_nonzero": totals["weights_nonzero"] + totals["biases_nonzero"] + other,
        "params_after_shrink": shrunk_params + other if chain else graph_after[0],
    }
    if masks is None:
        glob.pop("weights_kept")
    if positions:
        glob["flops_dense"] = flops["dense"]
        glob["flops_sparse"] = flops["sparse"]
        glob["flops_after_shrink"] = flops["shrunk"] if chain else graph_after[1]
    return {"global": glob, "layers": layers}


def _graph_after_shrink(model: nn.Module, input_shape: Iterable[int] | None
                        ) -> tuple[int | None, int | None]:
    """Parameters and FLOPs of a graph model without its dead channel groups' channels
    (`prunelab.groups.alive_channels`), counted on the shrunk copy; (None, None) when the
    channels cannot be grouped (the weight counts above still stand)."""
    from prunelab.errors import PrunelabError
    from prunelab.graph_shrink import dead_channel_plan, shrink_groups
    from prunelab.groups import analyse

    p = next(model.parameters(), None)
    if p is None:
        return None, None
    x = None if input_shape is None else torch.zeros(1, *input_shape, device=p.device,
                                                     dtype=p.dtype)
    try:
        groups = analyse(model, x).groups
        small = shrink_groups(model, dead_channel_plan(model, groups), groups=groups)
    except PrunelabError:
        return None, None
    params = sum(q.numel() for q in small.parameters())
    return params, None if input_shape is None else forward_flops(small, input_shape)


def forward_flops(model: nn.Module, input_shape: Iterable[int]) -> int:
    """Dense FLOPs per sample (2 x multiply-accumulates of every Linear/Conv layer, output
    positions from one forward pass with hooks): the report's `flops_dense`, alone."""
    positions = _layer_geometry(model, tuple(input_shape))
    return sum(2 * m.weight.numel() * positions[n] for n, m in model.named_modules()
               if n in positions)


# ----------------------------------------------------------------------------- files


def save_masks(path: str | Path, masks: Mapping[str, torch.Tensor]) -> None:
    """Save masks (bool tensors on CPU) atomically."""
    atomic.save_torch(path, {n: m.detach().cpu().bool() for n, m in masks.items()})


def load_masks(path: str | Path, model: nn.Module | None = None) -> Masks:
    """Load masks; with `model`, check names and shapes against it."""
    try:
        masks = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"masks file not found: {path}") from None
    except Exception as exc:  # corrupt, truncated or not a torch file
        raise DataError(
            f"cannot read masks file {path}: corrupt or not a masks file ({type(exc).__name__})"
        ) from None
    if not isinstance(masks, dict) or not all(isinstance(m, torch.Tensor) for m in masks.values()):
        raise DataError(f"{path} does not hold a dict of mask tensors")
    for name, m in masks.items():
        if m.dtype != torch.bool and (m.is_floating_point() or m.is_complex()
                                      or not bool(((m == 0) | (m == 1)).all())):
            raise DataError(f"{path}: the mask for '{name}' holds {m.dtype} values, not "
                            "True/False (scores? select a mask from them first, e.g. "
                            "prunelab.selection.select_masks)")
    masks = {n: m.bool() for n, m in masks.items()}
    if model is not None:
        validate_masks(model, masks)
    return masks


def to_torch_prune(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Re-express masks in `torch.nn.utils.prune` form (weight_orig + weight_mask buffers),
    in place, for tools that expect it. Returns the model."""
    from torch.nn.utils import prune

    validate_masks(model, masks)
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        mod_name, _, attr = name.rpartition(".")
        module = modules[mod_name]
        prune.custom_from_mask(module, attr, mask.to(getattr(module, attr).device))
    return model


def from_torch_prune(model: nn.Module) -> Masks:
    """Read masks back from `torch.nn.utils.prune` form and make the pruning permanent
    (plain parameters again), in place. Returns the masks."""
    from torch.nn.utils import prune

    masks: Masks = {}
    for mod_name, mod in model.named_modules():
        for attr in [b[: -len("_mask")] for b, _ in mod.named_buffers(recurse=False)
                     if b.endswith("_mask")]:
            key = f"{mod_name}.{attr}" if mod_name else attr
            masks[key] = getattr(mod, f"{attr}_mask").detach().bool().clone()
            prune.remove(mod, attr)
    return masks
