"""MNIST and Fashion-MNIST from their canonical idx files, plus a checksummed downloader.

Nothing here touches the network except `download`, which the user asks for explicitly
(`prunelab data download mnist`). Loaders only read files found by the data-directory search.
"""

from __future__ import annotations

import hashlib
import http.client
import math
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from prunelab.data.base import (
    Dataset,
    data_dirs,
    find_data_file,
    one_line,
    read_file_bytes,
    to_dataset,
)
from prunelab.errors import ConfigError, DataError, UnknownNameError, check_range

# idx type code -> (numpy dtype, big-endian as stored in the file)
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"

# The four files of an idx image data set, in the order (train x, train y, test x, test y).
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

CANONICAL_FILES: dict[str, list[tuple[str, str, str]]] = {
    "mnist": [
        ("train-images-idx3-ubyte.gz", _MNIST_URL + "train-images-idx3-ubyte.gz",
         "11ee6ec7f846ff3e524719d67c1bb5ff"),
        ("train-labels-idx1-ubyte.gz", _MNIST_URL + "train-labels-idx1-ubyte.gz",
         "cb5ea8944df9d3063cdbebef5e024983"),
        ("t10k-images-idx3-ubyte.gz", _MNIST_URL + "t10k-images-idx3-ubyte.gz",
         "e0068a1be386ff90f01fb7b4b775c870"),
        ("t10k-labels-idx1-ubyte.gz", _MNIST_URL + "t10k-labels-idx1-ubyte.gz",
         "3ce43ad61af0148d0439319f5708bb29"),
    ],
    "fashion-mnist": [
        ("train-images-idx3-ubyte.gz", _FASHION_URL + "train-images-idx3-ubyte.gz",
         "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ("train-labels-idx1-ubyte.gz", _FASHION_URL + "train-labels-idx1-ubyte.gz",
         "25c81989df183df01b3e8a0aad5dffbe"),
        ("t10k-images-idx3-ubyte.gz", _FASHION_URL + "t10k-images-idx3-ubyte.gz",
         "bef4ecab320f06d8554ea6380940ec79"),
        ("t10k-labels-idx1-ubyte.gz", _FASHION_URL + "t10k-labels-idx1-ubyte.gz",
         "bb300cfdad3c16e7a12a480ee83cd310"),
    ],
}

# Per-dataset constants: folder under the data directory, pixel mean/std, class names.
_IMAGE_SETS: dict[str, dict[str, Any]] = {
    "mnist": {
        "folder": "mnist",
        "mean": 0.1307,
        "std": 0.3081,
        "class_names": [str(d) for d in range(10)],
    },
    "fashion-mnist": {
        "folder": "fashion-mnist",
        "mean": 0.2860,
        "std": 0.3530,
        "class_names": [
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ],
    },
}

NORMALIZE_CHOICES = ("standard", "unit")


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (gzip-compressed or raw) into an array of its native dtype and shape.

    The result is writable and in native byte order; any malformed header or a data length
    that does not match the header raises DataError naming the file.
    """
    path = Path(path)
    buf = read_file_bytes(path)
    if len(buf) < 4:
        raise DataError(f"{path} is not an idx file: only {len(buf)} bytes long")
    if buf[0] != 0 or buf[1] != 0:
        raise DataError(
            f"{path} is not an idx file: bad magic number 0x{buf[:4].hex()} "
            "(expected two zero bytes, a type code and a dimension count)"
        )
    code, ndim = buf[2], buf[3]
    if code not in _IDX_DTYPES:
        raise DataError(f"{path} is not an idx file: unknown data type code 0x{code:02x}")
    if ndim == 0:
        raise DataError(f"{path} is not an idx file: zero dimensions")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(
            f"{path} is truncated: the header needs {header} bytes, found {len(buf)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    found = len(buf) - header
    if found < expected:
        raise DataError(
            f"{path} is truncated: expected {expected} bytes of data, found {found}"
        )
    if found > expected:
        raise DataError(
            f"{path} is malformed: expected {expected} bytes of data, found {found} "
            f"({found - expected} trailing bytes)"
        )
    count = expected // dtype.itemsize
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=header).reshape(dims)
    # astype copies, giving a writable array in native byte order
    return arr.astype(dtype.newbyteorder("="))


def _candidates(folder: str, stem: str) -> list[str]:
    # Bare file names at the top of a data directory are taken as MNIST only: Fashion-MNIST
    # uses the same file names, so it must sit in its own folder to never load MNIST silently.
    inside = [f"{folder}/{stem}.gz", f"{folder}/{stem}"]
    return inside + [f"{stem}.gz", stem] if folder == "mnist" else inside


def _data_root(data_dir: str | Path | None, folder: str) -> str | Path | None:
    """`--data-dir` may name the data set's own folder (`.../fashion-mnist`) as well as the
    directory holding it: the folder itself is searched through its parent."""
    if data_dir is not None and Path(data_dir).expanduser().name == folder:
        return Path(data_dir).expanduser().parent
    return data_dir


def _normalize_key(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key not in CANONICAL_FILES:
        raise UnknownNameError("dataset", name, CANONICAL_FILES)
    return key


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")


def _check_count(name: str, value: int | None, total: int) -> int:
    if value is None:
        return total
    _check_int(name, value)
    check_range(name, int(value), 1, total)
    return int(value)


def _check_subset_options(seed: Any, n_train: Any, n_test: Any) -> None:
    """Type- and range-check a loader's seed and subset sizes before any file is read (the
    sizes' upper bound comes later, from the files: `_take_subsets`)."""
    _check_int("seed", seed)
    check_range("seed", int(seed), 0)
    for opt, val in (("n_train", n_train), ("n_test", n_test)):
        if val is not None:
            _check_int(opt, val)
            check_range(opt, int(val), 1)


