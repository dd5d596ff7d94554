"""CIFAR-10/100 pickles and image folders, written small in their exact formats."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from prunelab.cli import main
from prunelab.data import CropFlip, load_dataset, split_tensors
from prunelab.data.cifar import CIFAR10_CLASSES
from prunelab.errors import ConfigError, DataError


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


def _batch(n: int, labels_key: bytes, rng, classes: int, offset: int = 0) -> dict:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [(offset + i) % classes for i in range(n)]
    out = {b"batch_label": b"fake", labels_key: labels, b"data": data,
           b"filenames": [f"{i}.png".encode() for i in range(n)]}
    if labels_key == b"fine_labels":
        out[b"coarse_labels"] = [lab % 20 for lab in labels]
    return out


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 30, seed: int = 0) -> Path:
    """cifar-10-batches-py with five training batches, a test batch and the meta file, pickled
    with protocol 2 and bytes keys, as the published archive is."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(_batch(per_batch, b"labels", rng, 10, i), f, protocol=2)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(_batch(n_test, b"labels", rng, 10), f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                     b"num_vis": 3072}, f, protocol=2)
    return folder


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in (("train", n_train), ("test", n_test)):
        with open(folder / name, "wb") as f:
            pickle.dump(_batch(n, b"fine_labels", rng, 100), f)  # today's default protocol
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"class{i}".encode() for i in range(100)],
                     b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}, f)
    return folder


def test_cifar10_reads_the_pickles_normalises_per_channel_and_augments_training_only(tmp_path):
    folder = write_cifar10(tmp_path)
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert (data.n_train, data.n_test, data.input_shape, data.num_classes) == (100, 30,
                                                                               (3, 32, 32), 10)
    assert data.class_names == CIFAR10_CLASSES
    with open(folder / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    img = raw[b"data"][0].reshape(3, 32, 32).astype(np.float64) / 255.0
    mean, std = np.array(data.meta["channel_mean"]), np.array(data.meta["channel_std"])
    expect = (img - mean[:, None, None]) / std[:, None, None]
    assert np.allclose(data.x_train[20].numpy(), expect, atol=1e-4)  # batch 2 starts at 20
    assert data.y_train[20] == raw[b"labels"][0]
    per_channel = data.x_train.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-4)
    assert torch.allclose(per_channel.std(1), torch.ones(3), atol=1e-3)
    assert isinstance(data.augment, CropFlip) and data.augment.padding == 4
    assert data.summary()["augment"] == "random crop, 4-pixel padding, horizontal flip"
    aug = torch.cat([b[0] for b in data.train_batches(1, 32, seed=0)])
    plain = data.x_train[torch.cat([torch.arange(100)])]
    assert aug.shape == plain.shape and not torch.equal(aug.sort(0)[0], plain.sort(0)[0])
    assert torch.equal(torch.cat([b[0] for b in data.eval_batches("train")]), data.x_train)
    # the folder itself may be the data directory; augment off serves the stored images
    same = load_dataset("cifar10", data_dir=folder, augment=False)
    assert same.augment is None and torch.equal(same.x_train, data.x_train)
    unit = load_dataset("cifar10", data_dir=folder, normalize="unit", n_train=50, n_test=10)
    assert unit.n_train == 50 and float(unit.x_train.max()) <= 1.0
    assert sorted(np.bincount(unit.y_train.numpy(), minlength=10)) == [5] * 10


