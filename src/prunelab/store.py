"""SQLite results store: one file (WAL mode) holding every run of a sweep with its config,
status, metrics, timings and machine, queryable from Python.

Every write is one transaction, so an interrupted process never leaves a half-recorded run;
SQLite's journal makes a crash at any point leave the previous consistent state. A run's status
moves pending -> running -> done | failed; `events` keeps the history (each start, finish and
reset), which is how a resume can show that no finished run was executed twice.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prunelab.errors import ConfigError, DataError

SCHEMA_VERSION = 1
STATUSES = ("pending", "running", "done", "failed")
# Columns of `runs` that a query can filter on by keyword.
FILTER_COLUMNS = ("sweep", "task", "label", "method", "dataset", "model", "sparsity", "seed",
                  "status", "config_hash")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    config_hash  TEXT PRIMARY KEY,
    sweep        TEXT,
    task         TEXT,
    label        TEXT,
    method       TEXT NOT NULL,
    dataset      TEXT NOT NULL,
    model        TEXT NOT NULL,
    sparsity     REAL,
    seed         INTEGER,
    config       TEXT NOT NULL,
    run_dir      TEXT,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    metrics      TEXT,
    error        TEXT,
    created_at   REAL NOT NULL,
    started_at   REAL,
    finished_at  REAL,
    wall_seconds REAL,
    machine      TEXT
);
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    config_hash TEXT NOT NULL,
    event       TEXT NOT NULL,
    at          REAL NOT NULL,
    detail      TEXT
);
CREATE INDEX IF NOT EXISTS events_hash ON events (config_hash);
"""


class StoreError(DataError):
    """The results database cannot be used (locked, corrupt, not a prunelab store)."""


