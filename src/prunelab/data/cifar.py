"""CIFAR-10 and CIFAR-100 from their standard python-pickle files, held in memory.

Files (as unpacked from cifar-10-python.tar.gz / cifar-100-python.tar.gz): the folder
`cifar-10-batches-py/` (data_batch_1..5, test_batch, batches.meta) or `cifar-100-python/`
(train, test, meta), found in a data directory (--data-dir, $PRUNELAB_DATA, ~/.cache/prunelab)
or given as the data directory itself. Each batch is a pickled dict with b"data" (n x 3072
uint8, the red, green and blue planes of a 32 x 32 image in turn) and b"labels"
(CIFAR-100: b"fine_labels"), read with encoding="bytes" by an unpickler that builds only
NumPy arrays and plain containers (a pickle can run code; these files never need to).

Images become (3, 32, 32) float32, per-channel normalised with the training images' own mean
and standard deviation ("standard") or scaled to [0, 1] ("unit"); with `augment` (the default)
each training batch gets the standard random crop after 4-pixel zero padding and horizontal
flip; evaluation never does.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunelab.data.augment import CropFlip
from prunelab.data.base import Dataset, data_dirs, one_line
from prunelab.data.images import _check_subset_options, _take_subsets
from prunelab.errors import ConfigError, DataError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
PIXELS = 3 * 32 * 32
NORMALIZE_CHOICES = ("standard", "unit")
_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

# per set: folder and archive names, training and test files, meta file, label and name keys
_SETS: dict[str, dict[str, Any]] = {
    "cifar10": {"folder": "cifar-10-batches-py", "archive": "cifar-10-python.tar.gz",
                "train": [f"data_batch_{i}" for i in range(1, 6)], "test": "test_batch",
                "meta": "batches.meta", "labels": "labels", "names": "label_names",
                "classes": 10},
    "cifar100": {"folder": "cifar-100-python", "archive": "cifar-100-python.tar.gz",
                 "train": ["train"], "test": "test", "meta": "meta", "labels": "fine_labels",
                 "names": "fine_label_names", "classes": 100},
}


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_frombuffer() -> Any:
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # NumPy < 2
        from numpy.core.numeric import _frombuffer
    return _frombuffer


def _numpy_scalar() -> Any:
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # NumPy < 2
        from numpy.core.multiarray import scalar
    return scalar


class _ArraysOnly(pickle.Unpickler):
    """Builds NumPy arrays, dtypes and scalars and the built-in containers; refuses any other
    global, so a crafted file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy.core.multiarray", "scalar"): _numpy_scalar,
        ("numpy._core.multiarray", "scalar"): _numpy_scalar,
        ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: codecs.encode,  # bytes in protocol-2 pickles
    }

    def find_class(self, module: str, name: str) -> Any:
        make = self._ALLOWED.get((module, name))
        if make is None:
            raise pickle.UnpicklingError(f"it references {module}.{name}, which a CIFAR file "
                                         "never does")
        return make()