def test_crop_flip_pads_with_the_fill_and_crops_a_window_of_the_padded_image():
    x = torch.arange(2 * 2 * 5 * 5, dtype=torch.float32).view(2, 2, 5, 5)
    aug = CropFlip(padding=2, fill=[-1.0, -2.0])
    padded = aug._padded(x)
    assert torch.all(padded[:, 0, :2] == -1.0) and torch.all(padded[:, 1, :, -2:] == -2.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        out = aug(x, g)
        for k in range(2):
            windows = [padded[k, :, i:i + 5, j:j + 5] for i in range(5) for j in range(5)]
            windows += [w.flip(2) for w in windows]
            assert any(torch.equal(out[k], w) for w in windows)
            one = aug.sample(x[k])
            assert any(torch.equal(one, w) for w in windows)
    assert CropFlip(padding=0, flip=False)(x, g).equal(x)
    with pytest.raises(ConfigError, match="padding"):
        CropFlip(padding=-1)


def test_cifar100_uses_the_fine_labels_and_validation_is_stratified(tmp_path):
    write_cifar100(tmp_path)
    data = load_dataset("cifar100", data_dir=tmp_path, validation=0.5, seed=3)
    assert data.num_classes == 100 and data.class_names[7] == "class7"
    assert data.n_train == 100 and data.n_test == 100
    assert np.bincount(data.y_test.numpy(), minlength=100).tolist() == [1] * 100
    assert data.summary()["evaluation"] == "validation" and data.augment is not None


def test_cifar_bad_files_are_one_clear_line(tmp_path):
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", data_dir=tmp_path / "nothing")
    assert "cifar-10-batches-py/data_batch_1" in one_line(exc) and "cifar.html" in str(exc.value)
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3 not found"):
        load_dataset("cifar10", data_dir=tmp_path)
    (folder / "data_batch_3").write_bytes(b"\x80\x02}q\x00(U\x04data")  # cut short
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", data_dir=tmp_path)
    assert "data_batch_3 is not a readable CIFAR pickle" in one_line(exc)
    # a pickle that would run code is refused, not run
    evil = pickle.dumps({b"data": __import__("os").getcwd})
    (folder / "data_batch_3").write_bytes(evil)
    with pytest.raises(DataError, match="references .*getcwd"):
        load_dataset("cifar10", data_dir=tmp_path)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8),
                                                        b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"'data' must be an \(n, 3072\) uint8 array"):
        load_dataset("cifar10", data_dir=tmp_path)
    (folder / "data_batch_3").write_bytes(pickle.dumps(
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}))
    with pytest.raises(DataError, match="labels outside 0..9"):
        load_dataset("cifar10", data_dir=tmp_path)
    with pytest.raises(ConfigError, match="normalize"):
        load_dataset("cifar10", data_dir=tmp_path, normalize="minmax")


