"""Streaming data sources: any torch `Dataset` or `DataLoader` served batch by batch, for data
that does not fit in memory (worker processes, augmentation in the loader, pinned memory).

Given a map-style torch Dataset, prunelab owns the order: epoch e's batches follow
`epoch_order(n, seed, e)`, exactly as the in-memory `Dataset` does, so the same tensors served
both ways train to the same weights. The torch RNG is reseeded for every sample from
(seed, epoch, sample index) while it is fetched, in whichever worker fetches it, so random
augmentation written with torch's RNG is a pure function of (seed, epoch, sample): the same
for any number of workers, with or without persistent workers, and under data-parallel
sharding. (NumPy's or Python's RNG in a transform is not reseeded: draw from torch.)

Given a DataLoader, its own sampler and batch size decide (its sampler's `set_epoch(epoch)` is
called when it has one); prunelab only iterates it.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, Subset, TensorDataset
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data._utils.collate import default_collate

from prunelab.data.base import stratified_split
from prunelab.data.source import (
    Batch,
    DataSource,
    check_split,
    derive_seed,
    epoch_order,
    shard,
)
from prunelab.errors import ConfigError, DataError

_MIX = 0x9E3779B97F4A7C15
_MASK63 = (1 << 63) - 1


def is_torch_data(obj: Any) -> bool:
    """Whether `obj` is a torch Dataset or DataLoader (what `stream` wraps)."""
    return isinstance(obj, (TorchDataset, DataLoader))


def sample_seed(epoch_seed: int, index: int) -> int:
    """The torch RNG seed while sample `index` is fetched in an epoch seeded `epoch_seed`."""
    return (epoch_seed + (int(index) + 1) * _MIX) & _MASK63


class _Indices(list):
    """The sample indices of one transfer from a worker, carrying its epoch's augmentation
    seed and the sizes of the batches it holds (consecutive; one batch: one size)."""

    def __init__(self, indices: Sequence[int], seed: int | None,
                 sizes: Sequence[int] | None = None):
        super().__init__(indices)
        self.seed = seed
        self.sizes = list(sizes) if sizes is not None else [len(self)]


class _Batches:
    """A batch sampler over a fixed list of transfers of `group` consecutive batches each;
    `set` swaps them between epochs, so one DataLoader (and its persistent workers) serves
    every epoch."""

    def __init__(self, group: int = 1) -> None:
        self.group = group
        self.batches: list[_Indices] = []

    def set(self, order: torch.Tensor, batch_size: int, seed: int | None, start: int = 0
            ) -> None:
        idx = order.tolist()[start * batch_size:]
        step = batch_size * self.group
        self.batches = []
        for i in range(0, len(idx), step):
            chunk = idx[i : i + step]
            sizes = [min(batch_size, len(chunk) - j) for j in range(0, len(chunk), batch_size)]
            self.batches.append(_Indices(chunk, seed, sizes))

    def __iter__(self) -> Iterator[_Indices]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _SeededFetch(TorchDataset):
    """Fetches the samples of a batch with the torch RNG seeded per sample (`sample_seed`),
    restoring the process's RNG state afterwards. A dataset with its own batched
    `__getitems__` (not a Subset, whose `__getitems__` only forwards) gets the whole batch in
    one call, the RNG seeded from its first sample: the draws then also depend on how the
    samples were batched."""

    def __init__(self, dataset: TorchDataset):
        self.dataset = dataset
        batched = getattr(dataset, "__getitems__", None)
        self._batched = batched if callable(batched) and not isinstance(dataset, Subset) \
            else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def _fetch(self, indices: list[int]) -> list[Any]:
        if self._batched is not None:
            return self._batched(indices)
        return [self.dataset[i] for i in indices]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        seed = getattr(indices, "seed", None)
        if seed is None:
            return self._fetch(list(indices))
        gen = torch.default_generator
        state = gen.get_state()
        try:
            if self._batched is not None:  # batch by batch, as if each came on its own
                out, at = [], 0
                for size in getattr(indices, "sizes", [len(indices)]):
                    batch = list(indices[at : at + size])
                    gen.manual_seed(sample_seed(seed, batch[0]))
                    out += self._batched(batch)
                    at += size
                return out
            out = []
            for i in indices:
                gen.manual_seed(sample_seed(seed, i))
                out.append(self.dataset[i])
            return out
        finally:
            gen.set_state(state)


WORKER_SHARING = "file_system"
# A worker sends up to MAX_GROUP consecutive batches in one transfer of at most TRANSFER_BYTES:
# each transfer costs the training process ~0.5-1 ms of CPU whatever its size, which small
# batches of small images (MNIST, 0.4 MB) would pay per batch (benchmarks/RESULTS.md,
# streaming_vs_memory). Large batches (CIFAR at 512, ImageNet) go one by one.
TRANSFER_BYTES = 4 << 20
MAX_GROUP = 8


def _worker_sharing(strategy: str, worker_id: int) -> None:
    """DataLoader worker init: hand batches to the training process under `strategy`. The
    sending process's strategy decides how a tensor crosses (`reduce_storage` and the
    collate's shared allocation read it), so this changes nothing in the training process.
    Under torch's default `file_descriptor` each batch tensor's descriptor travels over a
    fresh socket connection, which costs the receiving training process ~1 ms of CPU a batch
    (benchmarks/RESULTS.md, streaming_vs_memory)."""
    torch.multiprocessing.set_sharing_strategy(strategy)


def split_batches(collated: Any, sizes: Sequence[int]) -> list[Any]:
    """A collated transfer of several consecutive batches split back into the batches, as
    `default_collate` would have made each (views, no copy): tensors along their first
    dimension, tuples, lists and dicts element by element."""
    if isinstance(collated, torch.Tensor):
        return list(collated.split(list(sizes)))
    if isinstance(collated, dict):
        parts = {k: split_batches(v, sizes) for k, v in collated.items()}
        return [type(collated)({k: p[i] for k, p in parts.items()}) for i in range(len(sizes))]
    if isinstance(collated, (list, tuple)):
        parts = [split_batches(v, sizes) for v in collated]
        rows = [[p[i] for p in parts] for i in range(len(sizes))]
        if isinstance(collated, tuple) and hasattr(collated, "_fields"):  # a namedtuple
            return [type(collated)(*r) for r in rows]
        return [type(collated)(r) for r in rows]
    raise TypeError(f"cannot split a collated {type(collated).__name__} into batches")


def _iterate(loader: Any, sampler: _Batches | None = None) -> Iterator[Any]:
    """Iterate a loader; a DataError raised in a worker comes back as its own one line (the
    DataLoader re-raises it with the worker's traceback folded into the message). With
    `sampler` (one of prunelab's, whose transfers may hold several batches), the batches of
    each transfer are yielded one by one."""
    try:
        if sampler is None or sampler.group == 1:
            yield from loader
            return
        chunks = list(sampler.batches)  # this epoch's transfers, in the loader's order
        for collated, chunk in zip(loader, chunks):
            if len(chunk.sizes) == 1:
                yield collated
            else:
                yield from split_batches(collated, chunk.sizes)
    except DataError as exc:
        msg = str(exc)
        if "Traceback" in msg and "DataError: " in msg:
            msg = msg.rsplit("DataError: ", 1)[-1].strip()
        raise DataError(msg) from None


def _length(data: Any, what: str) -> int:
    try:
        return len(data)
    except TypeError:
        raise ConfigError(f"the {what} data has no length; a streaming source needs a sized "
                          "(map-style) Dataset or a DataLoader over one") from None


def targets_of(dataset: Any) -> torch.Tensor | None:
    """The class labels of a torch Dataset without reading its samples, when it exposes them
    (a `targets` attribute, a TensorDataset, a Subset of one of those); else None."""
    if isinstance(dataset, Subset):
        inner = targets_of(dataset.dataset)
        return None if inner is None else inner[torch.as_tensor(dataset.indices)]
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets).long().reshape(-1)
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return dataset.tensors[1].long().reshape(-1)
    return None


def _infer_num_classes(*datasets: Any) -> int:
    for dataset in datasets:
        classes = getattr(dataset, "classes", None)
        if classes is not None:
            return len(classes)
        targets = targets_of(dataset)
        if targets is not None and targets.numel():
            return int(targets.max()) + 1
    raise ConfigError("cannot tell the number of classes of this dataset; pass num_classes=")


class StreamingSource(DataSource):
    """A data source over torch Datasets or DataLoaders (module doc).

    `train` / `test`: map-style Datasets (prunelab owns the order and batching) or
    DataLoaders (used as given). `train_eval`: the training set without augmentation, for
    evaluating on it and scoring (default: `train` itself). `workers`, `pin_memory` (default:
    when CUDA is available), `persistent_workers`, `prefetch_factor`, `collate_fn` configure
    the DataLoaders built over Datasets; `worker_sharing` is the torch sharing strategy the
    loader workers send batches with (default "file_system", cheaper for the training process
    than torch's default; None: whatever the process uses), set in the workers only;
    `transfer_bytes` bounds a worker's transfer of several consecutive batches at once (0: one
    batch per transfer), which the training process splits back into the same batches.
    `num_classes` and `input_shape` are read off the data
    when not given (`classes`/`targets` attributes, the first sample)."""

    def __init__(
        self,
        train: TorchDataset | DataLoader,
        test: TorchDataset | DataLoader,
        *,
        train_eval: TorchDataset | None = None,
        name: str = "stream",
        num_classes: int | None = None,
        input_shape: Sequence[int] | None = None,
        class_names: list[str] | None = None,
        workers: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        prefetch_factor: int | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        worker_sharing: str | None = WORKER_SHARING,
        transfer_bytes: int = TRANSFER_BYTES,
        meta: dict[str, Any] | None = None,
    ):
        for what, d in (("train", train), ("test", test)):
            if not is_torch_data(d):
                raise ConfigError(f"the {what} data must be a torch Dataset or DataLoader, got "
                                  f"{type(d).__name__}")
            if isinstance(d, IterableDataset):
                raise ConfigError(f"the {what} data is an IterableDataset, which decides its own "
                                  "order: wrap it in a DataLoader and pass that")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ConfigError(f"workers must be an integer >= 0, got {workers!r}")
        strategies = torch.multiprocessing.get_all_sharing_strategies()
        if worker_sharing is not None and worker_sharing not in strategies:
            raise ConfigError(f"worker_sharing must be one of {sorted(strategies)} or None, "
                              f"got {worker_sharing!r}")
        self.worker_sharing = worker_sharing
        if isinstance(transfer_bytes, bool) or not isinstance(transfer_bytes, int) \
                or transfer_bytes < 0:
            raise ConfigError(f"transfer_bytes must be an integer >= 0, got {transfer_bytes!r}")
        self.transfer_bytes = transfer_bytes
        self.train, self.test = train, test
        base = train.dataset if isinstance(train, DataLoader) else train
        self.train_eval = train_eval if train_eval is not None else base
        self.name = name
        self.workers = workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and workers > 0
        self.prefetch_factor = prefetch_factor
        self.collate_fn = collate_fn or default_collate
        self.meta = dict(meta or {})
        self._n_train = _length(base, "train")
        self._n_test = _length(test.dataset if isinstance(test, DataLoader) else test, "test")
        if self._n_train < 1:
            raise ConfigError("the training data is empty")
        self.num_classes = int(num_classes) if num_classes is not None else \
            _infer_num_classes(self.train_eval, base)
        self.class_names = class_names
        self._item_bytes = 4  # of an input element (float32 unless the first sample says)
        if input_shape is None:
            first = self.train_eval[0]
            input_shape = tuple(first[0].shape)
            if isinstance(first[0], torch.Tensor):
                self._item_bytes = first[0].element_size()
        self._input_shape = tuple(int(s) for s in input_shape)
        self._loaders: dict[tuple[str, int], tuple[DataLoader, _Batches]] = {}

    # ------------------------------------------------------------------ sizes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._input_shape

    @property
    def n_train(self) -> int:
        return self._n_train

    @property
    def n_test(self) -> int:
        return self._n_test

    def steps_per_epoch(self, batch_size: int, world: int = 1) -> int:
        if isinstance(self.train, DataLoader):
            return max(1, _length(self.train, "train"))
        return super().steps_per_epoch(batch_size, world)

    # ------------------------------------------------------------------ batches

    def _loader(self, kind: str, dataset: TorchDataset, batch_size: int
                ) -> tuple[DataLoader, _Batches]:
        key = (kind, batch_size)
        if key not in self._loaders:
            sampler = _Batches(self._group(batch_size))
            extra: dict[str, Any] = {}
            if self.workers > 0:
                extra["persistent_workers"] = self.persistent_workers
                if self.prefetch_factor is not None:
                    extra["prefetch_factor"] = self.prefetch_factor
                if self.worker_sharing is not None:
                    extra["worker_init_fn"] = functools.partial(_worker_sharing,
                                                                self.worker_sharing)
            # its own generator: a loader draws its workers' base seed from it at every
            # epoch, which would otherwise advance the process's global RNG
            loader = DataLoader(_SeededFetch(dataset), batch_sampler=sampler,
                                num_workers=self.workers, collate_fn=self.collate_fn,
                                pin_memory=self.pin_memory,
                                generator=torch.Generator().manual_seed(0), **extra)
            self._loaders[key] = (loader, sampler)
        return self._loaders[key]

    def _group(self, batch_size: int) -> int:
        """Batches per transfer from a worker: as many as fit in `transfer_bytes` (at most
        `MAX_GROUP`), when workers send them through prunelab's own collate; else 1."""
        if self.workers == 0 or self.collate_fn is not default_collate:
            return 1
        batch_bytes = batch_size * self._item_bytes * math.prod(self._input_shape)
        return max(1, min(MAX_GROUP, self.transfer_bytes // max(1, batch_bytes)))

    def train_batches(self, epoch: int, batch_size: int, seed: int = 0, *, rank: int = 0,
                      world: int = 1, start: int = 0) -> Iterator[Batch]:
        """The epoch's batches from batch `start` on; samples are seeded per (seed, epoch,
        index), so a batch is the same whether or not the batches before it were fetched (a
        user's DataLoader is iterated and its first `start` batches dropped)."""
        if isinstance(self.train, DataLoader):
            if world != 1:
                raise ConfigError("a DataLoader passed as training data cannot be sharded by "
                                  "prunelab; pass the Dataset instead")
            set_epoch = getattr(self.train.sampler, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(epoch)
            it = _iterate(self.train)
            return itertools.islice(it, start, None) if start else it
        order = shard(epoch_order(self._n_train, seed, epoch), rank, world)
        loader, sampler = self._loader("fit", self.train, batch_size)
        sampler.set(order, batch_size, derive_seed(seed, epoch, "augment"), start)
        return _iterate(loader, sampler)

    def _split_data(self, split: str) -> Any:
        return self.train_eval if check_split(split) == "train" else self.test

    def eval_batches(self, split: str = "test", batch_size: int = 2048) -> Iterator[Batch]:
        data = self._split_data(split)
        if isinstance(data, DataLoader):
            return _iterate(data)
        loader, sampler = self._loader(f"eval-{split}", data, batch_size)
        sampler.set(torch.arange(_length(data, split)), batch_size, None)
        return _iterate(loader, sampler)

    def take(self, indices: torch.Tensor, split: str = "train") -> Batch:
        data = self._split_data(split)
        if isinstance(data, DataLoader):
            data = data.dataset
        return self.collate_fn([data[int(i)] for i in indices])

    # ------------------------------------------------------------------ derived sources

    def _options(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "input_shape": self._input_shape,
                "class_names": self.class_names, "workers": self.workers,
                "pin_memory": self.pin_memory, "persistent_workers": self.persistent_workers,
                "prefetch_factor": self.prefetch_factor, "collate_fn": self.collate_fn,
                "worker_sharing": self.worker_sharing,
                "transfer_bytes": self.transfer_bytes}

    def holdout_validation(self, fraction: float, seed: int = 0) -> StreamingSource:
        """A copy that trains on the rest of the training set and evaluates on a seeded,
        class-stratified `fraction` of it (the test set left out), as `Dataset` does."""
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"validation fraction must be in (0, 1), got {fraction}")
        if isinstance(self.train, DataLoader):
            raise ConfigError("a validation split needs the training Dataset, not a DataLoader")
        labels = targets_of(self.train_eval)
        if labels is None:
            raise ConfigError("a validation split needs the training labels without reading "
                              "every sample: give the dataset a `targets` attribute")
        keep, held = stratified_split(labels.numpy(), fraction, seed)
        keep_l, held_l = keep.tolist(), held.tolist()
        meta = dict(self.meta, evaluation="validation", validation_fraction=fraction,
                    validation_seed=seed)
        return StreamingSource(Subset(self.train, keep_l), Subset(self.train_eval, held_l),
                               train_eval=Subset(self.train_eval, keep_l),
                               name=f"{self.name} (validation)", meta=meta, **self._options())

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out.update(streamed=True, workers=self.workers)
        out.update({k: v for k, v in self.meta.items()
                    if isinstance(v, (int, float, str, bool, list))})
        return out

    def close(self) -> None:
        """Shut down persistent loader workers now (they also end with the source)."""
        self._loaders.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_loaders"] = {}  # loaders and their worker processes stay with their process
        return state


def stream(train: TorchDataset | DataLoader, test: TorchDataset | DataLoader,
           **options: Any) -> StreamingSource:
    """Wrap a torch (train, test) pair of Datasets or DataLoaders as a data source the Trainer,
    `evaluate` and the analyses accept; options as `StreamingSource`."""
    return StreamingSource(train, test, **options)
