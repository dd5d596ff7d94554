"""Sweeps: a YAML spec expands into a grid of runs (tasks x methods x method-option grids x
sparsities x seeds, plus explicit runs), each a RunConfig with its config hash, executed by a
local process pool or on Ray into one output directory:

    OUT/results.db        the results store (prunelab.store), one row per config hash
    OUT/runs/NAME-HASH/   one run directory per cell (prunelab.train.run / lottery.run_imp)
    OUT/sweep.yaml        the spec as given

Resume is by config hash: `done` runs are skipped; runs left `running` by a killed sweep go
back to pending and are re-run; a run directory that finished (it is renamed into place only
when complete) but was never recorded is imported without re-running. The parent process is
the only writer of the store and records each run the moment it finishes, in one transaction,
so killing the sweep at any point loses no finished result. Workers exit when the sweep dies.

Spec keys (all optional except `methods`):

    name, description, output, executor (local|ray), workers, threads, ray_address
    base:       RunConfig fields shared by every run (train: {...} merges key by key)
    tasks:      list of {name, dataset, data_options, data_dir, model, model_options, train,
                validation}; `validation: F` adds the task's validation twin NAME:validation
                (data option validation=F: trained on the rest of the training set, evaluated
                on the held-out fraction), on which the report chooses each method's options
    datasets:   list of NAME or {name, options, data_dir}   (crossed with `models` when no
    models:     list of NAME or {name, options}              `tasks` are given)
    methods:    list of NAME or {name, label, options, grid: {option: [values]}, sparsities}
    sparsities: target sparsities, crossed with every method that has a `sparsity` option
                (for imp: rate = 1 - (1 - s)^(1/rounds) unless `rate` is given)
    seeds:      list of seeds (train.seed)
    runs:       explicit list of RunConfig dicts (with optional task, label), merged on base
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prunelab import atomic
from prunelab.config import RunConfig, config_from_dict
from prunelab.errors import ConfigError, PrunelabError, UnknownNameError, check_range
from prunelab.store import Store, machine_info, metrics_from_run_dir

EXECUTORS = ("local", "ray")
TOP_KEYS = ("name", "description", "output", "executor", "workers", "threads", "ray_address",
            "base", "tasks", "datasets", "models", "methods", "sparsities", "seeds", "runs")
TASK_KEYS = ("name", "dataset", "data_options", "data_dir", "model", "model_options", "train",
             "validation")
VALIDATION_SUFFIX = ":validation"  # the task label of a task's validation twin
DATASET_KEYS = ("name", "options", "data_dir")
MODEL_KEYS = ("name", "options")
METHOD_KEYS = ("name", "label", "options", "grid", "sparsities")
RUN_KEYS = ("task", "label", "dataset", "data_options", "data_dir", "model", "model_options",
            "method", "method_options", "train")
DB_NAME = "results.db"
RAY_TIMEOUT = 20.0  # seconds to reach a Ray cluster before giving up


# ----------------------------------------------------------------------------- spec


@dataclass
class Cell:
    """One run of a sweep: its config plus the labels the report groups by."""

    config: RunConfig
    task: str
    label: str
    sparsity: float | None
    seed: int

    @property
    def config_hash(self) -> str:
        return self.config.config_hash()

    def run_dir(self, out: Path) -> Path:
        return Path(out) / "runs" / self.config.run_name()

    def record(self, sweep: str, out: Path) -> dict[str, Any]:
        """The row registered in the store."""
        return {"config_hash": self.config_hash, "sweep": sweep, "task": self.task,
                "label": self.label, "method": self.config.method,
                "dataset": self.config.dataset, "model": self.config.model,
                "sparsity": self.sparsity, "seed": self.seed, "config": self.config.to_dict(),
                "run_dir": str(self.run_dir(out))}


@dataclass
class SweepSpec:
    """A parsed sweep: its cells and default execution settings."""

    name: str
    cells: list[Cell]
    description: str = ""
    output: str | None = None
    executor: str = "local"
    workers: int | None = None
    threads: int | None = None
    ray_address: str | None = None
    duplicates: int = 0  # cells dropped because their config hash repeated an earlier cell
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def _check_keys(obj: Any, valid: Iterable[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(obj).__name__}")
    valid = tuple(valid)
    unknown = sorted(set(obj) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(map(str, unknown))} in {where}; "
                          f"valid: {', '.join(valid)}")
    return obj


def _as_list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, (str, int, float, dict)):
        return [value]
    raise ConfigError(f"{where} must be a list, got {type(value).__name__}")


def _named(entry: Any, valid: tuple[str, ...], where: str) -> dict[str, Any]:
    """A list entry given as NAME or {name: NAME, ...}."""
    if isinstance(entry, str):
        return {"name": entry}
    entry = _check_keys(entry, valid, where)
    if not isinstance(entry.get("name"), str):
        raise ConfigError(f"{where} needs a 'name'")
    return entry


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge for the nested dicts of a RunConfig (train, *_options)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _expand_vars(cfg: dict[str, Any]) -> dict[str, Any]:
    if isinstance(cfg.get("data_dir"), str):
        cfg["data_dir"] = os.path.expandvars(os.path.expanduser(cfg["data_dir"]))
    return cfg


def parse_yaml(text: str, source: str = "<spec>") -> Any:
    """YAML -> Python; syntax errors become one line with the line and column."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None


