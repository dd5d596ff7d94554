"""Resumable training checkpoints: every state a later step depends on, in one file written
atomically inside the run's staging directory (`prunelab.atomic.stage_path`).

The Trainer writes `resume.pt` at the end of every epoch, every `checkpoint_every` steps and
at the step boundary after SIGTERM/SIGINT; a run started on the same output finds it and goes
on from there, bit for bit as if it had never stopped. What it holds (see `Trainer.fit`): the
model (and its architecture when a method changed its shape), the optimizer, the method's
`state_dict()`, the GradScaler, every random number generator (torch CPU and CUDA, Python's
`random`, NumPy's global and the epoch's augmentation generator), the step, epoch and batch
position, the metrics so far, the names of the weight snapshots already written, the running
loss of the epoch and the time spent. A checkpoint is trusted only if its `fingerprint` (the
run's config hash, data identity and training length) matches the run being started.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunelab import atomic

CHECKPOINT = "resume.pt"
FORMAT = 1


def rng_state() -> dict[str, Any]:
    """The state of every global random number generator a training step may draw from."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured (CUDA only where it was captured and is present)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(directory: str | Path) -> Path:
    return Path(directory) / CHECKPOINT


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> None:
    """Write a resumable checkpoint atomically (a kill leaves the previous one intact)."""
    atomic.save_torch(checkpoint_path(directory), {"format": FORMAT, **state})


def load_checkpoint(directory: str | Path | None, fingerprint: dict[str, Any] | None = None
                    ) -> dict[str, Any] | None:
    """The checkpoint in `directory`, or None when there is none, it cannot be read, or its
    fingerprint differs from `fingerprint` (another run's state is never trusted)."""
    if directory is None:
        return None
    path = checkpoint_path(directory)
    if not path.is_file():
        return None
    try:
        # tensors come back on the device they were saved from (CPU when CUDA is absent)
        where = None if torch.cuda.is_available() else "cpu"
        state = torch.load(path, map_location=where, weights_only=False)
    except Exception:  # truncated or foreign: start afresh rather than trust it
        return None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        return None
    if fingerprint is not None and state.get("fingerprint") != fingerprint:
        return None
    return state


def remove_checkpoint(directory: str | Path | None) -> None:
    """Drop the checkpoint once the run it belongs to has finished."""
    if directory is not None:
        checkpoint_path(directory).unlink(missing_ok=True)
