"""Pruning at initialisation: `snip`, `grasp`, `synflow` and `random` pick a mask before the
first step (scores in `prunelab.init_scores`), then train with it held fixed, enforced like
`fixed-mask` (MaskedMethod's MaskEnforcer).

Every variant keeps exactly the requested number of weights: `sparsity` over the prunable
weights ranked globally (`scope='global'`) or per layer (`scope='layer'`), or, with a `budget`
(`uniform`, `erk`, `er`), exactly each layer's budget count. `keep_first_last` leaves the first
and last Linear/Conv layer dense (unscored, unmasked). Randomness (the scoring batches, the
random mask) comes from `seed`, or, when it is None, from torch's global generator, which a
run seeds with its init seed, so each run seed gives its own mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab import atomic
from prunelab.errors import ConfigError, check_range
from prunelab.init_scores import (
    SYNFLOW_BN,
    Batch,
    check_synflow_bn,
    grasp_scores,
    random_scores,
    sample_batches,
    select_with_budget,
    snip_scores,
    synflow_masks,
)
from prunelab.masks import Masks, prunable_parameters
from prunelab.methods.base import MaskedMethod
from prunelab.selection import check_budget


def method_generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded by `seed`, or by a draw from torch's global generator (seeded by
    the run) when `seed` is None."""
    if seed is None:
        seed = int(torch.randint(2**62, (1,)))
    return torch.Generator().manual_seed(int(seed))


def layer_summary(masks: Masks) -> dict[str, dict[str, float]]:
    """Kept count, size and density of each mask."""
    return {n: {"kept": int(m.sum()), "total": m.numel(), "density": float(m.float().mean())}
            for n, m in masks.items()}


@dataclass
class InitMask(MaskedMethod):
    """Shared machinery: score the prunable weights once in `attach`, select, keep fixed."""

    sparsity: float = 0.9
    budget: str | None = None  # uniform | erk | er: exact per-layer counts (overrides scope)
    seed: int | None = None

    name = "init-mask"

    def __post_init__(self) -> None:
        check_range("sparsity", self.sparsity, 0.0, 1.0, high_inclusive=False)
        if self.scope not in ("global", "layer"):
            raise ConfigError(f"scope must be 'global' or 'layer', got '{self.scope}'")
        if self.budget is not None:
            check_budget(self.budget)

    def initial_masks(self, model: nn.Module) -> Masks:
        names = list(prunable_parameters(model, keep_first_last=self.keep_first_last))
        if not names:
            raise ConfigError(f"method '{self.name}': the model has no prunable layer")
        masks = self.compute_masks(model, names, method_generator(self.seed))
        self.init_summary = layer_summary(masks)
        return masks

    def compute_masks(self, model: nn.Module, names: list[str],
                      generator: torch.Generator) -> Masks:
        scores = self.scores(model, names, generator)
        return select_with_budget(scores, self.sparsity, scope=self.scope, budget=self.budget)

    def scores(self, model: nn.Module, names: list[str],
               generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _data(self) -> Any:
        data = getattr(getattr(self, "ctx", None), "data", None)
        if data is None:
            raise ConfigError(f"method '{self.name}' scores on training data; the trainer gave "
                              "none")
        return data

    def write_outputs(self, out_dir: Path) -> None:
        atomic.write_json(Path(out_dir) / "init_mask.json", {
            "method": self.name, "sparsity": self.sparsity, "scope": self.scope,
            "budget": self.budget, "keep_first_last": self.keep_first_last,
            "layers": getattr(self, "init_summary", {})})


@dataclass
class DataScoredMask(InitMask):
    """Shared by the data-driven scores: `batches` training batches of `batch_size`."""

    batches: int = 1
    batch_size: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("batches", self.batches, 1)
        check_range("batch_size", self.batch_size, 1)

    def sample(self, generator: torch.Generator) -> list[Batch]:
        """The scoring batches, drawn from the trainer's data with `generator`."""
        return sample_batches(self._data(), self.batches, self.batch_size, generator)


@dataclass
class SNIPMask(DataScoredMask):
    """SNIP (Lee et al. 2019): keep the largest |g * w| on `batches` training batches."""

    name = "snip"

    def scores(self, model, names, generator):
        return snip_scores(model, self.sample(generator), names)


@dataclass
class GraSPMask(DataScoredMask):
    """GraSP (Wang et al. 2020): remove the largest -w * Hg (keep the largest w * Hg)."""

    temperature: float = 200.0

    name = "grasp"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("temperature", self.temperature, 0.0, low_inclusive=False)

    def scores(self, model, names, generator):
        return grasp_scores(model, self.sample(generator), names,
                            temperature=self.temperature)


@dataclass
class SynFlowMask(InitMask):
    """SynFlow (Tanaka et al. 2020): iterative, data-free synaptic-flow pruning; `bn` is the
    BatchNorm handling while scoring (identity, eval or none; see prunelab.init_scores)."""

    iterations: int = 100
    bn: str = "identity"

    name = "synflow"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("iterations", self.iterations, 1)
        if self.bn not in SYNFLOW_BN:
            raise ConfigError(f"bn must be one of {', '.join(SYNFLOW_BN)}; got '{self.bn}'")

    def compute_masks(self, model, names, generator):
        check_synflow_bn(model, self.bn)
        shape = getattr(self._data(), "input_shape", None)
        if shape is None:
            raise ConfigError("synflow needs the input shape of the data")
        return synflow_masks(model, shape, names, self.sparsity, iterations=self.iterations,
                             scope=self.scope, budget=self.budget, bn=self.bn)


@dataclass
class RandomMask(InitMask):
    """A random mask: each layer keeps its budget's count of uniformly drawn weights (ERK by
    default); `budget=None` draws globally (scope 'global') or per layer (scope 'layer')."""

    budget: str | None = "erk"

    name = "random"

    def scores(self, model, names, generator):
        return random_scores(model, names, generator)