def load_spec(path: str | Path) -> SweepSpec:
    """Read and expand a sweep spec file (errors name the file, line and column or key)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"sweep spec not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"sweep spec is a directory, not a YAML file: {path}") from None
    data = parse_yaml(text, str(path))
    if data is None:
        raise ConfigError(f"sweep spec {path} is empty")
    return spec_from_dict(data, default_name=path.stem)


def _method_grid(entry: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The option sets of one method entry: its options crossed with its `grid` lists."""
    options = entry.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{where}.options must be a mapping")
    grid = entry.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{where}.grid must be a mapping of option: [values]")
    keys = list(grid)
    values = [_as_list(grid[k], f"{where}.grid.{k}") for k in keys]
    for k, vs in zip(keys, values):
        if not vs:
            raise ConfigError(f"{where}.grid.{k} is empty")
    return [{**options, **dict(zip(keys, combo))} for combo in itertools.product(*values)]


def _check_sparsity_list(values: list[Any], where: str) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{where} must be numbers in [0, 1), got {v!r}")
        out.append(float(check_range(where, float(v), 0.0, 1.0, high_inclusive=False)))
    return out


def _label(entry: dict[str, Any], options: dict[str, Any], grid_keys: list[str]) -> str:
    if entry.get("label"):
        return str(entry["label"])
    if not grid_keys:
        return entry["name"]
    return entry["name"] + "(" + ",".join(f"{k}={options[k]}" for k in grid_keys) + ")"


