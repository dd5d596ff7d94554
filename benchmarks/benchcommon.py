"""Shared helpers of the benchmark scripts: machine description and JSON output."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"


def cpu_model() -> str:
    """The `lscpu` model name (falls back to /proc/cpuinfo, then platform)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def write_results(name: str, payload: dict[str, Any], path: str | Path | None = None) -> Path:
    """Write benchmarks/results/NAME.json (or `path`) atomically and return its path."""
    path = Path(path) if path is not None else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def alternating_us(ways: dict[Any, Callable[[], Any]], rounds: int, calls: int,
                   warmup: int = 0) -> dict[Any, list[float]]:
    """Microseconds per call of each of `ways`, one figure per round: `calls` timed calls, the
    ways taking turns in an order that reverses every round (so a slow spell of the machine
    hits each alike), after `warmup` untimed calls of each before the first round."""
    names = list(ways)
    for name in names:
        for _ in range(warmup):
            ways[name]()
    times: dict[Any, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            fn = ways[name]
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    return times


def report_ratio(name: str, times: dict[str, list[float]], per: str, numerator: str,
                 denominator: str, settings: dict[str, Any]) -> Path:
    """Print each way's microseconds per `per` (every round and the median) and the ratio of
    the medians numerator / denominator; write them to results/<name>.json."""
    med = {k: median(v) for k, v in times.items()}
    ratio = med[numerator] / med[denominator]
    width = max(len(k) for k in times)
    for way, ts in times.items():
        print(f"{way:{width}s} us per {per}: {', '.join(f'{t:.0f}' for t in ts)}  "
              f"median {med[way]:.0f}")
    print(f"{numerator} / {denominator}: {ratio:.2f}")
    path = write_results(name, {"machine": machine_info(), "settings": settings,
                                f"us_per_{per}": times, f"median_us_per_{per}": med,
                                f"ratio_{numerator}_over_{denominator}": ratio})
    print(f"wrote {path}")
    return path
