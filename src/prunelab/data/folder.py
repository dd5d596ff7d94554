"""ImageNet-style class folders (`imagefolder:PATH`), streamed: images are decoded with Pillow
when a batch asks for them, in the loader's worker processes.

Layouts: `PATH/train/<class>/*.jpg|png` with `PATH/val/<class>/...` (or `PATH/test/...`) as
the test split, or `PATH/<class>/...` alone, split into train and test by a seeded
class-stratified `test_fraction`. Classes are the training class folders in sorted order;
images are found recursively inside each (.jpg, .jpeg, .png, any case).

Without `resize` every image's header is read up front (no pixels decoded) and the folder is
refused unless all share one size; `resize=N` or `resize=[H, W]` scales each image on decode
(bilinear) and skips that check. Normalisation "standard" uses per-channel statistics of up
to `stat_images` seeded training images (all of them in a small folder); "unit" is x/255.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from prunelab.data.augment import CropFlip
from prunelab.data.base import one_line, stratified_split
from prunelab.data.stream import StreamingSource
from prunelab.errors import ConfigError, DataError, check_range

PREFIX = "imagefolder:"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
NORMALIZE_CHOICES = ("standard", "unit")


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        raise DataError("reading image folders needs Pillow: pip install pillow") from None
    return Image


class ImageFiles(TorchDataset):
    """Images listed by path with their labels, decoded on access to (channels, h, w)
    float32, normalised with `mean`/`std` (per channel, in [0, 1] pixel units) and augmented
    with `augment.sample` (torch RNG) when given. `targets` lets validation splits stratify
    without decoding."""

    def __init__(self, files: list[str], targets: list[int], size: tuple[int, int],
                 channels: int, mean: list[float], std: list[float], resize: bool,
                 augment: CropFlip | None = None):
        self.files, self.targets = files, targets
        self.size, self.channels, self.resize = size, channels, resize
        self.augment = augment
        self.scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(-1, 1, 1)
        self.shift = torch.tensor([m / s for m, s in zip(mean, std)]).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def pixels(self, index: int) -> np.ndarray:
        """The image at `index` as uint8 (h, w, channels) at the folder's size."""
        path = self.files[index]
        image_mod = _pil()
        h, w = self.size
        try:
            with image_mod.open(path) as img:
                img = img.convert("RGB" if self.channels == 3 else "L")
                if img.size != (w, h):
                    if not self.resize:
                        raise DataError(f"image {path} is {img.size[0]}x{img.size[1]}, the "
                                        f"folder's images are {w}x{h}; pass resize=N")
                    img = img.resize((w, h), image_mod.BILINEAR)
                arr = np.array(img, dtype=np.uint8)
        except DataError:
            raise
        except Exception as exc:  # Pillow raises many types for bad files
            raise DataError(f"cannot read image {path}: {one_line(exc)}") from None
        return arr.reshape(h, w, self.channels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.pixels(index)).permute(2, 0, 1).to(torch.float32)
        x = x.mul_(self.scale).sub_(self.shift)
        if self.augment is not None:
            x = self.augment.sample(x)
        return x, self.targets[index]


