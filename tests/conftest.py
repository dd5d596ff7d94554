"""Shared fixtures: tiny datasets and models that train in well under a second."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine the threads'
# spin-waiting makes each step 10-100x slower.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data_dir() -> Path:
    """The real data directory ($PRUNELAB_DATA or ../shared/data); skip when absent."""
    env = os.environ.get("PRUNELAB_DATA")
    for d in ([Path(env)] if env else []) + [SHARED_DATA]:
        if (d / "mnist").is_dir() or (d / "tabular").is_dir():
            return d
    pytest.skip(f"real data not found at {SHARED_DATA} or $PRUNELAB_DATA")


@pytest.fixture
def tiny_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 5),
        torch.nn.ReLU(), torch.nn.Linear(5, 3),
    )


@pytest.fixture
def tiny_cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 6, 3), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(6 * 2 * 2, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3),
    )


def tiny_images(n_train=64, n_test=32, shape=(3, 28, 28), classes=4, seed=0):
    """A tiny image Dataset for the CIFAR networks: class-dependent shifts of one channel,
    learnable in a few steps."""
    from prunelab.data.base import Dataset

    g = torch.Generator().manual_seed(seed)

    def draw(n):
        y = torch.arange(n) % classes
        x = torch.randn(n, *shape, generator=g) * 0.5
        x[:, 0] += (y.float() - classes / 2).view(-1, 1, 1)
        return x, y

    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    return Dataset("tiny-images", xtr, ytr, xte, yte, classes)