def test_cli_trains_on_cifar_with_bf16_and_refuses_fp16_on_cpu(tmp_path, capsys):
    write_cifar10(tmp_path, per_batch=12, n_test=20)
    out = tmp_path / "run"
    args = ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--model", "mlp",
            "--model-option", "widths=[16]", "--epochs", "1", "--batch-size", "20",
            "--quiet"]
    assert main(args + ["--precision", "fp16", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunelab: error: precision fp16 needs a CUDA device") and \
        err.count("\n") == 1
    assert not out.exists()
    assert main(args + ["--precision", "bf16", "--channels-last", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["train"]["precision"] == "bf16"
    assert results["config"]["train"]["channels_last"] is True
    assert results["dataset"]["name"] == "cifar10" and results["dataset"]["n_train"] == 60
    assert main(["data", "info", "cifar10", "--data-dir", str(tmp_path)]) == 0
    assert '"num_classes": 10' in capsys.readouterr().out
    assert main(["data", "info", "cifar100", "--data-dir", str(tmp_path)]) == 2
    assert "cifar100 not found" in capsys.readouterr().err


# ------------------------------------------------------------------ image folders


def _image(path: Path, size=(8, 8), color=(10, 200, 30), fmt=None) -> np.ndarray:
    from PIL import Image

    rng = np.random.default_rng(abs(hash(path.name)) % 1000)
    arr = np.clip(rng.integers(-20, 20, size=(size[1], size[0], 3)) + np.array(color), 0,
                  255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return arr


def write_folder(root: Path, per_class: int = 5, classes=("cat", "dog", "owl"), size=(8, 8)):
    colors = {"cat": (200, 20, 20), "dog": (20, 200, 20), "owl": (20, 20, 200)}
    arrays = {}
    for c in classes:
        for i in range(per_class):
            ext = "png" if i % 2 == 0 else "PNG"
            p = root / c / f"{i}.{ext}"
            arrays[str(p)] = _image(p, size, colors[c], fmt="PNG")
    return arrays


def test_image_folder_lists_classes_splits_stratified_and_decodes_exactly(tmp_path):
    arrays = write_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    src = load_dataset(f"imagefolder:{tmp_path / 'imgs'}", test_fraction=0.4, seed=2,
                       normalize="unit")
    assert src.class_names == ["cat", "dog", "owl"] and src.num_classes == 3
    assert (src.n_train, src.n_test, src.input_shape) == (9, 6, (3, 8, 8))
    x, y = split_tensors(src, "test")
    assert np.bincount(y.numpy()).tolist() == [2, 2, 2]
    files = src.test.files
    for k, f in enumerate(files):  # PNG is lossless: pixels / 255 exactly
        expect = torch.from_numpy(arrays[f]).permute(2, 0, 1).float() / 255.0
        assert torch.allclose(x[k], expect, atol=1e-6)
    std = load_dataset(f"imagefolder:{tmp_path / 'imgs'}", test_fraction=0.4, seed=2)
    xs, _ = split_tensors(std, "train")
    per_channel = xs.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-4)
    batches = list(std.train_batches(1, 4, seed=0))
    assert [b[0].shape[0] for b in batches] == [4, 4, 1]
    val = load_dataset(f"imagefolder:{tmp_path / 'imgs'}", validation=1 / 3, seed=2)
    assert val.n_train + val.n_test == 12 and val.summary()["evaluation"] == "validation"


def test_image_folder_train_val_layout_resize_and_jpeg(tmp_path):
    root = tmp_path / "imnet"
    for c in ("a", "b"):
        for i in range(3):
            _image(root / "train" / c / f"{i}.jpg", size=(10 + i, 12), fmt="JPEG")
        _image(root / "val" / c / "0.jpeg", size=(9, 9), fmt="JPEG")
    with pytest.raises(DataError) as exc:
        load_dataset(f"imagefolder:{root}")
    assert "images differ in size" in one_line(exc) and "resize=N" in str(exc.value)
    src = load_dataset(f"imagefolder:{root}", resize=[6, 7], augment=True)
    assert (src.n_train, src.n_test, src.input_shape) == (6, 2, (3, 6, 7))
    assert src.summary()["layout"] == "train/ and val/"
    x, y = next(iter(src.train_batches(1, 6, seed=1)))
    assert x.shape == (6, 3, 6, 7) and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ConfigError, match="resize"):
        load_dataset(f"imagefolder:{root}", resize=0)


def test_image_folder_bad_input_is_one_clear_line(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}")
    (tmp_path / "empty" / "loose").mkdir(parents=True)
    (tmp_path / "flat").mkdir()
    _image(tmp_path / "flat" / "0.png")
    with pytest.raises(DataError, match="no class folders of images"):
        load_dataset(f"imagefolder:{tmp_path / 'flat'}")
    with pytest.raises(DataError, match="loose holds no .jpg/.jpeg/.png images"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    write_folder(tmp_path / "bad", per_class=2)
    (tmp_path / "bad" / "dog" / "9.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError) as exc:
        load_dataset(f"imagefolder:{tmp_path / 'bad'}", test_fraction=0.5)
    assert "cannot read image" in one_line(exc) and "9.png" in str(exc.value)
    with pytest.raises(ConfigError, match="no option colour"):
        load_dataset(f"imagefolder:{tmp_path / 'bad'}", colour=1)


def test_cli_trains_on_an_image_folder_and_a_corrupt_image_leaves_no_run(tmp_path, capsys):
    write_folder(tmp_path / "imgs", per_class=4)
    out = tmp_path / "run"
    base = ["train", "--dataset", f"imagefolder:{tmp_path / 'imgs'}", "--model", "mlp",
            "--model-option", "widths=[8]", "--epochs", "2", "--batch-size", "4", "--quiet",
            "--data-option", "resize=8", "--data-option", "test_fraction=0.25"]
    assert main(base + ["--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["n_train"] == 9 and results["dataset"]["streamed"] is True
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()
    # with resize and no statistics to take, no image is opened up front: the bad file is
    # met while training, in a loader worker
    (tmp_path / "imgs" / "owl" / "7.png").write_bytes(b"garbage")
    out2 = tmp_path / "run2"
    assert main(base + ["--out", str(out2), "--data-option", "workers=1",
                        "--data-option", "normalize=unit"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunelab: error: cannot read image") and err.count("\n") == 1
    assert not out2.exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())
    assert main(["data", "info", f"imagefolder:{tmp_path / 'imgs'}",
                 "--data-option", "resize=4"]) == 0
    assert json.loads(capsys.readouterr().out)["input_shape"] == [3, 4, 4]
