"""The data-source contract: what every consumer (Trainer, evaluation, scores, landscape,
Hessian) asks of data, whether it is held in memory (`Dataset`) or streamed (`StreamingSource`).

A source serves the training split in an order that is a pure function of (seed, epoch)
(`epoch_order`), optionally augmented, and the evaluation splits ("train" without
augmentation, "test") in their stored order. A data-parallel run will give rank r of w the
slice `order[r::w]` of the same order (`shard`): batch k of every rank then holds exactly the
samples of batch k of a one-process run with w times the batch size.

Consumers never read tensors off a source; they ask for batches. The helpers here turn a
source into a bounded number of in-memory batches for the analyses that need them
(`batches`, `sample`, `split_tensors`).
"""

from __future__ import annotations

import hashlib
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

import torch

from prunelab.errors import ConfigError

Batch = tuple[torch.Tensor, torch.Tensor]
# A batched augmentation: (images, generator) -> augmented images, same shape and device.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

SPLITS = ("train", "test")
# Analyses that hold a whole split in memory refuse a streamed split larger than this unless
# the caller names a bound (max_samples); in-memory datasets are returned as they are.
MAX_MATERIALIZE_BYTES = 2 << 30


def derive_seed(seed: int, epoch: int, purpose: str) -> int:
    """A 63-bit seed that is a pure function of (seed, epoch, purpose), the same in every
    process (Python's `hash` is salted per process, so it is not used)."""
    digest = hashlib.blake2b(f"{int(seed)}:{int(epoch)}:{purpose}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") & ((1 << 63) - 1)


class EpochOrder:
    """The training order of `n` samples under `seed`: epoch e (from 1) is the e-th
    `torch.randperm(n)` drawn from a generator seeded with `seed` (the Trainer's order since
    the first version, so existing runs keep their numbers). Calling it for consecutive epochs
    costs one permutation each; any other epoch replays the draws, so the result depends on
    (seed, epoch) only."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = int(n), int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)
        self._drawn = 0

    def __call__(self, epoch: int) -> torch.Tensor:
        if epoch < 1:
            raise ConfigError(f"epochs count from 1, got {epoch}")
        if epoch <= self._drawn:
            self._generator.manual_seed(self.seed)
            self._drawn = 0
        while self._drawn < epoch - 1:
            torch.randperm(self.n, generator=self._generator)
            self._drawn += 1
        self._drawn += 1
        return torch.randperm(self.n, generator=self._generator)


_ORDERS: dict[tuple[int, int], EpochOrder] = {}
_ORDERS_LOCK = threading.Lock()


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of range(n) used in training epoch `epoch` (from 1) under `seed`."""
    key = (int(n), int(seed))
    with _ORDERS_LOCK:  # the cached generators are shared by every caller in the process
        order = _ORDERS.get(key)
        if order is None:
            if len(_ORDERS) >= 16:
                _ORDERS.clear()
            order = _ORDERS[key] = EpochOrder(n, seed)
        return order(epoch)


def shard(order: torch.Tensor, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Rank `rank` of `world` processes' part of an epoch order: every world-th sample."""
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"rank must be in [0, {world - 1}] for world size {world}, got {rank}")
    return order if world == 1 else order[rank::world]


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}; got '{split}'")
    return split


class DataSource(ABC):
    """What consumers may ask of data. Subclasses set `name`, `num_classes`, `input_shape`,
    `n_train`, `n_test` (attributes or properties) and serve batches."""

    name: str
    num_classes: int
    class_names: list[str] | None = None

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample (without the batch dimension)."""

    @property
    @abstractmethod
    def n_train(self) -> int:
        """Number of training samples."""

    @property
    @abstractmethod
    def n_test(self) -> int:
        """Number of samples in the evaluation split (the held-out part for a validation
        copy)."""

    @abstractmethod
    def train_batches(self, epoch: int, batch_size: int, seed: int = 0, *, rank: int = 0,
                      world: int = 1) -> Iterator[Batch]:
        """Training batches of epoch `epoch` (from 1), in `epoch_order(n_train, seed, epoch)`
        (sharded by rank/world), augmented where the source augments; CPU tensors. A source
        may also take `start=K` (keyword): begin at batch K of the epoch, with batch K exactly
        as a full pass would give it (what a resumed run asks; else it skips K batches)."""

    @abstractmethod
    def eval_batches(self, split: str = "test", batch_size: int = 2048) -> Iterator[Batch]:
        """Batches of a split ("train": the training set without augmentation, or "test"),
        in stored order; CPU tensors."""

    @abstractmethod
    def take(self, indices: torch.Tensor, split: str = "train") -> Batch:
        """The samples at `indices` of a split (without augmentation) as one batch."""

    def split_size(self, split: str) -> int:
        return self.n_train if check_split(split) == "train" else self.n_test

    def steps_per_epoch(self, batch_size: int, world: int = 1) -> int:
        """Optimizer steps in one training epoch (the last batch may be short)."""
        return max(1, math.ceil(math.ceil(self.n_train / world) / batch_size))

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly description (no tensors)."""
        return {"name": self.name, "n_train": self.n_train, "n_test": self.n_test,
                "input_shape": list(self.input_shape), "num_classes": self.num_classes}


