"""Atomic file writes (temp file in the same directory, then rename) and staged run directories.

An interrupted command must never leave a half-written result that a later resume would trust.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prunelab.errors import ConfigError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with _atomic_path(Path(path)) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (indented, keys in insertion order, NaN allowed)."""
    write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def save_torch(path: str | Path, obj: Any) -> None:
    """torch.save atomically."""
    with _atomic_path(Path(path)) as tmp:
        torch.save(obj, tmp)


def save_figure(path: str | Path, fig: Any) -> None:
    """Save a matplotlib figure atomically (format from the suffix)."""
    path = Path(path)
    with _atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ----------------------------------------------------------------------------- staging

OWNER_FILE = ".owner"  # inside a stage: the pid/host of the process writing it (flock-held)
# inside a stage: scratch kept across interruptions (e.g. finished sub-runs), never part of
# the result: removed when the stage becomes the output
WORK_FOLDER = ".work"
_HELD: dict[Path, tuple[Any, int]] = {}  # stages this process owns: (lock file, depth)


def stage_path(final: str | Path) -> Path:
    """The staging directory of output `final`: `.NAME.partial` beside it, the same for every
    run on that output, so a rerun finds what an interrupted one left."""
    final = Path(final)
    return final.parent / f".{final.name}.partial"


@dataclass
class StageInfo:
    """What claiming a stage found: whether it was left by an earlier process (`stale`), that
    process's pid/host when recorded, and whether its contents were kept for a resume."""

    path: Path
    stale: bool = False
    pid: int | None = None
    host: str | None = None
    kept: bool = False

    def describe(self) -> str:
        same_host = not self.host or self.host == socket.gethostname()
        if self.pid == os.getpid() and same_host:
            return f"{self.path} (left by this process)"
        who = f"pid {self.pid}" if self.pid is not None else "an unknown process"
        if not same_host:
            who += f" on {self.host}"
        return f"{self.path} (left by {who}, no longer running)"


def _read_owner(path: Path) -> tuple[int | None, str | None]:
    try:
        text = (path / OWNER_FILE).read_text().split()
    except OSError:
        return None, None
    pid = int(text[0]) if text and text[0].isdigit() else None
    return pid, (text[1] if len(text) > 1 else None)


def claim_stage(final: str | Path, *, keep: bool,
                report: Callable[[str], None] | None = None) -> StageInfo:
    """Own the staging directory of `final` for this process (an flock on its `.owner` file,
    released by the OS if the process dies), creating it when absent.

    A stage held by a live process is refused (ConfigError naming its pid). A stage left by a
    dead process is reported; its contents are kept when `keep` (a resumable run continues
    from them) and removed otherwise. Claiming a stage this process already owns nests."""
    import fcntl

    stage = stage_path(final).absolute()
    if stage in _HELD:
        fh, depth = _HELD[stage]
        _HELD[stage] = (fh, depth + 1)
        return StageInfo(stage)
    stage.parent.mkdir(parents=True, exist_ok=True)
    existed = stage.is_dir()
    try:
        stage.mkdir(exist_ok=True)
    except FileExistsError:  # a file in the way: not ours to remove
        raise ConfigError(f"{stage} exists and is not a directory; remove it") from None
    if not existed:
        os.chmod(stage, 0o777 & ~_umask())
    fh = open(stage / OWNER_FILE, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        pid, host = _read_owner(stage)
        who = f"pid {pid}" if pid is not None else "another process"
        raise ConfigError(f"{final} is being written by a running prunelab process ({who}; "
                          f"staging folder {stage}); wait for it to finish or give another "
                          "output") from None
    pid, host = _read_owner(stage)
    info = StageInfo(stage, stale=existed, pid=pid, host=host)
    if existed:
        leftovers = [p for p in stage.iterdir() if p.name != OWNER_FILE]
        info.kept = keep and bool(leftovers)
        if leftovers and not keep:
            clear_stage(stage)
        if report is not None:
            report(f"found the staging folder of an interrupted run: {info.describe()}"
                   + ("" if info.kept or not leftovers else "; cleared it"))
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()} {socket.gethostname()}\n")
    fh.flush()
    _HELD[stage] = (fh, 1)
    return info