def machine_info() -> dict[str, Any]:
    """Where a run executed: host, platform, cores, Python and torch versions, process id."""
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "pid": os.getpid(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return info


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=_json_default)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class Store:
    """A results database file. Open with `Store(path)`; use as a context manager or `close()`.

    `timeout` is how long a write waits for another process's lock before a StoreError.
    """

    def __init__(self, path: str | Path, *, timeout: float = 30.0, create: bool = True):
        self.path = Path(path)
        self.timeout = timeout
        if not self.path.exists() and not create:
            raise StoreError(f"results database not found: {self.path}")
        if self.path.is_dir():
            raise StoreError(f"results database path is a directory: {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=timeout,
                                         isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open results database {self.path}: {exc}") from None
        self._conn.row_factory = sqlite3.Row
        with self._errors("open"):
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            if self._schema_version() == SCHEMA_VERSION:
                return  # an existing store: opening needs no write lock
            with self._transaction():
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    self._conn.execute(stmt)
                row = self._conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if row is None:
                    self._conn.execute("INSERT INTO meta VALUES ('schema', ?)",
                                       (str(SCHEMA_VERSION),))
                elif int(row[0]) != SCHEMA_VERSION:
                    raise StoreError(f"results database {self.path} has schema version {row[0]}"
                                     f"; this prunelab reads version {SCHEMA_VERSION}")

    def _schema_version(self) -> int | None:
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
        return None if row is None else int(row[0])

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn sqlite3 errors into one-line StoreErrors naming the file."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            msg = str(exc)
            if "locked" in msg or "busy" in msg:
                raise StoreError(
                    f"results database {self.path} is locked by another process (waited "
                    f"{self.timeout:g} s to {what}); wait for it to finish or stop it"
                ) from None
            raise StoreError(f"results database {self.path}: cannot {what}: {msg}") from None
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"results database {self.path} is corrupt or not a prunelab store ({exc}); "
                "move it away and re-run the sweep (finished run directories are re-imported)"
            ) from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; any exception rolls everything back."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @contextmanager
    def write(self, what: str = "write") -> Iterator[sqlite3.Connection]:
        """One atomic write transaction with clear errors."""
        with self._errors(what), self._transaction() as conn:
            yield conn

    def _event(self, conn: sqlite3.Connection, config_hash: str, event: str,
               detail: str | None = None) -> None:
        conn.execute("INSERT INTO events (config_hash, event, at, detail) VALUES (?, ?, ?, ?)",
                     (config_hash, event, time.time(), detail))

    # ------------------------------------------------------------------ writes

    def add_runs(self, cells: Iterable[Mapping[str, Any]]) -> int:
        """Register runs as pending (all or none); runs already present are left as they are.

        Each cell needs config_hash, config (dict), method, dataset, model; optional sweep, task,
        label, sparsity, seed, run_dir. Returns how many were new."""
        now = time.time()
        added = 0
        with self.write("add runs") as conn:
            for c in cells:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO runs (config_hash, sweep, task, label, method, "
                    "dataset, model, sparsity, seed, config, run_dir, status, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                    (c["config_hash"], c.get("sweep"), c.get("task"), c.get("label"),
                     c["method"], c["dataset"], c["model"], c.get("sparsity"), c.get("seed"),
                     _dumps(c["config"]), None if c.get("run_dir") is None else str(c["run_dir"]),
                     now),
                )
                added += cur.rowcount
        return added

    def mark_running(self, config_hash: str, machine: Mapping[str, Any] | None = None) -> None:
        """A run starts (or restarts): status running, one more attempt, a 'start' event."""
        with self.write("mark a run running") as conn:
            cur = conn.execute(
                "UPDATE runs SET status='running', attempts=attempts+1, started_at=?, "
                "finished_at=NULL, error=NULL, machine=? WHERE config_hash=?",
                (time.time(), _dumps(machine or machine_info()), config_hash))
            self._require(cur, config_hash)
            self._event(conn, config_hash, "start")

    def mark_done(
        self,
        config_hash: str,
        metrics: Mapping[str, Any],
        *,
        wall_seconds: float | None = None,
        machine: Mapping[str, Any] | None = None,
        event: str = "done",
    ) -> None:
        """A run finished: its metrics, wall time and machine, status done, in one transaction."""
        with self.write("record a finished run") as conn:
            cur = conn.execute(
                "UPDATE runs SET status='done', metrics=?, error=NULL, finished_at=?, "
                "wall_seconds=?, machine=COALESCE(?, machine) WHERE config_hash=?",
                (_dumps(dict(metrics)), time.time(), wall_seconds,
                 None if machine is None else _dumps(machine), config_hash))
            self._require(cur, config_hash)
            self._event(conn, config_hash, event)

    def mark_failed(self, config_hash: str, error: str, *,
                    wall_seconds: float | None = None) -> None:
        """A run raised: status failed with the one-line error."""
        with self.write("record a failed run") as conn:
            cur = conn.execute(
                "UPDATE runs SET status='failed', error=?, finished_at=?, wall_seconds=? "
                "WHERE config_hash=?", (error, time.time(), wall_seconds, config_hash))
            self._require(cur, config_hash)
            self._event(conn, config_hash, "failed", error)

    def reset(self, statuses: Iterable[str] = ("running",), *,
              hashes: Iterable[str] | None = None) -> list[str]:
        """Put runs with these statuses back to pending (a run killed mid-way is re-run)."""
        statuses = list(statuses)
        for s in statuses:
            if s not in STATUSES:
                raise ConfigError(f"status must be one of {', '.join(STATUSES)}; got '{s}'")
        marks = ",".join("?" * len(statuses))
        sql = f"SELECT config_hash FROM runs WHERE status IN ({marks})"
        with self.write("reset runs") as conn:
            found = [r[0] for r in conn.execute(sql, statuses)]
            if hashes is not None:
                wanted = set(hashes)
                found = [h for h in found if h in wanted]
            for h in found:
                conn.execute("UPDATE runs SET status='pending' WHERE config_hash=?", (h,))
                self._event(conn, h, "reset")
        return found

    @staticmethod
    def _require(cur: sqlite3.Cursor, config_hash: str) -> None:
        if cur.rowcount != 1:
            raise StoreError(f"no run with config hash {config_hash} in the results database")

    # ------------------------------------------------------------------ reads

    def status_counts(self) -> dict[str, int]:
        """Number of runs per status (every status present, zero if none)."""
        with self._errors("read"):
            rows = self._conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status")
            counts = {s: 0 for s in STATUSES}
            counts.update({r[0]: r[1] for r in rows})
        return counts

    def get(self, config_hash: str) -> dict[str, Any] | None:
        """One run as a dict (config, metrics and machine decoded), or None."""
        with self._errors("read"):
            row = self._conn.execute("SELECT * FROM runs WHERE config_hash=?",
                                     (config_hash,)).fetchone()
        return None if row is None else _decode(row)

    def events(self, config_hash: str | None = None) -> list[dict[str, Any]]:
        """The event history, oldest first (optionally of one run)."""
        sql, args = "SELECT * FROM events", ()
        if config_hash is not None:
            sql, args = sql + " WHERE config_hash=?", (config_hash,)
        with self._errors("read"):
            return [dict(r) for r in self._conn.execute(sql + " ORDER BY id", args)]

    def rows(self, *, flat: bool = True, **filters: Any) -> list[dict[str, Any]]:
        """Runs as dicts, filtered by column (e.g. status='done', method='gmp').

        With `flat`, metrics become top-level keys (test_accuracy, weight_sparsity, ...)."""
        unknown = sorted(set(filters) - set(FILTER_COLUMNS))
        if unknown:
            raise ConfigError(f"cannot filter runs by {', '.join(unknown)}; valid: "
                              f"{', '.join(FILTER_COLUMNS)}")
        where = " AND ".join(f"{k}=?" for k in filters)
        sql = "SELECT * FROM runs" + (f" WHERE {where}" if where else "") + " ORDER BY rowid"
        with self._errors("read"):
            rows = [_decode(r) for r in self._conn.execute(sql, tuple(filters.values()))]
        if flat:
            for r in rows:
                for k, v in (r.get("metrics") or {}).items():
                    r.setdefault(k, v)
        return rows

    def query(self, **filters: Any) -> Any:
        """A pandas DataFrame of the (flattened) runs if pandas is installed, else `rows()`."""
        rows = self.rows(**filters)
        try:
            import pandas as pd
        except ImportError:
            return rows
        return pd.DataFrame(rows)

    def integrity_check(self) -> str:
        """SQLite's own integrity check ('ok' when sound)."""
        with self._errors("check integrity"):
            return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    for key in ("config", "metrics", "machine"):
        if d.get(key):
            d[key] = json.loads(d[key])
    return d


