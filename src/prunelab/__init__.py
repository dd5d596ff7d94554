"""prunelab: pruning neural networks and studying why sparse networks are hard to train."""

from prunelab.config import RunConfig, TrainConfig, load_config, save_config
from prunelab.data import Dataset, list_datasets, load_dataset
from prunelab.errors import PrunelabError
from prunelab.groups import channel_groups
from prunelab.masks import (
    MaskEnforcer,
    apply_masks,
    from_torch_prune,
    load_masks,
    masks_from_weights,
    save_masks,
    sparsity_report,
    to_torch_prune,
    unit_masks_to_weight_masks,
)
from prunelab.methods import (
    FixedMask,
    GradualMagnitude,
    OneShotMagnitude,
    PruningMethod,
    build_method,
    list_methods,
)
from prunelab.models import build_model, list_models
from prunelab.retrain import retrain, retrain_from
from prunelab.runs import load_run
from prunelab.selection import select_masks
from prunelab.train import Trainer, TrainResult, evaluate, run

__version__ = "0.1.0"

__all__ = [
    "Dataset", "FixedMask", "GradualMagnitude", "MaskEnforcer", "OneShotMagnitude",
    "PrunelabError", "PruningMethod", "RunConfig", "TrainConfig", "TrainResult", "Trainer",
    "apply_masks", "build_method", "build_model", "channel_groups", "evaluate", "from_torch_prune",
    "list_datasets", "list_methods", "list_models", "load_config", "load_dataset", "load_masks",
    "load_run", "masks_from_weights", "retrain", "retrain_from", "run", "save_config",
    "save_masks", "select_masks", "sparsity_report", "to_torch_prune",
    "unit_masks_to_weight_masks",
]
