"""The standard image training augmentation: random crop after zero padding, horizontal flip.

One object serves both paths: called on a batch with a generator (the in-memory fast path,
on any device), or `sample(image)` on one image inside a DataLoader worker, drawing from that
worker's torch RNG (seeded per worker by the loader's generator; never NumPy's, whose state
every forked worker would share).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from prunelab.errors import ConfigError


@dataclass
class CropFlip:
    """Pad each image by `padding` pixels with `fill` (per channel, in the images' own scale:
    the normalised value of a black pixel reproduces padding the raw image with zeros), crop a
    random window of the original size, and flip it left-right with probability 1/2."""

    padding: int = 4
    flip: bool = True
    fill: Sequence[float] = field(default_factory=lambda: [0.0])

    def __post_init__(self) -> None:
        if isinstance(self.padding, bool) or not isinstance(self.padding, int) \
                or self.padding < 0:
            raise ConfigError(f"augmentation padding must be an integer >= 0, got "
                              f"{self.padding!r}")
        self.fill = [float(v) for v in self.fill]

    def describe(self) -> str:
        parts = [f"random crop, {self.padding}-pixel padding"] if self.padding else []
        return ", ".join(parts + (["horizontal flip"] if self.flip else [])) or "none"

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        p = self.padding
        channels = x.shape[-3]
        fill = self.fill if len(self.fill) == channels else self.fill[:1] * channels
        out = F.pad(x, (p, p, p, p))
        if any(fill):
            border = torch.ones_like(out[..., :1, :, :], dtype=torch.bool)
            border[..., p : p + x.shape[-2], p : p + x.shape[-1]] = False
            value = torch.tensor(fill, dtype=x.dtype, device=x.device).view(-1, 1, 1)
            out = torch.where(border, value, out)
        return out

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a batch (n, c, h, w); every random draw comes from `generator`."""
        n, _, h, w = x.shape
        p = self.padding
        if p:
            padded = self._padded(x)
            offsets = torch.randint(0, 2 * p + 1, (2, n), generator=generator,
                                    device=generator.device).to(x.device)
            rows = (offsets[0].view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
            cols = (offsets[1].view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
            batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
            chan = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
            x = padded[batch, chan, rows, cols]
        if self.flip:
            flips = torch.rand(n, generator=generator, device=generator.device) < 0.5
            x = torch.where(flips.to(x.device).view(n, 1, 1, 1), x.flip(3), x)
        return x

    def sample(self, image: torch.Tensor) -> torch.Tensor:
        """Augment one image (c, h, w) with the global torch RNG (a loader worker's own)."""
        _, h, w = image.shape
        p = self.padding
        if p:
            i, j = (int(v) for v in torch.randint(0, 2 * p + 1, (2,)))
            image = self._padded(image)[:, i : i + h, j : j + w]
        if self.flip and float(torch.rand(())) < 0.5:
            image = image.flip(2)
        return image