def open_store(path: str | Path, *, timeout: float = 30.0, create: bool = True) -> Store:
    """Open (or create) the results database at `path`."""
    return Store(path, timeout=timeout, create=create)


# ------------------------------------------------------------------ metrics from run dirs

# Keys copied from results.json["final"] and results.json["sparsity"] (the global report).
FINAL_KEYS = ("test_accuracy", "test_loss", "train_accuracy", "train_eval_loss", "train_loss",
              "train_seconds", "steps", "epoch")
SPARSITY_KEYS = ("weight_sparsity", "bias_sparsity", "weights", "weights_nonzero", "params",
                 "params_nonzero", "params_after_shrink", "flops_dense", "flops_sparse",
                 "flops_after_shrink")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file as a dict, with a DataError naming it when missing or malformed."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"malformed JSON in {path}: {exc}") from None


def metrics_from_run_dir(run_dir: str | Path) -> dict[str, Any]:
    """Final metrics plus sparsity, parameter and FLOP counts of a finished run directory.

    An IMP directory (level_0 ... level_R) reports its last level, with `train_seconds` summed
    over all levels (the cost of the whole procedure) and `levels` the number of rounds."""
    run_dir = Path(run_dir)
    results = read_json(run_dir / "results.json")
    if "levels" in results and "final" not in results:
        levels = sorted((p for p in run_dir.glob("level_*") if p.is_dir()),
                        key=lambda p: int(p.name.split("_")[1]))
        if not levels:
            raise DataError(f"IMP run {run_dir} has no level_* directories")
        per_level = [metrics_from_run_dir(p) for p in levels]
        out = dict(per_level[-1])
        out["train_seconds"] = sum(m.get("train_seconds", 0.0) for m in per_level)
        out["levels"] = len(per_level) - 1
        out["level_accuracies"] = [m.get("test_accuracy") for m in per_level]
        return out
    final = results.get("final", {})
    sparsity = dict(results.get("sparsity", {}))
    sp_file = run_dir / "sparsity.json"
    if sp_file.is_file():
        sparsity.update(read_json(sp_file).get("global", {}))
    out = {k: final[k] for k in FINAL_KEYS if k in final}
    out.update({k: sparsity[k] for k in SPARSITY_KEYS if k in sparsity})
    classes = (results.get("dataset") or {}).get("num_classes")
    if isinstance(classes, int) and classes > 0:
        out["num_classes"] = classes
    out.update(start_counts(run_dir, out))
    return out


# State-dict entries of a model that are buffers, not parameters (BatchNorm statistics).
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def start_counts(run_dir: str | Path, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What a run removed measured against the network it started from: `weights_at_start`,
    `params_at_start` and `weights_removed_vs_start` = 1 - nonzero weights now / weights at
    start (likewise `params_removed_vs_start`). For a run that kept its architecture they equal
    the weight sparsity and the fraction of zero parameters; for one that removed units
    physically (shrunk.pt) the counts at start come from its init.pt, since its sparsity
    report describes the smaller network (all of whose weights may be nonzero)."""
    run_dir = Path(run_dir)
    weights0, params0 = metrics.get("weights"), metrics.get("params")
    init = run_dir / "init.pt"
    if (run_dir / "shrunk.pt").is_file() and init.is_file():
        import torch

        try:
            state = torch.load(init, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DataError(f"cannot read {init} ({type(exc).__name__})") from None
        weights0 = sum(v.numel() for k, v in state.items()
                       if k.endswith("weight") and v.dim() >= 2)
        params0 = sum(v.numel() for k, v in state.items()
                      if v.is_floating_point() and not k.endswith(_BUFFER_SUFFIXES))
    out: dict[str, Any] = {}
    for what, total in (("weights", weights0), ("params", params0)):
        if total:
            out[f"{what}_at_start"] = int(total)
            if metrics.get(f"{what}_nonzero") is not None:
                out[f"{what}_removed_vs_start"] = 1.0 - metrics[f"{what}_nonzero"] / total
    return out
