"""Datasets by name or path: `load_dataset("xor", n_irrelevant=20)`, `load_dataset("x.arff")`,
`load_dataset("cifar10")`, `load_dataset("imagefolder:/data/imagenet", resize=64)`.

Every loader returns a data source (`DataSource`): an in-memory `Dataset` (the fast path) or a
`StreamingSource` over torch Datasets/DataLoaders (`stream(train, test)` wraps your own).
Consumers ask a source for batches (`train_batches`, `eval_batches`, and the helpers
`batches`, `sample`, `split_tensors`), never for its tensors.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prunelab.data import cifar, folder, images, synthetic, tabular
from prunelab.data.augment import CropFlip
from prunelab.data.base import Dataset, data_dirs
from prunelab.data.source import (
    Batch,
    DataSource,
    as_source,
    batches,
    epoch_order,
    is_source,
    sample,
    shard,
    split_tensors,
)
from prunelab.data.stream import StreamingSource, stream
from prunelab.errors import ConfigError, UnknownNameError

DATASETS: dict[str, Callable[..., Dataset]] = {
    "xor": synthetic.load_xor,
    "blobs": synthetic.load_blobs,
    "madelon-like": synthetic.load_madelon_like,
    "digits": synthetic.load_digits,
    "mnist": images.load_mnist,
    "fashion-mnist": images.load_fashion_mnist,
    "cifar10": cifar.load_cifar10,
    "cifar100": cifar.load_cifar100,
    "madelon": tabular.load_madelon,
    "colon": tabular.load_colon,
    "leukemia": tabular.load_leukemia,
}

VALIDATION_OPTION = "validation"  # accepted by every dataset, see load_dataset
BUILT_IN = ("xor", "blobs", "madelon-like", "digits")
FILE_SUFFIXES = (".arff", ".csv", ".tsv", ".libsvm", ".svm", ".svmlight", ".gz")


def list_datasets() -> list[str]:
    """Registered dataset names."""
    return list(DATASETS)


def _looks_like_path(name: str) -> bool:
    """A name that is not registered but names data by path (a file, or imagefolder:PATH)."""
    return (name.startswith(folder.PREFIX) or "/" in name or name.endswith(FILE_SUFFIXES)
            or Path(name).is_file())


def dataset_options(name: str) -> list[str]:
    """Keyword options a registered dataset (or `imagefolder`) accepts."""
    if name.rstrip(":") == folder.PREFIX.rstrip(":"):
        loader = folder.load_image_folder
    else:
        loader = DATASETS.get(name)
    if loader is None:
        raise UnknownNameError("dataset", name, DATASETS)
    skip = ("self", "path")
    return [p for p in inspect.signature(loader).parameters if p not in skip] + \
        [VALIDATION_OPTION]


def load_dataset(
    name: str, *, data_dir: str | Path | None = None, seed: int = 0, **options: Any
) -> Dataset | StreamingSource:
    """Load a registered dataset or a tabular file; unknown names and options list valid ones.

    Every dataset also takes `validation=f` (0 < f < 1): train on the rest of the training
    set and evaluate on a seeded, stratified fraction f of it instead of the test set
    (`Dataset.holdout_validation`), for choosing options without touching the test set."""
    validation = options.pop(VALIDATION_OPTION, None)
    data = _load(name, data_dir, seed, options)
    if validation is None:
        return data
    try:
        fraction = float(validation)
    except (TypeError, ValueError):
        raise ConfigError(f"validation must be a fraction in (0, 1), got {validation!r}") from None
    return data.holdout_validation(fraction, seed)


def _load(name: str, data_dir: str | Path | None, seed: int, options: dict[str, Any]
          ) -> Dataset | StreamingSource:
    if name.startswith(folder.PREFIX):
        path = name[len(folder.PREFIX):]
        if not path:
            raise ConfigError("imagefolder needs a path: imagefolder:PATH")
        _check_options("imagefolder", folder.load_image_folder, options)
        return folder.load_image_folder(path, **{**options, "seed": seed})
    if name not in DATASETS and _looks_like_path(name):
        return tabular.load_tabular_file(name, seed=seed, **options)
    loader = DATASETS.get(name)
    if loader is None:
        raise UnknownNameError("dataset", name, DATASETS)
    params = _check_options(name, loader, options)
    kwargs = dict(options)
    if "seed" in params:
        kwargs["seed"] = seed
    if "data_dir" in params:
        kwargs["data_dir"] = data_dir
    return loader(**kwargs)


def _check_options(name: str, loader: Callable[..., Any], options: dict[str, Any]) -> Any:
    params = inspect.signature(loader).parameters
    unknown = sorted(set(options) - set(params) | ({"path"} & set(options)))
    if unknown:
        valid = [p for p in params if p not in ("seed", "data_dir", "path")] + \
            [VALIDATION_OPTION]
        raise ConfigError(
            f"dataset '{name}' has no option {', '.join(unknown)}; valid options: "
            f"{', '.join(valid)}"
        )
    return params


__all__ = ["BUILT_IN", "Batch", "CropFlip", "DATASETS", "DataSource", "Dataset",
           "StreamingSource", "as_source", "batches", "data_dirs", "dataset_options",
           "epoch_order", "is_source", "list_datasets", "load_dataset", "sample", "shard",
           "split_tensors", "stream"]
