"""Datasets by name or path: `load_dataset("xor", n_irrelevant=20)`, `load_dataset("x.arff")`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prunelab.data import images, synthetic, tabular
from prunelab.data.base import Dataset, data_dirs
from prunelab.errors import ConfigError, UnknownNameError

DATASETS: dict[str, Callable[..., Dataset]] = {
    "xor": synthetic.load_xor,
    "blobs": synthetic.load_blobs,
    "madelon-like": synthetic.load_madelon_like,
    "digits": synthetic.load_digits,
    "mnist": images.load_mnist,
    "fashion-mnist": images.load_fashion_mnist,
    "madelon": tabular.load_madelon,
    "colon": tabular.load_colon,
    "leukemia": tabular.load_leukemia,
}

BUILT_IN = ("xor", "blobs", "madelon-like", "digits")
FILE_SUFFIXES = (".arff", ".csv", ".tsv", ".libsvm", ".svm", ".svmlight", ".gz")


def list_datasets() -> list[str]:
    """Registered dataset names."""
    return list(DATASETS)


def _looks_like_path(name: str) -> bool:
    return "/" in name or name.endswith(FILE_SUFFIXES) or Path(name).is_file()


def dataset_options(name: str) -> list[str]:
    """Keyword options a registered dataset accepts."""
    loader = DATASETS.get(name)
    if loader is None:
        raise UnknownNameError("dataset", name, DATASETS)
    return [p for p in inspect.signature(loader).parameters if p != "self"]


def load_dataset(
    name: str, *, data_dir: str | Path | None = None, seed: int = 0, **options: Any
) -> Dataset:
    """Load a registered dataset or a tabular file; unknown names and options list valid ones."""
    if name not in DATASETS and _looks_like_path(name):
        return tabular.load_tabular_file(name, seed=seed, **options)
    loader = DATASETS.get(name)
    if loader is None:
        raise UnknownNameError("dataset", name, DATASETS)
    params = inspect.signature(loader).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ConfigError(
            f"dataset '{name}' has no option {', '.join(unknown)}; "
            f"valid options: {', '.join(p for p in params if p not in ('seed', 'data_dir'))}"
        )
    kwargs = dict(options)
    if "seed" in params:
        kwargs["seed"] = seed
    if "data_dir" in params:
        kwargs["data_dir"] = data_dir
    return loader(**kwargs)


__all__ = ["Dataset", "DATASETS", "BUILT_IN", "data_dirs", "dataset_options", "list_datasets",
           "load_dataset"]
