"""Reproductions by name, for `prunelab reproduce NAME`.

Each reproduction is a module in `prunelab.experiments` exposing
`run(out: Path, *, quick: bool, progress: bool | None, log: Callable[[str], None]) -> dict`
that writes report.md, results.json and figures/ into `out` and returns the results. Modules
are imported lazily; a listed module that is not present is simply not offered.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable
from typing import Any

from prunelab.errors import UnknownNameError

REPRODUCTIONS: dict[str, tuple[str, str]] = {
    "deep-optima": ("prunelab.experiments.deep_optima",
                    "annealed pruning finds deep optima on XOR (Guo et al.)"),
    "dead-units": ("prunelab.experiments.dead_units",
                   "saliency scores, mean replacement, >= 5x smaller MNIST nets (Evci)"),
    "sparse-landscape": ("prunelab.experiments.sparse_landscape",
                         "pruned vs scratch vs lottery: lines and Bezier curves (Evci et al.)"),
    "sparse-landscape-resnet": ("prunelab.experiments.sparse_landscape_resnet",
                                "the same on ResNet-20 with BatchNorm recomputed (80/90/95%)"),
    "hessian-spectrum": ("prunelab.experiments.hessian_spectrum",
                         "bulk and outliers of the Hessian (Sagun et al.)"),
    "bernoulli": ("prunelab.experiments.bernoulli",
                  "Bernoulli-gate variational pruning (Guenter & Sideris)"),
    "layer-pruning": ("prunelab.experiments.layer_pruning",
                      "layer gates and complexity-aware costs on a deep MLP (Guenter & Sideris)"),
    "pareto": ("prunelab.experiments.pareto",
               "loss vs l1 Pareto front, knee, SMGD (Reiners et al.)"),
    "sparse-training": ("prunelab.experiments.sparse_training",
                        "GMP, lottery, scratch, SNIP/GraSP/SynFlow, SET, RigL at matched "
                        "sparsity (issue 22)"),
}


def available() -> dict[str, str]:
    """Reproductions whose module is installed: name -> one-line description."""
    return {
        name: desc for name, (module, desc) in REPRODUCTIONS.items()
        if importlib.util.find_spec(module) is not None
    }


def with_processes() -> list[str]:
    """Reproductions whose `run` takes `processes=N` (runs trained N at a time)."""
    out = []
    for name, (module, _) in REPRODUCTIONS.items():
        if name in available():
            run = importlib.import_module(module).run
            if "processes" in inspect.signature(run).parameters:
                out.append(name)
    return out


def get(name: str) -> Callable[..., dict[str, Any]]:
    """The `run` function of a reproduction; unknown names list the available ones."""
    if name not in available():
        raise UnknownNameError("reproduction", name, available())
    return importlib.import_module(REPRODUCTIONS[name][0]).run
