"""Pruning methods behind one protocol; `build_method(name, **options)` by registry name."""

from __future__ import annotations

import dataclasses
from typing import Any

from prunelab.errors import ConfigError, UnknownNameError
from prunelab.methods.annealed import AnnealedPruning
from prunelab.methods.at_init import GraSPMask, RandomMask, SNIPMask, SynFlowMask
from prunelab.methods.base import MaskedMethod, PruningMethod, TrainContext
from prunelab.methods.bernoulli import BernoulliGating
from prunelab.methods.biobjective import BiobjectiveTraining
from prunelab.methods.dst import SET, RigL
from prunelab.methods.layer_gates import LayerGating
from prunelab.methods.magnitude import FixedMask, GradualMagnitude, OneShotMagnitude
from prunelab.methods.units import UnitPruning
from prunelab.typecheck import check_fields

METHODS: dict[str, type[PruningMethod]] = {
    "dense": PruningMethod,
    "magnitude": OneShotMagnitude,
    "gmp": GradualMagnitude,
    "fixed-mask": FixedMask,
    "biobjective": BiobjectiveTraining,
    "annealed": AnnealedPruning,
    "units": UnitPruning,
    "bernoulli": BernoulliGating,
    "layer-gates": LayerGating,
    "snip": SNIPMask,
    "grasp": GraSPMask,
    "synflow": SynFlowMask,
    "random": RandomMask,
    "set": SET,
    "rigl": RigL,
}

# Methods that drive several training runs rather than hooking into one (see lottery.py).
DRIVERS = ("imp",)


def list_methods() -> list[str]:
    """Registered method names (including multi-run drivers such as imp)."""
    return list(METHODS) + list(DRIVERS)


def method_options(name: str) -> list[str]:
    """Option names a method accepts."""
    if name == "imp":
        from prunelab.methods.lottery import IMPConfig

        return [f.name for f in dataclasses.fields(IMPConfig)]
    if name not in METHODS:
        raise UnknownNameError("method", name, list_methods())
    return [f.name for f in dataclasses.fields(METHODS[name])]


def build_method(name: str, **options: Any) -> PruningMethod:
    """Instantiate a registered method; unknown options are named with the valid ones."""
    if name not in METHODS:
        raise UnknownNameError("method", name, list_methods())
    valid = method_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"method '{name}' has no option {', '.join(unknown)}; "
            f"valid: {', '.join(valid) or 'none'}"
        )
    check_fields(METHODS[name], options, f"method '{name}' option ")
    return METHODS[name](**options)


__all__ = ["METHODS", "SET", "FixedMask", "GradualMagnitude", "GraSPMask", "LayerGating",
           "MaskedMethod", "OneShotMagnitude", "PruningMethod", "RandomMask", "RigL", "SNIPMask",
           "SynFlowMask", "TrainContext", "build_method", "list_methods", "method_options"]
