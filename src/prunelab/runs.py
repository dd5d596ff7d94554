"""Reading run directories back: config, final weights, masks, initial and rewind weights."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from prunelab.config import RunConfig, load_config
from prunelab.errors import DataError, PrunelabError
from prunelab.masks import Masks, apply_masks, load_masks
from prunelab.models import build_model

if TYPE_CHECKING:
    from prunelab.train import TrainResult


@dataclass
class LoadedRun:
    """A finished run: its config, model with final weights (masks applied), masks, results."""

    path: Path
    config: RunConfig
    model: nn.Module
    masks: Masks | None
    results: dict[str, Any]

    def state(self, name: str) -> dict[str, torch.Tensor]:
        """Weights saved during the run: 'init', 'final', 'epochK' or 'stepK'."""
        if name == "init":
            return _load_state(self.path / "init.pt")
        if name == "final":
            return _load_state(self.path / "weights.pt")
        path = self.path / "checkpoints" / f"{name}.pt"
        if not path.is_file():
            have = sorted(p.stem for p in (self.path / "checkpoints").glob("*.pt"))
            raise PrunelabError(
                f"run {self.path} has no checkpoint '{name}'; available: "
                f"{', '.join(['init'] + have)} (save steps with checkpoint_steps)"
            )
        return _load_state(path)


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"missing file {path}: not a finished prunelab run directory?") from None
    except Exception as exc:
        raise DataError(f"cannot read {path}: corrupt or not a weights file "
                        f"({type(exc).__name__})") from None


def load_run(path: str | Path, input_shape: tuple[int, ...] | None = None,
             num_classes: int | None = None) -> LoadedRun:
    """Load a finished run directory. The model is rebuilt from the config; the input shape
    and class count come from results.json (so the data need not be loaded)."""
    path = Path(path)
    if not (path / "results.json").is_file():
        raise PrunelabError(f"{path} is not a finished prunelab run (no results.json)")
    results = json.loads((path / "results.json").read_text())
    cfg = load_config(path / "config.yaml")
    ds = results.get("dataset", {})
    shape = input_shape or tuple(ds["input_shape"])
    classes = num_classes or int(ds["num_classes"])
    model = build_model(cfg.model, shape, classes, **cfg.model_options)
    state = _load_state(path / "weights.pt")
    fits = set(state) == set(model.state_dict()) and all(
        state[k].shape == v.shape for k, v in model.state_dict().items())
    if not fits:
        if not (path / "shrunk.pt").is_file():
            raise DataError(f"{path}/weights.pt does not fit model '{cfg.model}'")
        # Units were removed physically during training: the run's model is the shrunk one.
        from prunelab.shrink import load_shrunk

        return LoadedRun(path, cfg, load_shrunk(path / "shrunk.pt"), None, results)
    model.load_state_dict(state)
    masks = load_masks(path / "masks.pt", model) if (path / "masks.pt").is_file() else None
    if masks is not None:
        apply_masks(model, masks)
    return LoadedRun(path, cfg, model, masks, results)


def load_result(path: str | Path) -> TrainResult:
    """The `TrainResult` of a finished run directory, as `prunelab.train.run` returned it when
    it wrote the directory: metrics, final numbers, the full sparsity report, masks, initial,
    snapshot and final weights (tensors bit for bit; what a skipped IMP level or a cached
    sub-run of a reproduction hands on)."""
    from prunelab.train import TrainResult  # (train does not import runs: no cycle)

    path = Path(path)
    if not (path / "results.json").is_file():
        raise PrunelabError(f"{path} is not a finished prunelab run (no results.json)")
    results = json.loads((path / "results.json").read_text())
    metrics_file = path / "metrics.jsonl"
    metrics = [json.loads(line) for line in metrics_file.read_text().splitlines()
               if line.strip()] if metrics_file.is_file() else []
    sparsity_file = path / "sparsity.json"
    sparsity = (json.loads(sparsity_file.read_text()) if sparsity_file.is_file()
                else {"global": results.get("sparsity", {})})
    masks = load_masks(path / "masks.pt") if (path / "masks.pt").is_file() else None
    initial = _load_state(path / "init.pt")
    checkpoints = {"step0": initial}
    for p in sorted((path / "checkpoints").glob("*.pt"), key=_snapshot_order):
        checkpoints[p.stem] = _load_state(p)
    return TrainResult(metrics, dict(results.get("final", {})), sparsity, masks, initial,
                       checkpoints, _load_state(path / "weights.pt"))


def _snapshot_order(p: Path) -> tuple[int, int]:
    """step snapshots and epoch snapshots in the order a run takes them (by step, then epoch:
    the dict order of TrainResult.checkpoints only matters for iteration)."""
    name = p.stem
    digits = "".join(c for c in name if c.isdigit())
    return (0 if name.startswith("step") else 1, int(digits) if digits else 0)