def read_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR pickle as a dict with str keys; missing, unreadable or corrupt files (or ones
    that are not a dict) raise DataError naming the file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"CIFAR file {path} not found (unpack the whole archive from {_URL})") \
            from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {one_line(exc)}") from None
    try:
        obj = _ArraysOnly(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # a corrupt pickle can raise nearly anything
        raise DataError(f"{path} is not a readable CIFAR pickle: {type(exc).__name__}: "
                        f"{one_line(exc)}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR pickle: it holds a {type(obj).__name__}, "
                        "not a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = read_pickle(path)
    for key in ("data", label_key):
        if key not in d:
            raise DataError(f"{path} is not a CIFAR batch: it has no '{key}' entry "
                            f"(keys: {', '.join(sorted(d)) or 'none'})")
    x = d["data"]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 \
            or x.shape[1] != PIXELS:
        shape = getattr(x, "shape", None)
        dtype = getattr(x, "dtype", type(x).__name__)
        raise DataError(f"{path}: 'data' must be an (n, {PIXELS}) uint8 array, got "
                        f"{dtype} of shape {shape}")
    try:
        y = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"{path}: '{label_key}' is not a list of integers") from None
    if len(y) != len(x):
        raise DataError(f"{path} has {len(x)} images but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{path} has labels outside 0..{num_classes - 1} (min {y.min()}, max "
                        f"{y.max()})")
    return x.reshape(-1, 3, 32, 32), y


def find_cifar(key: str, data_dir: str | Path | None = None) -> Path:
    """The folder holding a CIFAR set's files: `<dir>/<folder>` or a searched directory that
    is that folder itself; DataError naming what was searched and where to get it."""
    spec = _SETS[key]
    first = spec["train"][0]
    searched = data_dirs(data_dir)
    for d in searched:
        for root in (d / spec["folder"], d):
            if (root / first).is_file():
                return root
    where = ", ".join(str(d) for d in searched)
    raise DataError(
        f"{key} not found: no {spec['folder']}/{first} in {where}; download "
        f"{spec['archive']} from {_URL}, unpack it into one of them or point --data-dir / "
        "PRUNELAB_DATA at it"
    )


def _class_names(root: Path, key: str) -> list[str]:
    spec = _SETS[key]
    path = root / spec["meta"]
    if not path.is_file():  # the names are a convenience: the labels do not need them
        return CIFAR10_CLASSES[:] if key == "cifar10" else [str(i) for i in range(100)]
    names = read_pickle(path).get(spec["names"])
    if not isinstance(names, list) or len(names) != spec["classes"]:
        raise DataError(f"{path} has no list of {spec['classes']} '{spec['names']}'")
    return [n.decode("utf8", "replace") if isinstance(n, bytes) else str(n) for n in names]


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 images (n, c, h, w), in pixel units / 255."""
    total = np.zeros(x.shape[1])
    squares = np.zeros(x.shape[1])
    for i in range(0, len(x), 5000):  # float64 in chunks: exact enough, bounded memory
        chunk = x[i : i + 5000].astype(np.float64) / 255.0
        total += chunk.sum(axis=(0, 2, 3))
        squares += (chunk * chunk).sum(axis=(0, 2, 3))
    count = len(x) * x.shape[2] * x.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    return mean, np.where(std < 1e-8, 1.0, std)


def _to_float(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """(x / 255 - mean) / std per channel, as float32, with one multiply and one add."""
    out = torch.from_numpy(x).to(torch.float32)
    scale = torch.tensor(1.0 / (255.0 * std), dtype=torch.float32).view(1, -1, 1, 1)
    shift = torch.tensor(mean / std, dtype=torch.float32).view(1, -1, 1, 1)
    return out.mul_(scale).sub_(shift)


def _load_cifar(key: str, data_dir: str | Path | None, seed: int, n_train: int | None,
                n_test: int | None, augment: bool, normalize: str) -> Dataset:
    spec = _SETS[key]
    if normalize not in NORMALIZE_CHOICES:
        raise ConfigError(f"normalize must be one of {', '.join(NORMALIZE_CHOICES)}, got "
                          f"{normalize!r}")
    if not isinstance(augment, bool):
        raise ConfigError(f"augment must be true or false, got {augment!r}")
    _check_subset_options(seed, n_train, n_test)
    root = find_cifar(key, data_dir)
    parts = [_read_batch(root / f, spec["labels"], spec["classes"]) for f in spec["train"]]
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    x_te, y_te = _read_batch(root / spec["test"], spec["labels"], spec["classes"])
    names = _class_names(root, key)
    total_train, total_test = len(y_tr), len(y_te)
    x_tr, y_tr, x_te, y_te = _take_subsets(x_tr, y_tr, x_te, y_te, n_train, n_test, seed)
    if normalize == "standard":
        mean, std = _channel_stats(x_tr)
    else:
        mean, std = np.zeros(3), np.ones(3)
    meta: dict[str, Any] = {"source": str(root), "normalize": normalize, "seed": int(seed),
                            "n_train_total": total_train, "n_test_total": total_test}
    if normalize == "standard":
        meta["channel_mean"] = [round(float(v), 6) for v in mean]
        meta["channel_std"] = [round(float(v), 6) for v in std]
    aug = None
    if augment:
        aug = CropFlip(padding=4, flip=True, fill=[float(-m / s) for m, s in zip(mean, std)])
        meta["augment"] = aug.describe()
    else:
        meta["augment"] = "none"
    return Dataset(key, _to_float(x_tr, mean, std), torch.from_numpy(y_tr),
                   _to_float(x_te, mean, std), torch.from_numpy(y_te), spec["classes"],
                   class_names=names, meta=meta, augment=aug)


def load_cifar10(*, data_dir: str | Path | None = None, seed: int = 0,
                 n_train: int | None = None, n_test: int | None = None, augment: bool = True,
                 normalize: str = "standard") -> Dataset:
    """CIFAR-10 as (n, 3, 32, 32) float32 images (50,000 training, 10,000 test);
    n_train/n_test take seeded stratified subsets; `augment`: crop + flip on training batches;
    normalize: "standard" (training-set channel statistics) or "unit" (x/255)."""
    return _load_cifar("cifar10", data_dir, seed, n_train, n_test, augment, normalize)


def load_cifar100(*, data_dir: str | Path | None = None, seed: int = 0,
                  n_train: int | None = None, n_test: int | None = None, augment: bool = True,
                  normalize: str = "standard") -> Dataset:
    """CIFAR-100 with its 100 fine labels, otherwise as `load_cifar10`."""
    return _load_cifar("cifar100", data_dir, seed, n_train, n_test, augment, normalize)
