"""File-based data: idx/MNIST, ARFF/CSV/libsvm readers, named tabular sets and the downloader."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from prunelab.data import images
from prunelab.data.images import (
    dataset_files_status,
    download,
    load_fashion_mnist,
    load_mnist,
    read_idx,
)
from prunelab.data.tabular import (
    load_colon,
    load_leukemia,
    load_madelon,
    load_tabular_file,
    read_arff,
    read_csv,
    read_libsvm,
)
from prunelab.errors import ConfigError, DataError, UnknownNameError

# the real data: $PRUNELAB_DATA, else ../shared/data beside the checkout (as conftest.py)
REAL_DATA = Path(os.environ.get("PRUNELAB_DATA")
                 or Path(__file__).resolve().parents[1].parent / "shared" / "data")
IDX_CODES = {"uint8": 0x08, "int8": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}


@pytest.fixture(autouse=True)
def _isolated_data_dirs(tmp_path, monkeypatch):
    """No test may see the user's ~/.cache/prunelab or PRUNELAB_DATA."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PRUNELAB_DATA", raising=False)


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


def idx_bytes(arr: np.ndarray, dtype: str) -> bytes:
    a = np.asarray(arr).astype(dtype)
    head = bytes([0, 0, IDX_CODES[dtype], a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return head + a.astype(np.dtype(dtype).newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray, dtype: str = "uint8", gz: bool = True) -> Path:
    data = idx_bytes(arr, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_fake_mnist(root: Path, folder: str | None = "mnist", n_train: int = 50, n_test: int = 20,
                    seed: int = 0, gz: bool = True) -> dict[str, np.ndarray]:
    """Write four small idx files; labels cycle 0..9 so every class is equally frequent."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    base = root / folder if folder else root
    for stem, arr in arrays.items():
        write_idx(base / (stem + (".gz" if gz else "")), arr, gz=gz)
    return arrays


# --------------------------------------------------------------------------------- idx format


@pytest.mark.parametrize("dtype", list(IDX_CODES))
@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, dtype, gz):
    rng = np.random.default_rng(1)
    arr = (rng.normal(size=(3, 4, 5)) * 100).astype(dtype)
    got = read_idx(write_idx(tmp_path / "a.idx", arr, dtype, gz=gz))
    assert got.shape == (3, 4, 5)
    assert got.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(got, arr)
    got[0, 0, 0] = 7  # writable
    assert got[0, 0, 0] == 7


def test_idx_gzip_detected_by_magic_not_name(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz_named_raw = write_idx(tmp_path / "raw.gz", arr, gz=False)
    raw_named_gz = write_idx(tmp_path / "plain-ubyte", arr, gz=True)
    np.testing.assert_array_equal(read_idx(gz_named_raw), arr)
    np.testing.assert_array_equal(read_idx(raw_named_gz), arr)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated_data(tmp_path, gz):
    data = idx_bytes(np.zeros((10, 20), np.uint8), "uint8")[:-10]
    p = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    p.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError) as ei:
        read_idx(p)
    msg = one_line_error(ei)
    assert str(p) in msg
    assert "truncated: expected 200 bytes of data, found 190" in msg


def test_idx_truncated_gzip_stream_and_header(tmp_path):
    full = gzip.compress(idx_bytes(np.arange(5000) % 256, "uint8"))
    p = tmp_path / "cut.gz"
    p.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="truncated") as ei:
        read_idx(p)
    assert str(p) in one_line_error(ei)
    q = tmp_path / "short-header"
    q.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DataError, match="truncated: the header needs 16 bytes, found 6"):
        read_idx(q)


def test_idx_extra_bytes_bad_magic_bad_code(tmp_path):
    p = tmp_path / "long"
    p.write_bytes(idx_bytes(np.zeros(4, np.uint8), "uint8") + b"xx")
    with pytest.raises(DataError, match="expected 4 bytes of data, found 6"):
        read_idx(p)
    p.write_bytes(b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(DataError, match="bad magic") as ei:
        read_idx(p)
    assert str(p) in one_line_error(ei)
    p.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(DataError, match="unknown data type code 0x07"):
        read_idx(p)
    p.write_bytes(b"\x00")
    with pytest.raises(DataError, match="only 1 bytes"):
        read_idx(p)


def test_idx_corrupt_gzip_and_missing_file(tmp_path):
    p = tmp_path / "corrupt.gz"
    p.write_bytes(b"\x1f\x8b\x08\x00" + b"garbage that is not deflate data" * 3)
    with pytest.raises(DataError, match="not a valid gzip file") as ei:
        read_idx(p)
    assert str(p) in one_line_error(ei)
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope")


# ------------------------------------------------------------------------------ MNIST loaders


def test_load_mnist_fake_shapes_and_normalisation(tmp_path):
    arrays = make_fake_mnist(tmp_path)
    ds = load_mnist(data_dir=tmp_path, normalize="unit")
    assert ds.x_train.shape == (50, 1, 28, 28) and ds.x_test.shape == (20, 1, 28, 28)
    assert str(ds.x_train.dtype) == "torch.float32" and str(ds.y_train.dtype) == "torch.int64"
    assert ds.num_classes == 10 and ds.class_names == [str(d) for d in range(10)]
    assert ds.feature_names is None and ds.relevant_features is None
    assert ds.meta["source"] == str(tmp_path / "mnist")
    raw_train = arrays["train-images-idx3-ubyte"].astype(np.float32)
    np.testing.assert_allclose(ds.x_train.numpy()[:, 0], raw_train / 255, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ds.y_train.numpy(), arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])
    std = load_mnist(data_dir=tmp_path)
    expected = (arrays["t10k-images-idx3-ubyte"] / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(std.x_test.numpy()[:, 0], expected, rtol=0, atol=1e-5)


def test_load_mnist_subsets_are_stratified_and_seeded(tmp_path):
    arrays = make_fake_mnist(tmp_path)
    a = load_mnist(data_dir=tmp_path, n_train=20, n_test=10, seed=3, normalize="unit")
    b = load_mnist(data_dir=tmp_path, n_train=20, n_test=10, seed=3, normalize="unit")
    c = load_mnist(data_dir=tmp_path, n_train=20, n_test=10, seed=4, normalize="unit")
    assert a.n_train == 20 and a.n_test == 10
    assert np.bincount(a.y_train.numpy(), minlength=10).tolist() == [2] * 10
    assert np.bincount(a.y_test.numpy(), minlength=10).tolist() == [1] * 10
    assert np.array_equal(a.x_train.numpy(), b.x_train.numpy())
    assert not np.array_equal(a.x_train.numpy(), c.x_train.numpy())
    # the subset is made of rows of the full training set, with their own labels
    full = arrays["train-images-idx3-ubyte"].reshape(50, -1)
    lookup = {row.tobytes(): i for i, row in enumerate(full)}
    picked = np.rint(a.x_train.numpy().reshape(20, -1) * 255).astype(np.uint8)
    rows = [lookup[r.tobytes()] for r in picked]
    assert len(set(rows)) == 20
    np.testing.assert_array_equal(arrays["train-labels-idx1-ubyte"][rows], a.y_train.numpy())
    # uneven class sizes: exact total, each class within one of its proportional share
    d = load_mnist(data_dir=tmp_path, n_train=13, normalize="unit")
    assert d.n_train == 13 and set(np.bincount(d.y_train.numpy())) <= {1, 2}


def test_load_mnist_bad_options(tmp_path):
    make_fake_mnist(tmp_path)
    with pytest.raises(ConfigError, match="normalize must be one of standard, unit, got 'x'"):
        load_mnist(data_dir=tmp_path, normalize="x")
    with pytest.raises(ConfigError, match=r"n_train must be in \[1, 50\], got 51"):
        load_mnist(data_dir=tmp_path, n_train=51)
    with pytest.raises(ConfigError, match="n_test"):
        load_mnist(data_dir=tmp_path, n_test=0)
    with pytest.raises(ConfigError, match="n_train must be an integer"):
        load_mnist(data_dir=tmp_path, n_train=2.5)


def test_load_mnist_raw_files_at_top_level(tmp_path):
    arrays = make_fake_mnist(tmp_path, folder=None, gz=False, n_train=30, n_test=10)
    ds = load_mnist(data_dir=tmp_path)
    assert ds.n_train == 30 and ds.meta["source"] == str(tmp_path)
    assert ds.meta["files"]["t10k-labels-idx1-ubyte"] == str(tmp_path / "t10k-labels-idx1-ubyte")
    np.testing.assert_array_equal(ds.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_load_mnist_count_mismatch(tmp_path):
    make_fake_mnist(tmp_path)
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", np.zeros(49, np.uint8))
    with pytest.raises(DataError, match="has 50 images but .* has 49 labels") as ei:
        load_mnist(data_dir=tmp_path)
    one_line_error(ei)


def test_load_fashion_mnist_fake(tmp_path):
    arrays = make_fake_mnist(tmp_path, folder="fashion-mnist", n_train=20, n_test=10)
    ds = load_fashion_mnist(data_dir=tmp_path)
    expected = (arrays["train-images-idx3-ubyte"] / 255.0 - 0.2860) / 0.3530
    np.testing.assert_allclose(ds.x_train.numpy()[:, 0], expected, rtol=0, atol=1e-5)
    assert ds.name == "fashion-mnist" and ds.class_names[0] == "T-shirt/top"
    assert ds.class_names[9] == "Ankle boot" and len(ds.class_names) == 10
    assert ds.meta["source"] == str(tmp_path / "fashion-mnist")
    with pytest.raises(DataError, match="prunelab data download mnist"):
        load_mnist(data_dir=tmp_path)  # the MNIST folder is not there


def test_data_dir_search_order(tmp_path, monkeypatch):
    explicit, env, empty = tmp_path / "explicit", tmp_path / "env", tmp_path / "empty"
    make_fake_mnist(explicit, n_train=30)
    make_fake_mnist(env, n_train=40)
    empty.mkdir()
    monkeypatch.setenv("PRUNELAB_DATA", str(env))
    assert load_mnist().meta["source"] == str(env / "mnist")
    assert load_mnist().n_train == 40
    assert load_mnist(data_dir=explicit).meta["source"] == str(explicit / "mnist")
    assert load_mnist(data_dir=empty).meta["source"] == str(env / "mnist")
    home_cache = tmp_path / "home" / ".cache" / "prunelab"
    make_fake_mnist(home_cache, n_train=10)
    monkeypatch.delenv("PRUNELAB_DATA")
    assert load_mnist().n_train == 10


def test_missing_files_name_the_download_command(tmp_path):
    with pytest.raises(DataError) as ei:
        load_mnist(data_dir=tmp_path)
    msg = one_line_error(ei)
    assert "prunelab data download mnist" in msg and "train-images-idx3-ubyte" in msg
    assert str(tmp_path) in msg
    with pytest.raises(DataError, match="prunelab data download fashion-mnist"):
        load_fashion_mnist(data_dir=tmp_path)


def test_dataset_files_status(tmp_path):
    make_fake_mnist(tmp_path)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    st = dataset_files_status("mnist", tmp_path)
    assert st["complete"] is False and st["source"] == str(tmp_path / "mnist")
    assert [f["found"] for f in st["files"]] == [True, True, True, False]
    assert st["files"][0]["path"] == str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz")
    assert st["files"][3]["path"] is None and st["get_with"] == "prunelab data download mnist"
    verified = dataset_files_status("mnist", tmp_path, verify=True)
    assert verified["files"][0]["md5_ok"] is False  # fake data is not the canonical file
    assert dataset_files_status("fashion_mnist", tmp_path)["files"][0]["found"] is False
    with pytest.raises(UnknownNameError, match="valid datasets: fashion-mnist, mnist"):
        dataset_files_status("cifar", tmp_path)


# ---------------------------------------------------------------------------------- download


@pytest.fixture
def fake_remote(monkeypatch):
    """Replace the mnist file list with small fake files and urlopen with an in-memory server."""
    contents = {f"f{i}.gz": gzip.compress(bytes([i]) * 100) for i in range(4)}
    entries = [(n, f"https://example.invalid/{n}", hashlib.md5(c).hexdigest())
               for n, c in contents.items()]
    monkeypatch.setitem(images.CANONICAL_FILES, "mnist", entries)
    served = {f"https://example.invalid/{n}": c for n, c in contents.items()}
    calls: list[str] = []

    def urlopen(url, timeout=None):
        calls.append(url)
        assert timeout == 5.0
        return io.BytesIO(served[url])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return contents, served, calls


def test_download_success_and_skip_existing(tmp_path, fake_remote):
    contents, _, calls = fake_remote
    paths = download("mnist", tmp_path, timeout=5.0)
    assert paths == [tmp_path / "mnist" / n for n in contents]
    assert [p.read_bytes() for p in paths] == list(contents.values())
    assert len(calls) == 4
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(contents)
    assert download("mnist", tmp_path, timeout=5.0) == paths
    assert len(calls) == 4  # all present with the right md5: nothing fetched
    paths[1].write_bytes(b"damaged")
    download("mnist", tmp_path, timeout=5.0)
    assert calls[4:] == ["https://example.invalid/f1.gz"]
    assert paths[1].read_bytes() == contents["f1.gz"]


def test_download_uses_prunelab_data_dir(tmp_path, fake_remote, monkeypatch):
    monkeypatch.setenv("PRUNELAB_DATA", str(tmp_path / "env"))
    paths = download("mnist", timeout=5.0)
    assert all(p.parent == tmp_path / "env" / "mnist" and p.is_file() for p in paths)


def test_download_checksum_mismatch_leaves_nothing(tmp_path, fake_remote):
    _, served, _ = fake_remote
    served["https://example.invalid/f2.gz"] = b"tampered"
    with pytest.raises(DataError, match="checksum mismatch for f2.gz") as ei:
        download("mnist", tmp_path, timeout=5.0)
    one_line_error(ei)
    left = sorted(p.name for p in (tmp_path / "mnist").iterdir())
    assert left == ["f0.gz", "f1.gz"]  # verified earlier files kept, no temp or bad file


def test_download_network_failure(tmp_path, monkeypatch, fake_remote):
    def refuse(url, timeout=None):
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(DataError, match=r"could not download https://example\.invalid/f0\.gz"
                       ) as ei:
        download("mnist", tmp_path, timeout=5.0)
    assert "Connection refused" in one_line_error(ei)
    assert list((tmp_path / "mnist").iterdir()) == []

    class Broken(io.BytesIO):
        def read(self, n=-1):
            raise http.client.IncompleteRead(b"partial", 100)

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Broken())
    with pytest.raises(DataError, match=r"could not download \S+/f0\.gz : IncompleteRead") as ei:
        download("mnist", tmp_path, timeout=5.0)
    one_line_error(ei)
    assert list((tmp_path / "mnist").iterdir()) == []


def test_download_bad_arguments(tmp_path):
    with pytest.raises(UnknownNameError, match="unknown dataset 'cifar'"):
        download("cifar", tmp_path)
    with pytest.raises(ConfigError, match="timeout"):
        download("mnist", tmp_path, timeout=0)
    assert not (tmp_path / "mnist").exists()


def test_canonical_files_table():
    assert set(images.CANONICAL_FILES) == {"mnist", "fashion-mnist"}
    for entries in images.CANONICAL_FILES.values():
        assert [e[0] for e in entries] == [s + ".gz" for s in images.IDX_FILES]
        assert all(url.endswith("/" + n) and len(md5) == 32 for n, url, md5 in entries)
    md5sums = REAL_DATA / "MD5SUMS"
    if md5sums.is_file():
        listed = dict(reversed(line.split()) for line in md5sums.read_text().splitlines())
        for fname, _, md5 in images.CANONICAL_FILES["mnist"]:
            assert listed["mnist/" + fname] == md5


# --------------------------------------------------------------------------------------- ARFF

ARFF_TEXT = """% a comment line
@RELATION 'toy data'

@ATTRIBUTE 'first value' NUMERIC
@attribute "second" real
@Attribute colour {red, 'dark green', "blue"}
@attribute flag {yes,no}
@ATTRIBUTE n INTEGER
@attribute class {'A','B'}

@DATA
% comment inside data
1.5, 2, red, yes, 3, 'A'
-1, ?, 'dark green', no, 4, B

2.25,1e3,blue,?,5,A
"""


def test_read_arff_keywords_quotes_nominal_missing(tmp_path):
    p = tmp_path / "toy.arff"
    p.write_text(ARFF_TEXT)
    x, names, info = read_arff(p)
    assert names == ["first value", "second", "colour", "flag", "n", "class"]
    assert info["relation"] == "toy data"
    assert info["types"] == ["numeric", "numeric", "nominal", "nominal", "numeric", "nominal"]
    assert info["categories"][2] == ["red", "dark green", "blue"]
    assert info["categories"][5] == ["A", "B"]
    expected = np.array([[1.5, 2, 0, 0, 3, 0], [-1, np.nan, 1, 1, 4, 1],
                         [2.25, 1000, 2, np.nan, 5, 0]])
    np.testing.assert_array_equal(x, expected)
    gz = tmp_path / "toy-compressed"
    gz.write_bytes(gzip.compress(ARFF_TEXT.encode()))
    np.testing.assert_array_equal(read_arff(gz)[0], expected)


def test_read_arff_sparse_rows(tmp_path):
    p = tmp_path / "sparse.arff"
    p.write_text("@relation s\n@attribute a numeric\n@attribute b numeric\n"
                 "@attribute c {x,y}\n@data\n{1 2.5, 2 y}\n{0 -1}\n")
    x, _, _ = read_arff(p)
    np.testing.assert_array_equal(x, [[0, 2.5, 1], [-1, 0, 0]])


@pytest.mark.parametrize("body, match", [
    ("@attribute a numeric\n@attribute b numeric\n@data\n1,2\n\n1,2,3\n",
     r"line 7: expected 2 values, found 3"),
    ("@attribute a numeric\n@attribute c {x,y}\n@data\n1,z\n", r"line 5: value 'z' is not a cat"),
    ("@attribute a numeric\n@attribute b numeric\n@data\n1,abc\n",
     r"line 5: value 'abc' of numeric attribute 'b' is not a number"),
    ("@attribute s string\n@data\n", "line 2: attribute 's' has type string"),
    ("@attribute a numeric\n1,2\n", "unexpected text before @data"),
    ("@attribute a numeric\n", "no @data section"),
    ("@data\n1\n", "no @attribute declarations"),
])
def test_read_arff_errors_name_file_and_line(tmp_path, body, match):
    p = tmp_path / "bad.arff"
    p.write_text("@relation r\n" + body)
    with pytest.raises(DataError, match=match) as ei:
        read_arff(p)
    assert str(p) in one_line_error(ei)


def _arff_with_missing(tmp_path: Path) -> Path:
    """Column `id` identifies each row; column `v` is missing on rows 0, 5, 10, ..."""
    lines = ["@relation m", "@attribute id numeric", "@attribute v numeric",
             "@attribute label {p,q}", "@data"]
    for i in range(40):
        v = "?" if i % 5 == 0 else str(float(i * i))
        lines.append(f"{i},{v},{'p' if i % 2 else 'q'}")
    p = tmp_path / "missing.arff"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_missing_values_reject_and_mean(tmp_path):
    p = _arff_with_missing(tmp_path)
    with pytest.raises(DataError, match="8 missing values in 1 columns; impute them with "
                                        "training-column means: --data-option missing=mean"):
        load_tabular_file(p)
    with pytest.raises(ConfigError, match="missing must be one of reject, mean"):
        load_tabular_file(p, missing="median")
    ds = load_tabular_file(p, missing="mean", standardize=False, seed=2)
    xtr, xte = ds.x_train.numpy().astype(np.float64), ds.x_test.numpy().astype(np.float64)
    assert not np.isnan(xtr).any() and not np.isnan(xte).any()
    ids_tr = xtr[:, 0].astype(int)
    observed = [i * i for i in ids_tr if i % 5]
    train_mean = float(np.mean(observed))
    for x in (xtr, xte):  # test rows get the *training* mean
        holes = x[:, 0].astype(int) % 5 == 0
        assert holes.any()
        np.testing.assert_allclose(x[holes, 1], train_mean, rtol=1e-6)
        np.testing.assert_allclose(x[~holes, 1], x[~holes, 0] ** 2)
    assert ds.meta["n_missing"] == 8 and ds.meta["standardize"] is False


def test_load_tabular_arff_label_and_nominal_encoding(tmp_path):
    rows = [f"{i}, {['r', 'g', 'b'][i % 3]}, {'A' if i % 2 else 'B'}, {['u', 'v'][i % 2]}, {i % 4}"
            for i in range(24)]
    text = ("@relation t\n@attribute x numeric\n@attribute col {r,g,b}\n"
            "@attribute Class {A,B}\n@attribute bin {u,v}\n@attribute last numeric\n@data\n"
            + "\n".join(rows) + "\n")
    p = tmp_path / "nominal.arff.gz"
    p.write_bytes(gzip.compress(text.encode()))
    ds = load_tabular_file(p, standardize=False, test_fraction=0.25)
    assert ds.name == "nominal" and ds.class_names == ["A", "B"]
    assert ds.feature_names == ["x", "col=r", "col=g", "col=b", "bin", "last"]
    x = np.vstack([ds.x_train.numpy(), ds.x_test.numpy()])
    y = np.concatenate([ds.y_train.numpy(), ds.y_test.numpy()])
    ids = x[:, 0].astype(int)
    np.testing.assert_array_equal(x[:, 1:4].argmax(axis=1), ids % 3)
    np.testing.assert_array_equal(x[:, 1:4].sum(axis=1), 1)
    np.testing.assert_array_equal(x[:, 4], ids % 2)
    np.testing.assert_array_equal(y, np.where(ids % 2, 0, 1))  # 'A' -> 0
    assert ds.n_test == 6 and np.bincount(ds.y_test.numpy()).tolist() == [3, 3]
    by_name = load_tabular_file(p, label_column="last", standardize=False)
    assert by_name.class_names == ["0", "1", "2", "3"]
    assert by_name.feature_names == ["x", "col=r", "col=g", "col=b", "Class", "bin"]
    by_index = load_tabular_file(p, label_column=-1, standardize=False)
    assert by_index.feature_names == by_name.feature_names
    with pytest.raises(ConfigError, match="label_column 'nope' is not a column"):
        load_tabular_file(p, label_column="nope")


# ---------------------------------------------------------------------------------- CSV, libsvm


def test_read_csv_header_and_label_by_name(tmp_path):
    p = tmp_path / "h.csv"
    p.write_text("a,species,b\n1,x,2.5\n3,y,NA\n\n5,x,?\n")
    x, labels, names = read_csv(p, label_column="species")
    assert names == ["a", "b"]
    assert labels.tolist() == ["x", "y", "x"]
    np.testing.assert_array_equal(x, [[1, 2.5], [3, np.nan], [5, np.nan]])
    x2, labels2, names2 = read_csv(p, label_column=1)
    np.testing.assert_array_equal(x2, x)
    assert labels2.tolist() == labels.tolist() and names2 == names


def test_read_csv_without_header_and_delimiters(tmp_path):
    p = tmp_path / "n.csv"
    p.write_text("1.0,2,10\n3,4,2\n5,6,10\n")
    x, labels, names = read_csv(p)
    assert names == ["x0", "x1"] and labels.dtype == np.int64 and labels.tolist() == [10, 2, 10]
    np.testing.assert_array_equal(x, [[1, 2], [3, 4], [5, 6]])
    x0, labels0, _ = read_csv(p, label_column=0)
    assert labels0.tolist() == [1, 3, 5] and x0[:, 1].tolist() == [10, 2, 10]
    forced, _, names_forced = read_csv(p, header=True)
    assert names_forced == ["1.0", "2"] and forced.shape == (2, 2)
    for text, suffix in (("1;2;a\n3;4;b\n", ".csv"), ("1\t2\ta\n3\t4\tb\n", ".tsv"),
                         ("1 2  a\n3   4 b\n", ".csv")):
        q = tmp_path / ("d" + suffix)
        q.write_text(text)
        xq, lq, _ = read_csv(q)
        np.testing.assert_array_equal(xq, [[1, 2], [3, 4]])
        assert lq.tolist() == ["a", "b"]


def test_read_csv_errors(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("a,b,c\n1,2,0\n1,2\n")
    with pytest.raises(DataError, match=r"line 3: expected 3 values, found 2") as ei:
        read_csv(p)
    assert str(p) in one_line_error(ei)
    p.write_text("a,b,c\n1,2,0\n1,zz,1\n")
    with pytest.raises(DataError, match=r"line 3: value 'zz' in b is not a number"):
        read_csv(p)
    with pytest.raises(ConfigError, match=r"label_column must be in \[-3, 2\]"):
        read_csv(p, label_column=3)
    p.write_text("1,2,0\n3,4,1\n")
    with pytest.raises(ConfigError, match="no header row"):
        read_csv(p, label_column="c", header=False)


def test_load_tabular_csv_numeric_class_order(tmp_path):
    rows = [f"{i},{(i * 7) % 5},{[2, 10][i % 2]}" for i in range(20)]
    p = tmp_path / "num.csv"
    p.write_text("f1,f2,y\n" + "\n".join(rows) + "\n")
    ds = load_tabular_file(p, seed=1)
    assert ds.class_names == ["2", "10"] and ds.feature_names == ["f1", "f2"]
    assert ds.n_train == 14 and ds.n_test == 6
    np.testing.assert_allclose(ds.x_train.numpy().mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(ds.x_train.numpy().std(axis=0), 1, atol=1e-5)
    assert ds.meta["path"] == str(p) and ds.meta["test_fraction"] == 0.3
    assert ds.meta["standardize"] is True


def test_read_libsvm_and_load(tmp_path):
    p = tmp_path / "d.svm"
    p.write_text("# header comment\n+1 1:0.5 3:2\n-1 2:1.5  # trailing\n\n1 qid:3 3:-1\n"
                 "-1 1:1\n")
    x, y = read_libsvm(p)
    np.testing.assert_array_equal(x, [[0.5, 0, 2], [0, 1.5, 0], [0, 0, -1], [1, 0, 0]])
    assert y.tolist() == [1, -1, 1, -1] and y.dtype == np.int64
    assert read_libsvm(p, n_features=5)[0].shape == (4, 5)
    with pytest.raises(DataError, match="feature index 3, above n_features=2"):
        read_libsvm(p, n_features=2)
    ds = load_tabular_file(p, standardize=False, test_fraction=0.5)
    assert ds.class_names == ["-1", "1"] and ds.feature_names == ["f1", "f2", "f3"]
    assert ds.n_train == 2 and ds.n_test == 2
    with pytest.raises(ConfigError, match="label_column does not apply"):
        load_tabular_file(p, label_column=0)
    p.write_text("1 1:0.5 x\n")
    with pytest.raises(DataError, match=r"line 1: entry 'x' is not 'index:value'"):
        read_libsvm(p)
    p.write_text("1 0:0.5\n")
    with pytest.raises(DataError, match="1-based"):
        read_libsvm(p)


def test_load_tabular_file_errors(tmp_path):
    p = tmp_path / "data.xlsx"
    p.write_text("x")
    with pytest.raises(DataError, match=r"unsupported file type; supported suffixes: \.arff"):
        load_tabular_file(p)
    with pytest.raises(DataError, match="not found"):
        load_tabular_file(tmp_path / "absent.csv")
    q = tmp_path / "one.csv"
    q.write_text("1,2,a\n3,4,a\n5,6,a\n")
    with pytest.raises(DataError, match="single class"):
        load_tabular_file(q)
    with pytest.raises(ConfigError, match=r"test_fraction must be in \(0, 1\)"):
        load_tabular_file(q, test_fraction=1.0)
    with pytest.raises(ConfigError, match="test_fraction must be a number"):
        load_tabular_file(q, test_fraction="0.3")
    q.write_text("1,2,a\n3,4,b\n")
    with pytest.raises(DataError, match=r"too few rows \(2\)"):
        load_tabular_file(q)


def test_named_tabular_missing_file_message(tmp_path):
    with pytest.raises(DataError) as ei:
        load_madelon(data_dir=tmp_path)
    msg = one_line_error(ei)
    assert "tabular/madelon.arff.gz" in msg and "--data-dir or PRUNELAB_DATA" in msg
    assert str(tmp_path) in msg


def test_named_tabular_fallback_names(tmp_path):
    text = "@relation c\n@attribute a numeric\n@attribute class {'1','2'}\n@data\n" + "".join(
        f"{i},'{1 + i % 2}'\n" for i in range(10))
    (tmp_path / "colon.arff").write_text(text)
    ds = load_colon(data_dir=tmp_path, standardize=False)
    assert ds.name == "colon" and ds.n_train + ds.n_test == 10
    assert ds.class_names == ["1", "2"] and ds.meta["source"] == str(tmp_path)


# ---------------------------------------------------------------------------------- real data


def real_data() -> Path:
    if not (REAL_DATA / "mnist").is_dir() or not (REAL_DATA / "tabular").is_dir():
        pytest.skip(f"real data not found at {REAL_DATA}")
    return REAL_DATA


def test_real_mnist():
    ds = load_mnist(data_dir=real_data())
    assert ds.n_train == 60000 and ds.n_test == 10000
    assert ds.x_train.shape[1:] == (1, 28, 28)
    counts = np.bincount(ds.y_train.numpy(), minlength=10)
    assert counts.sum() == 60000 and counts.min() == 5421 and counts.max() == 6742
    test_counts = np.bincount(ds.y_test.numpy(), minlength=10)
    assert len(test_counts) == 10 and test_counts.min() >= 800
    assert abs(float(ds.x_train.mean())) < 0.01 and abs(float(ds.x_train.std()) - 1) < 0.01
    assert ds.meta["source"] == str(REAL_DATA / "mnist")


@pytest.mark.parametrize("loader, shape, classes", [
    (load_madelon, (2000, 500), ["-1", "1"]),
    (load_colon, (62, 2000), ["1", "2"]),
    (load_leukemia, (72, 7129), ["ALL", "AML"]),
])
def test_real_tabular(loader, shape, classes):
    ds = loader(data_dir=real_data(), seed=0)
    assert ds.n_train + ds.n_test == shape[0] and ds.input_shape == (shape[1],)
    assert ds.num_classes == 2 and ds.class_names == classes
    assert len(ds.feature_names) == shape[1] and ds.relevant_features is None
    y = np.concatenate([ds.y_train.numpy(), ds.y_test.numpy()])
    for cls, total in enumerate(np.bincount(y)):
        n_test = int((ds.y_test.numpy() == cls).sum())
        assert abs(n_test - 0.3 * total) <= 1
    xtr = ds.x_train.numpy().astype(np.float64)
    np.testing.assert_allclose(xtr.mean(axis=0), 0, atol=1e-4)
    std = xtr.std(axis=0)
    assert np.all((np.abs(std - 1) < 1e-3) | (std < 1e-6))
    again = loader(data_dir=real_data(), seed=0)
    assert np.array_equal(again.y_test.numpy(), ds.y_test.numpy())
    assert np.array_equal(again.x_test.numpy(), ds.x_test.numpy())


def test_real_madelon_meta_and_leukemia_split_files():
    root = real_data()
    assert load_madelon(data_dir=root).meta["known_informative_count"] == 20
    x, names, info = read_arff(root / "tabular" / "leukemia_train_38x7129.arff.gz")
    assert x.shape == (38, 7130) and names[-1] == "CLASS" and names[0] == "AFFX-BioB-5_at"
    assert info["categories"][-1] == ["ALL", "AML"]
    assert np.bincount(x[:, -1].astype(int)).tolist() == [27, 11]
    assert not np.isnan(x).any()
    ds = load_tabular_file(root / "tabular" / "leukemia_test_34x7129.arff.gz")
    assert ds.n_train + ds.n_test == 34 and ds.input_shape == (7129,)


def test_libsvm_is_read_sparse_and_densified_only_when_it_fits(tmp_path):
    """A file with a huge feature index and few rows is parsed sparse; densifying is refused in
    one line when it would not fit, instead of allocating rows x max-index."""
    p = tmp_path / "wide.svm"
    p.write_text("1 5:1 50000000:2\n-1 3:1\n")
    with pytest.raises(DataError, match=r"2 rows x 50000000 features need 0\.7 GiB"):
        read_libsvm(p, max_dense_bytes=100 * 1024**2)
    small = tmp_path / "small.svm.gz"
    small.write_bytes(gzip.compress(b"1 4:2\n-1 1:1\n"))
    x, y = read_libsvm(small)
    assert x.shape == (2, 4) and x[0, 3] == 2.0 and y.tolist() == [1, -1]
