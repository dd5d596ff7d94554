"""Where a run's per-epoch metrics go as it trains, besides metrics.jsonl: metrics.csv (the
same rows, one column per key), one line per epoch for logs and pipes, and TensorBoard
scalars when asked for (the optional `tensorboard` package)."""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prunelab import atomic
from prunelab.errors import ConfigError


def stderr_line(message: str) -> None:
    """Print one line to stderr at once (logs and pipes see each epoch as it ends)."""
    print(message, file=sys.stderr, flush=True)


def epoch_line(row: dict[str, Any], epochs: int, total_steps: int) -> str:
    """`epoch 3/10 step 120/400 loss 0.4123 test acc 0.9120 (2.1 s)`: one epoch, one line."""
    parts = [f"epoch {row['epoch']}/{epochs}", f"step {row['step']}/{total_steps}",
             f"loss {row['train_loss']:.4f}"]
    if "test_accuracy" in row:
        parts.append(f"test acc {row['test_accuracy']:.4f}")
    for key in ("mask_sparsity", "units"):
        if key in row:
            value = row[key]
            parts.append(f"{key} {value:.4f}" if isinstance(value, float) and
                         not float(value).is_integer() else f"{key} {value:g}")
    if "seconds" in row:
        parts.append(f"({row['seconds']:.1f} s)")
    return " ".join(parts)


def csv_text(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV: every key seen, in first-seen order; empty where a row lacks one."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return buf.getvalue()


def _cell(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return str(value)
    return value


def check_tensorboard() -> Any:
    """torch's SummaryWriter class; a one-line ConfigError when the optional `tensorboard`
    package (or one it needs) is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError(f"--tensorboard needs the tensorboard package ({exc}): pip install "
                          "'prunelab[tensorboard]' (or pip install tensorboard)") from None
    return SummaryWriter


def tensorboard_writer(directory: str | Path) -> Any:
    """A TensorBoard SummaryWriter on `directory` (see `check_tensorboard`)."""
    return check_tensorboard()(log_dir=str(directory))


class EpochLog:
    """Per-epoch outputs of one run: metrics.csv in `out_dir` (rewritten atomically from all
    rows, so it is whole after a kill and right after a resume), `echo` (a line per epoch) and
    TensorBoard scalars under `tensorboard` (every numeric metric, at the epoch's step)."""

    def __init__(self, out_dir: Path | None, *, echo: Callable[[str], None] | None = None,
                 tensorboard: str | Path | None = None):
        self.out_dir = out_dir
        self.echo = echo
        self.writer = tensorboard_writer(tensorboard) if tensorboard is not None else None

    def rows(self, rows: list[dict[str, Any]]) -> None:
        """All rows so far (after each epoch and when a run resumes)."""
        if self.out_dir is not None:
            atomic.write_text(self.out_dir / "metrics.csv", csv_text(rows))

    def epoch(self, row: dict[str, Any], rows: list[dict[str, Any]], epochs: int,
              total_steps: int) -> None:
        self.rows(rows)
        if self.echo is not None:
            self.echo(epoch_line(row, epochs, total_steps))
        if self.writer is not None:
            for key, value in row.items():
                if key in ("epoch", "step") or isinstance(value, bool):
                    continue
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, global_step=int(row["step"]))
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
