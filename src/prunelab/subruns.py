"""Finished sub-runs of a long command, kept so that a killed command continues where it
stopped.

A reproduction trains many runs in memory before it writes its report. `SubrunCache` gives
each of them a run directory inside the reproduction's staging folder
(`prunelab.atomic.stage_path(out)/.work/subruns/KEY`), where KEY hashes everything that decides the
run: its config (as `RunConfig.config_hash`), the method and its options, the data (name,
sizes and a checksum of its tensors), the initial weights, masks and architecture handed in,
and the kind of run (train, or retrain from an init). A finished sub-run is read back
(`prunelab.runs.load_result`, tensors bit for bit) together with the global random
generators' state it ended with, so the code after it draws exactly what it would have; one
that was interrupted continues from its checkpoint. The folder is the command's own: it is
claimed for this process when the first sub-run starts (a second command on the same output
is refused) and dropped when
the command's `staged_directory` renames the stage into place (`atomic.WORK_FOLDER`); an
error in the command keeps it, so the next attempt reuses every finished sub-run.

Use: `cache = SubrunCache.for_output(out)`, then `cache.run(cfg, data=..., ...)` where the
code called `prunelab.train.run(cfg, ...)` and `cache.retrain_from(cfg, masks, init, ...)`
where it called `prunelab.retrain.retrain_from`; `SubrunCache(None)` caches nothing. A sub-run
whose result is more than a run directory (derived numbers, a method's trace) goes through
`cache.get_or_run(spec, fn)`: `fn()`'s result is stored whole (`torch.save`, atomically, with
the generators' state) under the hash of `spec`, a JSON-able mapping of everything that decides
it (`spec_key`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from prunelab import atomic
from prunelab import resume as prunelab_resume
from prunelab.config import RunConfig
from prunelab.dist import checksum

FOLDER = "subruns"


class SubrunCache:
    """Run directories of finished (or interrupted) sub-runs under `directory` (None: off)."""

    def __init__(self, directory: str | Path | None, *, output: str | Path | None = None):
        self._directory = Path(directory) if directory is not None else None
        self._output = output  # claimed when the first sub-run starts (for_output)
        self.hits = 0
        self.runs = 0

    @classmethod
    def for_output(cls, out: str | Path) -> SubrunCache:
        """The cache of a command writing `out`: STAGE/.work/subruns. A live process writing
        `out` is refused now; the stage is claimed for this process when the first sub-run
        starts (so a command that fails before training leaves nothing behind), keeping the
        sub-runs an earlier, killed attempt finished."""
        atomic.refuse_if_owned(out)
        return cls(None, output=out)

    @property
    def directory(self) -> Path | None:
        """Where the sub-runs live (None: the cache is off)."""
        if self._directory is None and self._output is not None:
            held = atomic.stage_path(self._output).absolute() in atomic._HELD
            info = atomic.claim_stage(self._output, keep=True, report=atomic._stderr)
            if not held:  # an earlier attempt's results are rewritten; its sub-runs reused
                atomic.clear_stage(info.path, keep_work=True)
            self._directory = info.path / atomic.WORK_FOLDER / FOLDER
        return self._directory

    # ------------------------------------------------------------------ runs

    def run(self, cfg: RunConfig, *, data: Any = None, method: Any = None,
            initial_state: dict[str, torch.Tensor] | None = None,
            extra_results: dict[str, Any] | None = None,
            architecture: Any = None, progress: bool | None = None) -> Any:
        """`prunelab.train.run(cfg, ...)` in memory, through the cache."""
        from prunelab.train import load_data, run

        if self.directory is None:
            return run(cfg, progress=progress, data=data, method=method,
                       initial_state=initial_state, extra_results=extra_results,
                       architecture=architecture)
        data = data if data is not None else load_data(cfg)
        key = subrun_key("run", cfg, data, method=method, states={"init": initial_state},
                         architecture=architecture, extra=extra_results)
        return self._through(key, lambda out: run(
            cfg, out, progress=progress, data=data, method=method,
            initial_state=initial_state, extra_results=extra_results,
            architecture=architecture))

    def retrain_from(self, cfg: RunConfig, masks: dict[str, torch.Tensor], init: str, *,
                     init_states: dict[str, dict[str, torch.Tensor]] | None = None,
                     data: Any = None, seed: int | None = None,
                     progress: bool | None = None,
                     extra_results: dict[str, Any] | None = None,
                     architecture: Any = None) -> Any:
        """`prunelab.retrain.retrain_from(cfg, masks, init, ...)` in memory, through the
        cache."""
        from prunelab.retrain import retrain_from
        from prunelab.train import load_data

        if self.directory is None:
            return retrain_from(cfg, masks, init, init_states=init_states, data=data,
                                seed=seed, progress=progress, extra_results=extra_results,
                                architecture=architecture)
        data = data if data is not None else load_data(cfg)
        states = {f"init:{k}": v for k, v in (init_states or {}).items()}
        key = subrun_key(f"retrain:{init}:{seed}", cfg, data, states=states, masks=masks,
                         architecture=architecture, extra=extra_results)
        return self._through(key, lambda out: retrain_from(
            cfg, masks, init, init_states=init_states, data=data, seed=seed, out_dir=out,
            progress=progress, extra_results=extra_results, architecture=architecture))

    def _through(self, key: str, train) -> Any:
        from prunelab.runs import load_result

        out = self.directory / key
        rng_file = self.directory / f"{key}.rng.pt"
        if (out / "results.json").is_file() and rng_file.is_file():
            result = load_result(out)
            prunelab_resume.set_rng_state(torch.load(rng_file, weights_only=False))
            self.hits += 1
            return result
        if out.exists():  # finished, but killed before its generator state was kept
            shutil.rmtree(out)
        result = train(out)
        atomic.save_torch(rng_file, prunelab_resume.rng_state())
        self.runs += 1
        return result

    def get_or_run(self, spec: Mapping[str, Any], fn: Callable[[], Any]) -> Any:
        """The stored result of the sub-run `spec` describes, or `fn()` (then stored with the
        generators' state it left, restored when it is read back)."""
        if self.directory is None:
            return fn()
        key = spec_key(spec)
        path = self.directory / f"{key}.pt"
        if path.is_file():
            entry = torch.load(path, map_location="cpu", weights_only=False)
            if entry.get("key") == key:  # not a file copied under another spec's name
                prunelab_resume.set_rng_state(entry["rng"])
                self.hits += 1
                return entry["result"]
        result = fn()
        atomic.save_torch(path, {"key": key, "spec": dict(spec), "result": result,
                                 "rng": prunelab_resume.rng_state()})
        self.runs += 1
        return result

    def remove(self) -> None:
        """Delete the cache (the command has written its results)."""
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)


