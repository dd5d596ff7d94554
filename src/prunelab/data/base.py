"""The dataset contract shared by every loader: tensors plus metadata, split and scaled honestly."""

from __future__ import annotations

import gzip
import itertools
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunelab.data.source import (
    Augment,
    Batch,
    DataSource,
    check_split,
    derive_seed,
    epoch_order,
    shard,
    tensor_batches,
)
from prunelab.errors import ConfigError, DataError


@dataclass
class Dataset(DataSource):
    """Train/test tensors plus what a researcher needs to know about the columns: the
    in-memory data source, and the fast path of the Trainer.

    `x_*` are float32 with shape (n, *input_shape); `y_*` are int64 class indices.
    `relevant_features` lists the column indices known to carry the signal (None if unknown).
    `augment` (e.g. `CropFlip`) is applied to each training batch, never to evaluation.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    feature_names: list[str] | None = None
    relevant_features: list[int] | None = None
    class_names: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    augment: Augment | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly description (no tensors)."""
        return {
            "name": self.name,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "relevant_features": self.relevant_features,
            **{k: v for k, v in self.meta.items() if isinstance(v, (int, float, str, bool, list))},
        }

    def train_batches(self, epoch: int, batch_size: int, seed: int = 0, *, rank: int = 0,
                      world: int = 1, start: int = 0) -> Iterator[Batch]:
        """Training batches of epoch `epoch` (from 1) in `epoch_order(n_train, seed, epoch)`,
        augmented (when `augment` is set) with a generator seeded by (seed, epoch); from batch
        `start` on (the skipped batches' augmentation draws are replayed, so the rest match a
        full pass)."""
        order = shard(epoch_order(self.n_train, seed, epoch), rank, world)
        it = tensor_batches(self.x_train, self.y_train, order, batch_size, self.augment,
                            derive_seed(seed, epoch, "augment"))
        if start and self.augment is None:
            return tensor_batches(self.x_train, self.y_train, order[start * batch_size:],
                                  batch_size)
        return itertools.islice(it, start, None) if start else it

    def eval_batches(self, split: str = "test", batch_size: int = 2048) -> Iterator[Batch]:
        """Consecutive slices of a split ("train" is never augmented)."""
        x, y = (self.x_train, self.y_train) if check_split(split) == "train" else \
            (self.x_test, self.y_test)
        for i in range(0, x.shape[0], batch_size):
            yield x[i : i + batch_size], y[i : i + batch_size]

    def take(self, indices: torch.Tensor, split: str = "train") -> Batch:
        x, y = (self.x_train, self.y_train) if check_split(split) == "train" else \
            (self.x_test, self.y_test)
        return x[indices], y[indices]

    def subset_train(self, n: int, seed: int = 0) -> Dataset:
        """A copy whose training set is a seeded random subset of size n (test set kept)."""
        if not 0 < n <= self.n_train:
            raise ConfigError(f"subset size must be in [1, {self.n_train}], got {n}")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(self.n_train, generator=g)[:n]
        return Dataset(
            self.name, self.x_train[idx], self.y_train[idx], self.x_test, self.y_test,
            self.num_classes, self.feature_names, self.relevant_features, self.class_names,
            dict(self.meta, n_train_subset=n), self.augment,
        )

    def holdout_validation(self, fraction: float, seed: int = 0) -> Dataset:
        """A copy that trains on the rest of the training set and evaluates on a seeded,
        class-stratified `fraction` of it; the test set is left out, so options chosen on
        this copy never see it. Scaling done by the loader (tabular sets) used the whole
        training set, held-out part included."""
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"validation fraction must be in (0, 1), got {fraction}")
        if self.n_train < 2:
            raise ConfigError(f"a validation split needs 2+ training examples, got {self.n_train}")
        keep, held = (torch.from_numpy(i) for i in
                      stratified_split(self.y_train.numpy(), fraction, seed))
        return Dataset(
            f"{self.name} (validation)", self.x_train[keep], self.y_train[keep],
            self.x_train[held], self.y_train[held], self.num_classes, self.feature_names,
            self.relevant_features, self.class_names,
            dict(self.meta, evaluation="validation", validation_fraction=fraction,
                 validation_seed=seed), self.augment,
        )


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: returns (train_idx, test_idx), each class split in proportion."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def standardize(
    x_train: np.ndarray, x_test: np.ndarray, eps: float = 1e-8
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Scale columns to zero mean, unit variance using training statistics only.

    Constant training columns are centred but not scaled (their std is replaced by 1).
    """
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std < eps, 1.0, std)
    return (x_train - mean) / std, (x_test - mean) / std, {"mean": mean, "std": std}


def encode_labels(labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Map arbitrary labels to 0..K-1 in sorted order; returns codes and class names."""
    classes, codes = np.unique(labels, return_inverse=True)
    return codes.astype(np.int64), [str(c) for c in classes]


def to_dataset(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    **kwargs: Any,
) -> Dataset:
    """Wrap numpy arrays as a Dataset (float32 inputs, int64 labels)."""
    num_classes = kwargs.pop("num_classes", None)
    if num_classes is None:
        num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    return Dataset(
        name,
        torch.as_tensor(np.ascontiguousarray(x_train), dtype=torch.float32),
        torch.as_tensor(np.ascontiguousarray(y_train), dtype=torch.int64),
        torch.as_tensor(np.ascontiguousarray(x_test), dtype=torch.float32),
        torch.as_tensor(np.ascontiguousarray(y_test), dtype=torch.int64),
        num_classes,
        **kwargs,
    )


def data_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """The data directories searched, in order: explicit, $PRUNELAB_DATA, ~/.cache/prunelab."""
    dirs: list[Path] = []
    if data_dir:
        dirs.append(Path(data_dir).expanduser())
    env = os.environ.get("PRUNELAB_DATA")
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(Path.home() / ".cache" / "prunelab")
    return dirs


def find_data_file(
    candidates: list[str], data_dir: str | Path | None, get_with: str
) -> Path:
    """First existing file among `candidates` (relative paths) in the searched directories.

    Raises DataError naming the file, the directories searched and the command that gets it.
    """
    searched = data_dirs(data_dir)
    for d in searched:
        for rel in candidates:
            p = d / rel
            if p.is_file():
                return p
    where = ", ".join(str(d) for d in searched)
    raise DataError(
        f"data file '{candidates[0]}' not found in {where}; get it with '{get_with}' "
        "or point --data-dir / PRUNELAB_DATA at a directory holding it"
    )


GZIP_MAGIC = b"\x1f\x8b"


def one_line(exc: BaseException) -> str:
    """An exception's message folded onto one line (for user-facing errors)."""
    return " ".join((str(exc) or type(exc).__name__).split())


def read_file_bytes(path: str | Path) -> bytes:
    """A data file's bytes, gunzipped when it starts with the gzip magic bytes (whatever its
    name). Missing, unreadable, truncated or corrupt files raise DataError naming the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"data file {path} not found") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {one_line(exc)}") from None
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise DataError(
            f"{path} is truncated: the gzip stream ends early (delete it and fetch it again)"
        ) from None
    except (OSError, zlib.error, ValueError) as exc:
        raise DataError(f"{path} is not a valid gzip file: {one_line(exc)}") from None
