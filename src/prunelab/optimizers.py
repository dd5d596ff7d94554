"""Rebuilding an optimizer over new parameters (after a network was physically shrunk)."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from prunelab.errors import ConfigError


def rebuild_optimizer(optimizer: torch.optim.Optimizer,
                      groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """A new optimizer of `optimizer`'s class over `groups` (which carry every hyper-parameter).

    The constructor gets only the defaults its signature names: a default may be one the class
    sets itself and refuses as an argument (torch 2.13's AdamW passes
    `decoupled_weight_decay=True` to Adam and refuses it back); the groups still carry it."""
    cls = type(optimizer)
    try:
        params = inspect.signature(cls.__init__).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature: pass every default
        params = ()
    any_kw = not params or any(p.kind is p.VAR_KEYWORD for p in params)
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    kwargs = {k: v for k, v in optimizer.defaults.items() if any_kw or k in named}
    try:
        new_opt = cls(groups, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot rebuild optimizer {cls.__name__} for the shrunk "
                          f"model ({exc})") from None
    new_opt.defaults.update(optimizer.defaults)
    return new_opt


def regroup(optimizer: torch.optim.Optimizer, name_of: Mapping[int, str],
            successors: Callable[[str], list[torch.Tensor]],
            model: str = "shrunk model") -> torch.optim.Optimizer:
    """`rebuild_optimizer` over `optimizer`'s param groups with each parameter replaced by
    `successors(its name)` (`name_of`: id(old parameter) -> name), so every new parameter
    joins its source's group and hyper-parameters. ConfigError for a parameter `name_of` does
    not know (not the model's: its state could not be mapped onto the new `model`)."""
    groups = []
    for g in optimizer.param_groups:
        ps: list[torch.Tensor] = []
        for p in g["params"]:
            if id(p) not in name_of:
                raise ConfigError("the optimizer holds a parameter that is not the model's; "
                                  f"cannot map its state onto the {model}")
            ps += successors(name_of[id(p)])
        groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ps})
    return rebuild_optimizer(optimizer, groups)


def carry_state(old: torch.optim.Optimizer, new: torch.optim.Optimizer,
                name_of: Mapping[int, str], new_params: Mapping[str, torch.Tensor],
                slicers: Mapping[str, Any]) -> None:
    """Copy `old`'s per-parameter state into `new` (built over `new_params`, by name): tensors
    of the parameter's shape go through the parameter's slicer (`slicers[name].apply`, the
    rows and columns a shrink kept), other tensors are cloned and the rest deep-copied.
    `name_of` maps id(old parameter) -> name."""
    for p, state in old.state.items():
        name = name_of.get(id(p))
        if name is None:
            continue
        slicer = slicers.get(name)
        moved: dict[str, Any] = {}
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape and slicer is not None:
                moved[k] = slicer.apply(v)
            elif isinstance(v, torch.Tensor):
                moved[k] = v.clone()
            else:
                moved[k] = copy.deepcopy(v)
        new.state[new_params[name]] = moved
