"""User-facing errors: the CLI turns these into one clear line and a non-zero exit."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable


class PrunelabError(Exception):
    """A mistake in what the user asked for (bad name, number, file): never a bug."""


class UnknownNameError(PrunelabError):
    """A registry lookup failed; the message lists the valid names."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]):
        valid_list = ", ".join(sorted(valid)) or "none available"
        super().__init__(f"unknown {kind} '{name}'; valid {kind}s: {valid_list}")
        self.kind, self.name = kind, name


class DataError(PrunelabError):
    """A data file is missing, truncated or malformed."""


class ConfigError(PrunelabError):
    """An option has an invalid value; the message names the option and its range."""


class MaskError(PrunelabError):
    """Masks do not fit the model (names or shapes)."""


_WRITE_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def os_error_message(exc: OSError) -> str:
    """One line for an operating-system error on a user's path (permission, read-only file
    system, disk full, a file where a directory should be)."""
    what = exc.strerror or type(exc).__name__
    path = exc.filename2 or exc.filename
    where = f" {path}" if path else ""
    if exc.errno in _WRITE_ERRNOS:
        return f"cannot write{where}: {what}"
    if exc.errno == errno.ENOTDIR or (
            exc.errno == errno.EEXIST and path and os.path.isfile(path)):
        return f"cannot use{where}: a part of the path is a file, not a directory"
    return f"cannot access{where}: {what}"


def check_range(
    name: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Raise ConfigError naming `name` and its allowed range unless low <= value <= high."""
    ok = True
    if low is not None:
        ok &= value >= low if low_inclusive else value > low
    if high is not None:
        ok &= value <= high if high_inclusive else value < high
    if not ok:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        left, right = "[" if low_inclusive else "(", "]" if high_inclusive else ")"
        interval = f"{left}{lo}, {hi}{right}"
        raise ConfigError(f"{name} must be in {interval}, got {value!r}")
    return value