def stored_subruns(out: str | Path) -> Path:
    """Where `SubrunCache.for_output(out)` keeps the sub-runs of a command writing `out`, for
    reading them without claiming the stage (the command may still be running)."""
    return atomic.stage_path(out) / atomic.WORK_FOLDER / FOLDER


# ----------------------------------------------------------------------------- keys


def spec_key(spec: Mapping[str, Any]) -> str:
    """A 16-hex-digit key of a JSON-able spec (keys sorted; other values by `str`)."""
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def subrun_key(kind: str, cfg: RunConfig, data: Any, *, method: Any = None,
               states: dict[str, dict[str, torch.Tensor] | None] | None = None,
               masks: dict[str, torch.Tensor] | None = None, architecture: Any = None,
               extra: dict[str, Any] | None = None) -> str:
    """A 16-hex-digit key of everything that decides a sub-run's result."""
    blob = {
        "kind": kind,
        "config": cfg.config_hash(),
        "method": None if method is None else [method.name, json.dumps(
            method.options(), sort_keys=True, default=str)],
        "data": data_identity(data),
        "states": {k: None if v is None else checksum(v) for k, v in (states or {}).items()},
        "masks": None if masks is None else checksum(masks),
        "architecture": json.dumps(architecture, sort_keys=True, default=str),
        "extra": json.dumps(extra, sort_keys=True, default=str),
    }
    return spec_key(blob)


_IDENTITIES: dict[int, tuple[Any, str]] = {}


def data_identity(data: Any) -> str:
    """The data's summary plus a checksum of its in-memory tensors (the training split and,
    where it may be read, the test split); remembered per data object."""
    held = _IDENTITIES.get(id(data))
    if held is not None and held[0]() is data:
        return held[1]
    summary = json.dumps(data.summary(), sort_keys=True, default=str)
    tensors: dict[str, torch.Tensor] = {}
    for name in ("x_train", "y_train", "x_test", "y_test"):
        try:
            value = getattr(data, name, None)
        except Exception:  # a sealed test split (prunelab.firewall): the summary stands in
            value = None
        if isinstance(value, torch.Tensor):
            tensors[name] = value
    digest = f"{summary}|{checksum(tensors) if tensors else ''}"
    try:
        _IDENTITIES[id(data)] = (weakref.ref(data), digest)
    except TypeError:  # not weak-referenceable: computed again next time
        pass
    return digest