def _take_subsets(
    x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray,
    n_train: int | None, n_test: int | None, seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeded stratified subsets of `n_train` training and `n_test` test samples (a whole
    split when None or its full size), drawn from the streams [seed, 0] and [seed, 1]."""
    k_train = _check_count("n_train", n_train, len(y_tr))
    k_test = _check_count("n_test", n_test, len(y_te))
    if k_train < len(y_tr):
        idx = _stratified_subset(y_tr, k_train, np.random.default_rng([int(seed), 0]))
        x_tr, y_tr = x_tr[idx], y_tr[idx]
    if k_test < len(y_te):
        idx = _stratified_subset(y_te, k_test, np.random.default_rng([int(seed), 1]))
        x_te, y_te = x_te[idx], y_te[idx]
    return x_tr, y_tr, x_te, y_te


def _stratified_subset(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly n indices, each class represented in proportion (largest-remainder rounding)."""
    if n >= len(y):
        return np.arange(len(y))
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * (n / len(y))
    take = np.floor(quota).astype(np.int64)
    short = n - int(take.sum())
    if short > 0:
        # stable sort: ties go to the lower class index, deterministically
        order = np.argsort(-(quota - take), kind="stable")
        take[order[:short]] += 1
    chosen = []
    for cls, k in zip(classes, take, strict=True):
        idx = np.flatnonzero(y == cls)
        chosen.append(rng.choice(idx, size=int(k), replace=False))
    return np.sort(np.concatenate(chosen))


def _read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(
            f"{images_path} holds an array of shape {images.shape}, expected (n, 28, 28) images"
        )
    if labels.ndim != 1:
        raise DataError(f"{labels_path} holds an array of shape {labels.shape}, expected (n,)")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(
            f"{labels_path} has labels outside 0..9 (min {labels.min()}, max {labels.max()})"
        )
    return images, labels.astype(np.int64)


def _load_image_set(
    key: str,
    data_dir: str | Path | None,
    seed: int,
    n_train: int | None,
    n_test: int | None,
    normalize: str,
) -> Dataset:
    spec = _IMAGE_SETS[key]
    if normalize not in NORMALIZE_CHOICES:
        raise ConfigError(
            f"normalize must be one of {', '.join(NORMALIZE_CHOICES)}, got {normalize!r}"
        )
    _check_subset_options(seed, n_train, n_test)
    get_with = f"prunelab data download {key}"
    data_dir = _data_root(data_dir, spec["folder"])
    paths = [find_data_file(_candidates(spec["folder"], s), data_dir, get_with) for s in IDX_FILES]
    x_tr, y_tr = _read_pair(paths[0], paths[1])
    x_te, y_te = _read_pair(paths[2], paths[3])
    total_train, total_test = len(y_tr), len(y_te)
    x_tr, y_tr, x_te, y_te = _take_subsets(x_tr, y_tr, x_te, y_te, n_train, n_test, seed)

    def scale(x: np.ndarray) -> np.ndarray:
        # one multiply and one add: (x/255 - mean)/std == x * (1/(255 std)) - mean/std
        out = x.astype(np.float32).reshape(len(x), 1, 28, 28)
        if normalize == "standard":
            out *= np.float32(1.0 / (255.0 * spec["std"]))
            out -= np.float32(spec["mean"] / spec["std"])
        else:
            out *= np.float32(1.0 / 255.0)
        return out

    meta: dict[str, Any] = {
        "source": str(paths[0].parent),
        "files": {stem: str(p) for stem, p in zip(IDX_FILES, paths, strict=True)},
        "normalize": normalize,
        "seed": int(seed),
        "n_train_total": total_train,
        "n_test_total": total_test,
    }
    if normalize == "standard":
        meta["pixel_mean"], meta["pixel_std"] = spec["mean"], spec["std"]
    return to_dataset(
        key, scale(x_tr), y_tr, scale(x_te), y_te,
        num_classes=10, feature_names=None, relevant_features=None,
        class_names=list(spec["class_names"]), meta=meta,
    )


def load_mnist(
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    normalize: str = "standard",
) -> Dataset:
    """MNIST as (n, 1, 28, 28) float32 images; n_train/n_test take seeded stratified subsets.

    normalize: "standard" ((x/255 - 0.1307) / 0.3081) or "unit" (x/255).
    """
    return _load_image_set("mnist", data_dir, seed, n_train, n_test, normalize)


def load_fashion_mnist(
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    normalize: str = "standard",
) -> Dataset:
    """Fashion-MNIST as (n, 1, 28, 28) float32 images (files under `fashion-mnist/`).

    normalize: "standard" ((x/255 - 0.2860) / 0.3530) or "unit" (x/255).
    """
    return _load_image_set("fashion-mnist", data_dir, seed, n_train, n_test, normalize)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, dest: Path, md5: str, timeout: float) -> None:
    """Stream `url` into a temp file beside `dest`; move it into place only if the md5 matches."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    for chunk in iter(lambda: resp.read(1 << 20), b""):
                        h.update(chunk)
                        out.write(chunk)
            except urllib.error.HTTPError as exc:
                raise DataError(
                    f"could not download {url} : HTTP {exc.code} {one_line(exc.reason)}"
                ) from None
            except urllib.error.URLError as exc:
                raise DataError(f"could not download {url} : {one_line(exc.reason)}") from None
            except (OSError, ValueError, http.client.HTTPException) as exc:
                raise DataError(f"could not download {url} : {one_line(exc)}") from None
        got = h.hexdigest()
        if got != md5:
            raise DataError(
                f"checksum mismatch for {dest.name} downloaded from {url}: "
                f"expected md5 {md5}, got {got} (file discarded)"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def download(
    name: str, data_dir: str | Path | None = None, *, timeout: float = 30.0
) -> list[Path]:
    """Fetch a data set's canonical files into `<dir>/<name>/`, verifying each md5.

    `dir` is data_dir or the first searched data directory; valid files already there are kept.
    """
    key = _normalize_key(name)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ConfigError(f"timeout must be a number of seconds, got {timeout!r}")
    check_range("timeout", timeout, 0, low_inclusive=False)
    target = data_dirs(_data_root(data_dir, _IMAGE_SETS[key]["folder"]))[0] / \
        _IMAGE_SETS[key]["folder"]
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create data directory {target}: {one_line(exc)}") from None
    paths = []
    for fname, url, md5 in CANONICAL_FILES[key]:
        dest = target / fname
        if not (dest.is_file() and _md5(dest) == md5):
            _fetch(url, dest, md5, timeout)
        paths.append(dest)
    return paths


def dataset_files_status(
    name: str, data_dir: str | Path | None = None, *, verify: bool = False
) -> dict[str, Any]:
    """Which of the four idx files are found and where (for `prunelab data info`).

    With verify=True, found .gz files are also checked against the canonical md5.
    """
    key = _normalize_key(name)
    folder = _IMAGE_SETS[key]["folder"]
    data_dir = _data_root(data_dir, folder)
    md5s = {fname: md5 for fname, _, md5 in CANONICAL_FILES[key]}
    get_with = f"prunelab data download {key}"
    files = []
    for stem in IDX_FILES:
        entry: dict[str, Any] = {"file": stem, "found": False, "path": None, "bytes": None}
        try:
            p = find_data_file(_candidates(folder, stem), data_dir, get_with)
        except DataError:
            files.append(entry)
            continue
        entry.update(found=True, path=str(p), bytes=p.stat().st_size)
        if verify:
            entry["md5_ok"] = _md5(p) == md5s[p.name] if p.name in md5s else None
        files.append(entry)
    first = files[0]["path"]
    return {
        "dataset": key,
        "searched": [str(d) for d in data_dirs(data_dir)],
        "complete": all(f["found"] for f in files),
        "source": str(Path(first).parent) if first else None,
        "files": files,
        "get_with": get_with,
    }