def _images_in(folder: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        out += [os.path.join(dirpath, f) for f in sorted(filenames)
                if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")]
    return out


def _scan(folder: Path, classes: list[str] | None = None
          ) -> tuple[list[str], list[str], list[int]]:
    """(classes, files, labels) of a folder of class folders; with `classes` given (the
    training classes), a class folder outside them is refused."""
    dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    found = [d.name for d in dirs]
    if classes is None:
        classes = found
    else:
        extra = [c for c in found if c not in classes]
        if extra:
            raise DataError(f"{folder} has class folder(s) {', '.join(extra[:3])} that the "
                            "training folder lacks")
    index = {c: i for i, c in enumerate(classes)}
    files: list[str] = []
    labels: list[int] = []
    for d in dirs:
        images = _images_in(d)
        if not images:
            raise DataError(f"class folder {d} holds no {'/'.join(IMAGE_SUFFIXES)} images")
        files += images
        labels += [index[d.name]] * len(images)
    if not files:
        raise DataError(f"{folder} holds no class folders of images (expected "
                        f"{folder}/<class>/<image>.jpg or .png)")
    return classes, files, labels


def _common_size(files: list[str]) -> tuple[int, int]:
    """The one (h, w) all images share, read from their headers; DataError otherwise."""
    image_mod = _pil()
    first: tuple[tuple[int, int], str] | None = None
    for path in files:
        try:
            with image_mod.open(path) as img:
                w, h = img.size
        except Exception as exc:
            raise DataError(f"cannot read image {path}: {one_line(exc)}") from None
        if first is None:
            first = ((h, w), path)
        elif (h, w) != first[0]:
            (h0, w0), p0 = first
            raise DataError(f"images differ in size ({w0}x{h0} in {p0}, {w}x{h} in {path}); "
                            "pass resize=N or resize=[H,W] (--data-option resize=32) to scale "
                            "them to one size")
    assert first is not None
    return first[0]


def _parse_resize(resize: Any) -> tuple[int, int] | None:
    if resize is None:
        return None
    vals = [resize] if isinstance(resize, int) else resize
    if not isinstance(vals, (list, tuple)) or len(vals) not in (1, 2) or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in vals):
        raise ConfigError(f"resize must be a positive integer N or a pair [H, W], got {resize!r}")
    return (vals[0], vals[-1])


def _channel_stats(data: ImageFiles, n: int, seed: int) -> tuple[list[float], list[float]]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[:n].tolist()
    total = np.zeros(data.channels)
    squares = np.zeros(data.channels)
    count = 0
    for i in idx:
        px = data.pixels(i).reshape(-1, data.channels).astype(np.float64) / 255.0
        total += px.sum(0)
        squares += (px * px).sum(0)
        count += px.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    return [float(v) for v in mean], [float(v) if v > 1e-8 else 1.0 for v in std]


def load_image_folder(
    path: str | Path,
    *,
    seed: int = 0,
    resize: int | list[int] | None = None,
    channels: int = 3,
    test_fraction: float = 0.2,
    augment: bool = False,
    normalize: str = "standard",
    stat_images: int = 1000,
    workers: int = 0,
) -> StreamingSource:
    """A streaming source over class folders (module doc). `augment`: random crop after
    padding by 1/8 of the side, and horizontal flip, on training samples; `workers`: loader
    worker processes decoding images."""
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels!r}")
    if normalize not in NORMALIZE_CHOICES:
        raise ConfigError(f"normalize must be one of {', '.join(NORMALIZE_CHOICES)}, got "
                          f"{normalize!r}")
    if not isinstance(augment, bool):
        raise ConfigError(f"augment must be true or false, got {augment!r}")
    check_range("test_fraction", float(test_fraction), 0.0, 1.0, low_inclusive=False,
                high_inclusive=False)
    if isinstance(stat_images, bool) or not isinstance(stat_images, int) or stat_images < 1:
        raise ConfigError(f"stat_images must be an integer >= 1, got {stat_images!r}")
    size = _parse_resize(resize)
    root = Path(str(path)).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} not found (imagefolder:PATH needs a directory of "
                        "class folders)")
    train_dir = root / "train" if (root / "train").is_dir() else root
    test_dir = None
    if train_dir != root:
        test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    classes, files, labels = _scan(train_dir)
    if test_dir is not None:
        _, test_files, test_labels = _scan(test_dir, classes)
        layout = f"{train_dir.name}/ and {test_dir.name}/"
    else:
        keep, held = stratified_split(np.asarray(labels), float(test_fraction), seed)
        test_files, test_labels = [files[i] for i in held], [labels[i] for i in held]
        files, labels = [files[i] for i in keep], [labels[i] for i in keep]
        layout = f"class folders, test_fraction {test_fraction} (seed {seed})"
    if size is None:
        size = _common_size(files + test_files)
    rescale = resize is not None
    zero, one = [0.0] * channels, [1.0] * channels
    mean, std = zero, one
    if normalize == "standard":
        probe = ImageFiles(files, labels, size, channels, zero, one, rescale)
        mean, std = _channel_stats(probe, min(stat_images, len(files)), seed)
    aug = None
    if augment:
        aug = CropFlip(padding=max(1, min(size) // 8), flip=True,
                       fill=[-m / s for m, s in zip(mean, std)])

    def files_set(f: list[str], y: list[int], a: CropFlip | None = None) -> ImageFiles:
        return ImageFiles(f, y, size, channels, mean, std, rescale, a)

    meta: dict[str, Any] = {"source": str(root), "layout": layout, "size": list(size),
                            "resized": rescale, "normalize": normalize,
                            "augment": aug.describe() if aug else "none"}
    if normalize == "standard":
        meta["channel_mean"] = [round(v, 6) for v in mean]
        meta["channel_std"] = [round(v, 6) for v in std]
        meta["stat_images"] = min(stat_images, len(files))
    return StreamingSource(
        files_set(files, labels, aug), files_set(test_files, test_labels),
        train_eval=files_set(files, labels), name=f"{PREFIX}{root}", num_classes=len(classes),
        input_shape=(channels, *size), class_names=classes, workers=workers, meta=meta,
    )