def _tasks(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(task label, partial RunConfig dict) for every task of the spec."""
    tasks = []
    if data.get("tasks") is not None:
        if data.get("datasets") is not None or data.get("models") is not None:
            raise ConfigError("give either 'tasks' or 'datasets'/'models' in a sweep spec, "
                              "not both")
        for i, t in enumerate(_as_list(data["tasks"], "tasks")):
            t = _check_keys(t, TASK_KEYS, f"tasks[{i}]")
            if "dataset" not in t:
                raise ConfigError(f"tasks[{i}] needs a 'dataset'")
            partial = {k: v for k, v in t.items() if k not in ("name", "validation")}
            name = str(t.get("name") or t["dataset"])
            tasks.append((name, partial))
            if t.get("validation") is not None:
                f = t["validation"]
                if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
                    raise ConfigError(f"tasks[{i}].validation must be a fraction in (0, 1), "
                                      f"got {f!r}")
                twin = _merge(partial, {"data_options": {"validation": float(f)}})
                tasks.append((name + VALIDATION_SUFFIX, twin))
        return tasks
    datasets = [_named(d, DATASET_KEYS, f"datasets[{i}]")
                for i, d in enumerate(_as_list(data.get("datasets"), "datasets"))]
    models = [_named(m, MODEL_KEYS, f"models[{i}]")
              for i, m in enumerate(_as_list(data.get("models"), "models"))]
    if not datasets and not models:
        return []
    datasets = datasets or [{"name": RunConfig().dataset}]
    models = models or [{"name": RunConfig().model}]
    for d, m in itertools.product(datasets, models):
        partial: dict[str, Any] = {"dataset": d["name"], "model": m["name"]}
        if d.get("options"):
            partial["data_options"] = d["options"]
        if d.get("data_dir"):
            partial["data_dir"] = d["data_dir"]
        if m.get("options"):
            partial["model_options"] = m["options"]
        label = Path(d["name"]).stem if len(models) == 1 else f"{Path(d['name']).stem}/{m['name']}"
        tasks.append((label, partial))
    return tasks


def _validate_names(cfg: RunConfig, where: str) -> None:
    from prunelab.data import DATASETS, _looks_like_path
    from prunelab.methods import list_methods, method_options
    from prunelab.models import MODELS

    if cfg.dataset not in DATASETS and not _looks_like_path(cfg.dataset):
        raise ConfigError(f"{where}: {UnknownNameError('dataset', cfg.dataset, DATASETS)}")
    if cfg.model not in MODELS:
        raise ConfigError(f"{where}: {UnknownNameError('model', cfg.model, MODELS)}")
    if cfg.method not in list_methods():
        raise ConfigError(f"{where}: {UnknownNameError('method', cfg.method, list_methods())}")
    valid = method_options(cfg.method)
    unknown = sorted(set(cfg.method_options) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: method '{cfg.method}' has no option {', '.join(unknown)}; "
                          f"valid: {', '.join(valid) or 'none'}")
    # option types are checked when the spec is loaded, not when the run starts
    from prunelab.methods import METHODS
    from prunelab.methods.lottery import IMPConfig
    from prunelab.typecheck import check_call, check_fields

    try:
        cls = IMPConfig if cfg.method == "imp" else METHODS[cfg.method]
        check_fields(cls, cfg.method_options, f"method '{cfg.method}' option ")
        check_call(MODELS[cfg.model], cfg.model_options, f"model '{cfg.model}' option ")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _build_config(partial: dict[str, Any], where: str) -> RunConfig:
    try:
        cfg = config_from_dict(_expand_vars(partial))
    except TypeError as exc:  # a wrongly typed nested value (e.g. train: 3)
        raise ConfigError(f"{where}: {exc}") from None
    except PrunelabError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    _validate_names(cfg, where)
    return cfg


def _sparsity_options(method: str, options: dict[str, Any], s: float) -> dict[str, Any]:
    """Options that make `method` reach target sparsity `s`."""
    out = dict(options)
    if method == "imp":
        rounds = int(out.get("rounds", 5))
        check_range("methods.imp.options.rounds", rounds, 1)
        out["rounds"] = rounds
        out["rate"] = 1.0 - (1.0 - s) ** (1.0 / rounds)
    else:
        out["sparsity"] = s
    return out


def _takes_sparsity(method: str, options: dict[str, Any]) -> bool:
    from prunelab.methods import method_options

    if method == "imp":
        return "rate" not in options
    return "sparsity" in method_options(method) and "sparsity" not in options


def spec_from_dict(data: Any, *, default_name: str = "sweep") -> SweepSpec:
    """Expand a sweep spec (a dict as read from YAML) into its cells, deduplicated by hash."""
    from prunelab.methods import list_methods

    data = _check_keys(data, TOP_KEYS, "the sweep spec")
    executor = data.get("executor", "local")
    if executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}; got '{executor}'")
    for key in ("workers", "threads"):
        if data.get(key) is not None:
            if isinstance(data[key], bool) or not isinstance(data[key], int):
                raise ConfigError(f"{key} must be an integer >= 1, got {data[key]!r}")
            check_range(key, data[key], 1)
    base = data.get("base") or {}
    _check_keys(base, [k for k in RUN_KEYS if k not in ("task", "label")], "base")
    seeds = _as_list(data.get("seeds", [0]), "seeds")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int):
            raise ConfigError(f"seeds must be integers, got {s!r}")
    sparsities = _check_sparsity_list(_as_list(data.get("sparsities"), "sparsities"),
                                      "sparsities")
    cells: list[Cell] = []
    tasks = _tasks(data)
    methods = [_named(m, METHOD_KEYS, f"methods[{i}]")
               for i, m in enumerate(_as_list(data.get("methods"), "methods"))]
    if tasks and not methods:
        raise ConfigError(f"the sweep spec has tasks but no 'methods'; valid methods: "
                          f"{', '.join(list_methods())}")
    if methods and not tasks:
        tasks = [(Path(base.get("dataset", RunConfig().dataset)).stem, {})]
    for (task, partial), (mi, m) in itertools.product(tasks, enumerate(methods)):
        where = f"methods[{mi}] ({m['name']}) on task '{task}'"
        grid_keys = list((m.get("grid") or {}).keys())
        own = m.get("sparsities")
        m_sparsities = (sparsities if own is None else
                        _check_sparsity_list(_as_list(own, f"methods[{mi}].sparsities"),
                                             f"methods[{mi}].sparsities"))
        for options in _method_grid(m, f"methods[{mi}]"):
            label = _label(m, options, grid_keys)
            if m["name"] in list_methods() and _takes_sparsity(m["name"], options) \
                    and m_sparsities:
                variants = [(s, _sparsity_options(m["name"], options, s)) for s in m_sparsities]
            else:
                variants = [(options.get("sparsity"), options)]
            for (target, opts), seed in itertools.product(variants, seeds):
                cfg_dict = _merge(base, partial)
                cfg_dict = _merge(cfg_dict, {"method": m["name"], "method_options": opts,
                                             "train": {"seed": seed}})
                cfg = _build_config(cfg_dict, where)
                cells.append(Cell(cfg, task, label, target, seed))
    for i, r in enumerate(_as_list(data.get("runs"), "runs")):
        r = _check_keys(r, RUN_KEYS, f"runs[{i}]")
        partial = {k: v for k, v in r.items() if k not in ("task", "label")}
        cfg = _build_config(_merge(base, partial), f"runs[{i}]")
        sp = cfg.method_options.get("sparsity")
        cells.append(Cell(cfg, str(r.get("task") or Path(cfg.dataset).stem),
                          str(r.get("label") or cfg.method), sp, cfg.train.seed))
    if not cells:
        raise ConfigError("the sweep spec has no runs: give 'methods' (with 'tasks' or "
                          "'datasets'/'models') or an explicit 'runs' list")
    unique: dict[str, Cell] = {}
    for c in cells:
        unique.setdefault(c.config_hash, c)
    return SweepSpec(
        name=str(data.get("name") or default_name), cells=list(unique.values()),
        description=str(data.get("description") or ""), output=data.get("output"),
        executor=executor, workers=data.get("workers"), threads=data.get("threads"),
        ray_address=data.get("ray_address"), duplicates=len(cells) - len(unique), raw=data,
    )


def select_tasks(spec: SweepSpec, tasks: Iterable[str] | None) -> SweepSpec:
    """The spec restricted to some of its tasks (unknown names list the valid ones)."""
    if not tasks:
        return spec
    valid = list(dict.fromkeys(c.task for c in spec.cells))
    for t in tasks:
        if t not in valid:
            raise UnknownNameError("task", t, valid)
    keep = set(tasks)
    return dataclasses.replace(spec, cells=[c for c in spec.cells if c.task in keep])


# ----------------------------------------------------------------------------- one run


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, PrunelabError):
        return " ".join(str(exc).split())
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}{where}"


_SWEEP_HINT = "run the same sweep again to continue (it resumes this run from there)"


def execute_cell(config: dict[str, Any], run_dir: str, threads: int = 1) -> dict[str, Any]:
    """Run one cell into `run_dir` (in a worker) and return its metrics or its error.

    Never raises for a failed run: the error comes back as one line so the sweep goes on."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
    start = time.perf_counter()
    try:
        cfg = config_from_dict(config)
        if cfg.method == "imp":
            from prunelab.methods.lottery import run_imp

            run_imp(cfg, run_dir, progress=False, resume_hint=_SWEEP_HINT)
        else:
            from prunelab.train import run

            run(cfg, run_dir, progress=False, resume_hint=_SWEEP_HINT)
        metrics = metrics_from_run_dir(run_dir)
    except Exception as exc:  # reported per run; the sweep continues
        return {"ok": False, "error": _one_line(exc), "wall_seconds": time.perf_counter() - start,
                "machine": machine_info()}
    return {"ok": True, "metrics": metrics, "wall_seconds": time.perf_counter() - start,
            "machine": machine_info()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - exists, owned by someone else (pid reused)
        return False
    return True


def _watch_parent(parent: int) -> None:
    # Under forkserver the worker's parent is the server (which exits when the sweep does),
    # not the sweep: watch both the parent we started under and the sweep's pid.
    start_parent = os.getppid()
    while True:
        if os.getppid() != start_parent or not _alive(parent):
            os._exit(1)  # the sweep died: stop rather than finish a run nobody will record
        time.sleep(0.5)


def _worker_init(threads: int, parent: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


# ----------------------------------------------------------------------------- executors

Done = Callable[[Cell, dict[str, Any]], None]


POOL_CONTEXTS = ("spawn", "forkserver", "fork")
WORKER_PRELOAD = ["torch", "prunelab.train", "prunelab.methods", "prunelab.methods.lottery",
                  "prunelab.data", "prunelab.models"]


def available_cores() -> int:
    """Cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _run_serial(cells: list[Cell], out: Path, threads: int, on_start, on_done: Done) -> None:
    from prunelab.threads import torch_threads

    with torch_threads(threads):
        for c in cells:
            on_start(c)
            on_done(c, execute_cell(c.config.to_dict(), str(c.run_dir(out)), threads))


def _run_pool(cells: list[Cell], out: Path, workers: int, threads: int, on_start,
              on_done: Done, context: str) -> None:
    """A process pool with at most `workers` runs in flight, so 'running' means running."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    queue = list(cells)
    if context not in mp.get_all_start_methods():  # e.g. forkserver/fork on Windows
        context = "spawn"
    ctx = mp.get_context(context)
    if context == "forkserver":
        # The server imports these once; each worker is a cheap fork of it, instead of
        # paying torch's and prunelab's imports per worker as spawn does.
        ctx.set_forkserver_preload(WORKER_PRELOAD)

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                   initializer=_worker_init, initargs=(threads, os.getpid()))

    pool = new_pool()
    inflight: dict[Any, Cell] = {}
    try:
        while queue or inflight:
            while queue and len(inflight) < workers:
                c = queue.pop(0)
                on_start(c)
                inflight[pool.submit(execute_cell, c.config.to_dict(), str(c.run_dir(out)),
                                     threads)] = c
            finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            broken = False
            for fut in finished:
                c = inflight.pop(fut)
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    broken = True
                    result = {"ok": False, "error": "the worker process died (killed or out of "
                              "memory)"}
                on_done(c, result)
            if broken:
                for c in list(inflight.values()):
                    on_done(c, {"ok": False, "error": "the worker process died (killed or "
                                "out of memory)"})
                inflight.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                pool = new_pool()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _parse_address(address: str) -> tuple[str, int] | None:
    """host and port of a Ray address ('host:port' or 'ray://host:port'); None for 'auto'."""
    if address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep:
        host, port = rest, "6379"
    try:
        return host, int(port)
    except ValueError:
        raise ConfigError(f"--address must be HOST:PORT or ray://HOST:PORT, got '{address}'") \
            from None


def probe_address(address: str, timeout: float = RAY_TIMEOUT) -> None:
    """Fail with one line unless something listens at the Ray address within `timeout`."""
    import socket

    hostport = _parse_address(address)
    if hostport is None:
        return
    try:
        socket.create_connection(hostport, timeout=min(timeout, 5.0)).close()
    except OSError as exc:
        raise ConfigError(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); check "
            "--address (HOST:PORT of the head node, default port 6379) or use "
            "--executor local") from None


_RAY_PROBE = "import sys, ray; ray.init(address=sys.argv[1], log_to_driver=False); ray.shutdown()"


def connect_ray(address: str | None, *, num_cpus: int | None = None,
                timeout: float = RAY_TIMEOUT) -> tuple[Any, bool]:
    """Connect to the Ray cluster at `address` (or start a local one when None).

    Returns (ray module, whether this call started or connected Ray). ray.init on an address
    that answers but is no Ray head retries for minutes, so an address is first tried from a
    child process killed after `timeout` seconds: the sweep fails with one line, never hangs."""
    import logging
    import subprocess

    try:
        import ray
    except ImportError:
        raise ConfigError("executor 'ray' needs the ray package (pip install 'prunelab[ray]'); "
                          "or use --executor local") from None
    if ray.is_initialized():
        return ray, False
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        probe_address(address, timeout)
        try:
            proc = subprocess.run([sys.executable, "-c", _RAY_PROBE, address],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ConfigError(f"the Ray cluster at {address} did not answer within {timeout:g} "
                              "s (is it a Ray head node?); raise --ray-timeout or use "
                              "--executor local") from None
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise ConfigError(f"cannot connect to the Ray cluster at {address}: {last}")
        kwargs["address"] = address
    else:
        kwargs.update(num_cpus=num_cpus, include_dashboard=False)
    try:
        ray.init(**kwargs)
    except Exception as exc:  # one line instead of Ray's traceback
        raise ConfigError(f"cannot start Ray at {address or 'a local cluster'}: "
                          f"{_one_line(exc)}") from None
    return ray, True


def _run_ray(cells: list[Cell], out: Path, workers: int | None, threads: int,
             address: str | None, on_start, on_done: Done, timeout: float) -> None:
    # a local Ray gets exactly the CPUs the runs ask for (each run reserves `threads`)
    ray, started = connect_ray(address, num_cpus=None if workers is None else workers * threads,
                               timeout=timeout)
    try:
        remote = ray.remote(num_cpus=threads, max_retries=0)(execute_cell)
        if workers is None:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        queue = list(cells)
        inflight: dict[Any, Cell] = {}
        while queue or inflight:
            while queue and len(inflight) < workers:
                c = queue.pop(0)
                on_start(c)
                inflight[remote.remote(c.config.to_dict(), str(c.run_dir(out)), threads)] = c
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                c = inflight.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # a worker crash surfaces here
                    result = {"ok": False, "error": f"Ray task failed: {_one_line(exc)}"}
                on_done(c, result)
    finally:
        if started:
            ray.shutdown()


# ----------------------------------------------------------------------------- sweep


@dataclass
class SweepResult:
    """What a sweep did: where, how many runs per outcome, the store rows."""

    out: Path
    db: Path
    total: int
    skipped: int  # already done before this invocation
    recovered: int  # finished run directories imported without re-running
    executed: list[str]  # config hashes run now
    failed: list[str]
    rows: list[dict[str, Any]]
    seconds: float


class _SweepLock:
    """An flock on OUT/.sweep.lock: one sweep per output directory; released if killed."""

    def __init__(self, out: Path):
        self.path = out / ".sweep.lock"

    def __enter__(self) -> _SweepLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.seek(0)
            pid = self.fh.read().strip() or "?"
            self.fh.close()
            raise ConfigError(f"another sweep (pid {pid}) is running in {self.path.parent}; "
                              "wait for it or give another --out") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(str(os.getpid()))
        self.fh.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.fh.close()


def _store_for(out: Path, spec: SweepSpec, overwrite: bool) -> Store:
    """The sweep's results store; a folder holding a different spec's sweep is refused (its
    results would mix with this one's) unless `overwrite`, which starts the folder afresh."""
    recorded = out / "sweep.yaml"
    if recorded.is_file():
        try:
            previous = yaml.safe_load(recorded.read_text())
        except yaml.YAMLError:
            previous = None
        if previous != spec.raw:
            if not overwrite:
                raise ConfigError(f"{out} holds another sweep (its sweep.yaml differs from this "
                                  "spec); give --overwrite to replace its results, or another "
                                  "--out")
            for name in (DB_NAME, "runs", "sweep.yaml"):
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
    return Store(out / DB_NAME)


def output_dir(spec: SweepSpec, out: str | Path | None = None) -> Path:
    """Where a sweep writes: --out, else the spec's `output`, else runs/sweeps/NAME."""
    return Path(out or spec.output or Path("runs") / "sweeps" / spec.name)


def run_sweep(
    spec: SweepSpec,
    out: str | Path | None = None,
    *,
    executor: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    address: str | None = None,
    retry_failed: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    context: str = "forkserver",
    ray_timeout: float = RAY_TIMEOUT,
    overwrite: bool = False,
) -> SweepResult:
    """Run (or resume) every cell of `spec` into `out` and record each in OUT/results.db.

    workers: parallel runs (default one per core; 1 runs in this process); threads: torch
    threads per run (default cores // workers, at least 1); context: how the local pool
    starts workers (forkserver by default: torch and prunelab are imported once in the
    server and each worker is a fork of it; spawn imports them per worker; fork is cheapest
    but unsafe once this process has used CUDA or a multi-threaded OpenMP pool). A folder that
    holds another spec's sweep is refused unless `overwrite`, which removes its results."""
    start = time.perf_counter()
    executor = executor or spec.executor
    if executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}; got '{executor}'")
    if context not in POOL_CONTEXTS:
        raise ConfigError(f"context must be one of {', '.join(POOL_CONTEXTS)}; got '{context}'")
    address = address or spec.ray_address
    check_range("ray_timeout", ray_timeout, 0.0, low_inclusive=False)
    workers = spec.workers if workers is None else workers
    if workers is not None:
        check_range("workers", workers, 1)
    cores = available_cores()
    if executor == "local" and workers is None:
        workers = cores
    threads = spec.threads if threads is None else threads
    if threads is None:
        threads = max(1, cores // (workers or cores))
    check_range("threads", threads, 1)
    log = log or (lambda s: None)
    out = output_dir(spec, out)
    _preflight(spec.cells)
    with _SweepLock(out), _store_for(out, spec, overwrite) as store:
        atomic.write_text(out / "sweep.yaml", yaml.safe_dump(spec.raw, sort_keys=False))
        store.add_runs(c.record(spec.name, out) for c in spec.cells)
        _clean_partials(out / "runs")
        store.reset(("running",))  # killed mid-way by an earlier sweep: run again
        if retry_failed:
            store.reset(("failed",))
        status = {r["config_hash"]: r["status"] for r in store.rows(flat=False)}
        skipped = sum(status[c.config_hash] == "done" for c in spec.cells)
        recovered = _recover(store, spec.cells, status, out)
        todo = [c for c in spec.cells if status[c.config_hash] == "pending"]
        n_failed_before = sum(status[c.config_hash] == "failed" for c in spec.cells)
        if n_failed_before:
            log(f"{n_failed_before} run(s) failed before and are not retried "
                "(--retry-failed runs them again)")
        executed: list[str] = []
        failed: list[str] = []
        bar = _bar(len(spec.cells), len(spec.cells) - len(todo), spec.name, progress)

        def on_start(c: Cell) -> None:
            store.mark_running(c.config_hash)

        def on_done(c: Cell, result: dict[str, Any]) -> None:
            h = c.config_hash
            if result.get("ok"):
                store.mark_done(h, result["metrics"], wall_seconds=result.get("wall_seconds"),
                                machine=result.get("machine"))
                executed.append(h)
                msg = (f"done {c.config.run_name()} test acc "
                       f"{result['metrics'].get('test_accuracy', float('nan')):.4f} "
                       f"({result.get('wall_seconds', 0):.1f} s)")
            else:
                store.mark_failed(h, result["error"], wall_seconds=result.get("wall_seconds"))
                failed.append(h)
                msg = f"FAILED {c.config.run_name()}: {result['error']}"
            if bar is not None:
                bar.update(1)
                bar.set_postfix(done=len(executed), failed=len(failed))
                if not result.get("ok"):
                    bar.write(msg)
            else:
                log(f"[{len(spec.cells) - len(todo) + len(executed) + len(failed)}/"
                    f"{len(spec.cells)}] {msg}")

        if skipped or recovered:
            log(f"resuming: {skipped} run(s) already done, {recovered} recovered from run "
                f"directories, {len(todo)} to run")
        try:
            if not todo:
                pass
            elif executor == "ray":
                _run_ray(todo, out, workers, threads, address, on_start, on_done, ray_timeout)
            elif workers == 1 or len(todo) == 1:
                _run_serial(todo, out, threads, on_start, on_done)
            else:
                _run_pool(todo, out, min(workers, len(todo)), threads, on_start, on_done,
                          context)
        except BaseException:
            # Interrupted: runs in flight go back to pending now (a later resume re-runs them).
            store.reset(("running",))
            raise
        finally:
            if bar is not None:
                bar.close()
        wanted = {c.config_hash for c in spec.cells}
        rows = [r for r in store.rows() if r["config_hash"] in wanted]
    return SweepResult(out, out / DB_NAME, len(spec.cells), skipped, recovered, executed,
                       failed, rows, time.perf_counter() - start)


def _bar(total: int, initial: int, name: str, progress: bool | None):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=f"sweep {name}", unit="run",
                dynamic_ncols=True)


def _clean_partials(runs: Path) -> None:
    """Remove staging directories with random names left by runs of older versions killed
    mid-way; a run's own staging folder (`.NAME.partial`, with its resumable checkpoint) is
    left for the run to continue from when its cell runs again."""
    if runs.is_dir():
        for p in runs.glob(".*.partial-*"):
            shutil.rmtree(p, ignore_errors=True)


def _recover(store: Store, cells: list[Cell], status: dict[str, str], out: Path) -> int:
    """Import pending runs whose directory is complete (finished, then the sweep died)."""
    n = 0
    for c in cells:
        h = c.config_hash
        run_dir = c.run_dir(out)
        if status[h] != "pending" or not (run_dir / "results.json").is_file():
            continue
        try:
            metrics = metrics_from_run_dir(run_dir)
        except PrunelabError:
            shutil.rmtree(run_dir, ignore_errors=True)  # not a complete run: run it again
            continue
        store.mark_done(h, metrics, event="recovered")
        status[h] = "done"
        n += 1
    return n


def _preflight(cells: list[Cell]) -> None:
    """Load each dataset that needs files once, so a missing data directory is one clear
    line before anything runs rather than a failure in every run."""
    from prunelab.data import BUILT_IN, load_dataset

    seen = set()
    for c in cells:
        cfg = c.config
        key = (cfg.dataset, cfg.data_dir)
        if cfg.dataset in BUILT_IN or key in seen:
            continue
        seen.add(key)
        try:
            load_dataset(cfg.dataset, data_dir=cfg.data_dir, seed=cfg.train.seed,
                         **cfg.data_options)
        except PrunelabError as exc:
            raise ConfigError(f"task '{c.task}': {exc}") from None


def summary_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished runs aggregated over seeds: task, method label, target sparsity."""
    from prunelab.report import aggregate

    done = [dict(r, sparsity=_nan_none(r.get("sparsity"))) for r in rows
            if r["status"] == "done"]
    return aggregate(done, ["task", "label", "sparsity"],
                     ["test_accuracy", "weight_sparsity", "weights_removed_vs_start",
                      "params_nonzero", "train_seconds"])


def _nan_none(v: Any) -> Any:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else v