def release_stage(final: str | Path, *, remove_owner: bool = False, all_levels: bool = False
                  ) -> None:
    """Give up this process's claim on the stage of `final` (innermost nesting first, or
    every level); the owner file stays (with the pid, for the report of a later run) unless
    `remove_owner`."""
    stage = stage_path(final).absolute()
    held = _HELD.get(stage)
    if held is None:
        return
    fh, depth = held
    if depth > 1 and not all_levels:
        _HELD[stage] = (fh, depth - 1)
        return
    del _HELD[stage]
    if remove_owner:
        (stage / OWNER_FILE).unlink(missing_ok=True)
    fh.close()


def clear_stage(stage: str | Path, *, keep_work: bool = False) -> None:
    """Remove everything in a stage this process owns except its owner file (and its work
    folder, with `keep_work`)."""
    for p in Path(stage).iterdir():
        if p.name == OWNER_FILE or (keep_work and p.name == WORK_FOLDER):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _owned_elsewhere(stage: Path) -> bool:
    """Whether another live process holds the stage's owner lock (probed, not kept)."""
    import fcntl

    if stage.absolute() in _HELD or not (stage / OWNER_FILE).is_file():
        return False
    try:
        with open(stage / OWNER_FILE, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    return False


def refuse_if_owned(final: str | Path) -> None:
    """ConfigError when a live process other than this one is writing `final`'s stage (what
    `claim_stage` would refuse), without creating or claiming anything."""
    stage = stage_path(final)
    if stage.is_dir() and _owned_elsewhere(stage):
        pid, _ = _read_owner(stage)
        who = f"pid {pid}" if pid is not None else "another process"
        raise ConfigError(f"{final} is being written by a running prunelab process ({who}; "
                          f"staging folder {stage}); wait for it to finish or give another "
                          "output")


def stale_stages(directory: str | Path) -> list[StageInfo]:
    """Staging folders under `directory` whose owner is gone (not locked by a live process)."""
    out = []
    for stage in sorted(Path(directory).glob(".*.partial")):
        if not stage.is_dir() or stage.absolute() in _HELD or _owned_elsewhere(stage):
            continue
        pid, host = _read_owner(stage)
        out.append(StageInfo(stage, stale=True, pid=pid, host=host))
    return out


def _interrupted(exc: BaseException) -> bool:
    return isinstance(exc, KeyboardInterrupt)


@contextmanager
def staged_directory(final: str | Path, *, overwrite: bool = True, resumable: bool = False,
                     report: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Yield the staging directory of `final` (`stage_path`), which becomes `final` only if
    the block succeeds.

    The stage is owned by this process while the block runs (`claim_stage`: a live owner is
    refused; a dead owner's stage is reported, then kept for a `resumable` block or emptied).
    On an ordinary exception the stage is removed and `final` is left as it was, so a failed
    command leaves nothing half-written where results are expected. A `resumable` block
    interrupted (KeyboardInterrupt, a signal turned into `prunelab.signals.RunInterrupted`)
    keeps its stage for the next run on the same output; so does any block killed outright.
    When this process already holds the stage (e.g. `prunelab.subruns.SubrunCache`), its work
    folder (`WORK_FOLDER`) survives a failure too; on success it is dropped before the rename.
    """
    final = Path(final)
    held_before = stage_path(final).absolute() in _HELD
    info = claim_stage(final, keep=resumable or held_before, report=report or _stderr)
    stage = info.path
    try:
        yield stage
    except BaseException as exc:
        if (resumable or held_before) and _interrupted(exc):
            release_stage(final)
        elif held_before:  # the outer claim keeps its work folder; results are not kept
            clear_stage(stage, keep_work=True)
            release_stage(final)
        else:
            release_stage(final)
            shutil.rmtree(stage, ignore_errors=True)
        raise
    shutil.rmtree(stage / WORK_FOLDER, ignore_errors=True)
    release_stage(final, remove_owner=True, all_levels=True)
    if final.exists():
        if not overwrite:
            shutil.rmtree(stage, ignore_errors=True)
            raise FileExistsError(final)
        backup = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, backup)
        os.replace(stage, final)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(stage, final)


def _stderr(message: str) -> None:
    print(f"prunelab: {message}", file=sys.stderr)