def tensor_batches(x: torch.Tensor, y: torch.Tensor, order: torch.Tensor, batch_size: int,
                   augment: Augment | None = None, augment_seed: int | None = None, *,
                   generator: torch.Generator | None = None) -> Iterator[Batch]:
    """Batches of in-memory tensors in `order` (on x's device), each gathered with
    `index_select` (whole rows: the same batch as x[idx], ~3x faster on the CPU at MNIST size,
    benchmarks/batch_gather.py) and augmented with a generator seeded by `augment_seed` (or
    `generator` itself, e.g. one restored mid-epoch by a resumed run)."""
    if augment is not None and generator is None:
        generator = torch.Generator(device=x.device).manual_seed(int(augment_seed or 0))
    if augment is None:
        generator = None
    for start in range(0, order.shape[0], batch_size):
        idx = order[start : start + batch_size]
        xb, yb = x.index_select(0, idx), y.index_select(0, idx)
        if generator is not None:
            xb = augment(xb, generator)
        yield xb, yb


def is_source(obj: Any) -> bool:
    """Whether `obj` is a data source (an in-memory Dataset or a streaming source)."""
    return isinstance(obj, DataSource)


def as_source(data: Any) -> DataSource:
    """A data source from what users pass: a source as is; a (train, test) pair of torch
    Datasets or DataLoaders wrapped by `prunelab.data.stream`."""
    if isinstance(data, DataSource):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        from prunelab.data.stream import is_torch_data, stream

        if all(is_torch_data(d) for d in data):
            return stream(data[0], data[1])
    raise ConfigError(
        "data must be a prunelab Dataset, a streaming source (prunelab.data.stream(train, "
        f"test)) or a (train, test) pair of torch Datasets/DataLoaders; got {type(data).__name__}"
    )


def _check_bounded(source: DataSource, split: str, n: int, max_bytes: int) -> None:
    need = n * math.prod(source.input_shape) * 4
    if need > max_bytes:
        raise ConfigError(
            f"the {split} split of '{source.name}' ({n} samples, {need / 2**30:.1f} GiB as "
            f"float32) is too large to hold in memory for this analysis; bound it with a "
            f"sample count (max_samples / --samples)"
        )


def batches(source: DataSource, n: int | None = None, *, split: str = "train",
            batch_size: int = 2048, max_bytes: int = MAX_MATERIALIZE_BYTES) -> list[Batch]:
    """The first `n` samples (all when None) of a split, without augmentation, as a list of
    in-memory CPU batches: what a score or an analysis that runs over data asks for. A whole
    streamed split over `max_bytes` is refused (name `n` to bound it)."""
    source = as_source(source)
    total = source.split_size(split)
    want = total if n is None else min(int(n), total)
    if want < 1:
        raise ConfigError(f"need at least one sample, asked for {n}")
    if n is None and not _in_memory(source):
        _check_bounded(source, split, want, max_bytes)
    out: list[Batch] = []
    got = 0
    for xb, yb in source.eval_batches(split, batch_size):
        keep = min(xb.shape[0], want - got)
        out.append((xb[:keep], yb[:keep]) if keep < xb.shape[0] else (xb, yb))
        got += keep
        if got >= want:
            break
    return out


def _in_memory(source: DataSource) -> bool:
    from prunelab.data.base import Dataset

    return isinstance(source, Dataset)


def sample(source: DataSource, n: int, seed: int = 0, split: str = "train") -> Batch:
    """A seeded random sample of `n` samples of a split (without augmentation) as one batch:
    for the training split of an in-memory Dataset, exactly the samples of
    `Dataset.subset_train(n, seed)`, in that order."""
    source = as_source(source)
    total = source.split_size(split)
    if not 0 < n <= total:
        raise ConfigError(f"sample size must be in [1, {total}], got {n}")
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(total, generator=g)[:n]
    return source.take(idx, split)


def split_tensors(source: DataSource, split: str = "train", max_samples: int | None = None,
                  *, max_bytes: int = MAX_MATERIALIZE_BYTES) -> Batch:
    """A whole split (or its first `max_samples`) as two in-memory tensors, for analyses that
    need all the data at once (paths, curves, Hessians). An in-memory Dataset's tensors are
    returned as they are; a streamed split over `max_bytes` is refused unless `max_samples`
    bounds it, so an analysis never silently fills the memory."""
    source = as_source(source)
    check_split(split)
    if _in_memory(source):
        x, y = (source.x_train, source.y_train) if split == "train" else \
            (source.x_test, source.y_test)
        return (x, y) if max_samples is None else (x[:max_samples], y[:max_samples])
    parts = batches(source, max_samples, split=split, max_bytes=max_bytes)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
