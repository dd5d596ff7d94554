"""Finished sub-runs of a reproduction stored on disk by the hash of their spec, so an
interrupted reproduction run again skips what it already finished.

A spec is a JSON-able mapping that fixes the sub-run's result (its run config, the data and
split it trained on, the mask or initial weights it was given, ...). `SubrunCache.get_or_run`
returns the stored result when a file for the spec's hash exists, else runs the function and
stores its result atomically (`prunelab.atomic.save_torch`), so a killed process never leaves
a half-written entry that a resume would trust. Results are dicts of tensors and plain values
(`torch.save`). With `root=None` nothing is stored.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from prunelab import atomic


def spec_hash(spec: Mapping[str, Any]) -> str:
    """A short, stable hash of a JSON-able spec (keys sorted; non-JSON values by `str`)."""
    blob = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


class SubrunCache:
    """Sub-run results keyed by `spec_hash` under `root` (created on first write); counts
    how many were read back (`hits`) and run (`misses`)."""

    def __init__(self, root: str | Path | None):
        self.root = None if root is None else Path(root)
        self.hits = 0
        self.misses = 0

    def path(self, spec: Mapping[str, Any]) -> Path | None:
        return None if self.root is None else self.root / f"{spec_hash(spec)}.pt"

    def get(self, spec: Mapping[str, Any]) -> dict[str, Any] | None:
        """The stored result of `spec`, or None."""
        path = self.path(spec)
        if path is None or not path.is_file():
            return None
        entry = torch.load(path, map_location="cpu", weights_only=False)
        if entry.get("spec_hash") != spec_hash(spec):  # a file copied under another name
            return None
        return entry["result"]

    def put(self, spec: Mapping[str, Any], result: dict[str, Any]) -> None:
        path = self.path(spec)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.save_torch(path, {"spec_hash": spec_hash(spec), "spec": dict(spec),
                                 "result": result})

    def get_or_run(self, spec: Mapping[str, Any],
                   fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The stored result of `spec`, or `fn()` (then stored)."""
        found = self.get(spec)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        result = fn()
        self.put(spec, result)
        return result

    def clear(self) -> None:
        """Remove every stored result (the directory too)."""
        if self.root is not None and self.root.exists():
            shutil.rmtree(self.root)


__all__ = ["SubrunCache", "spec_hash"]
