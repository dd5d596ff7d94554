"""Shared helpers of the benchmark scripts: machine description, JSON output, side-by-side
timing in alternating rounds and paired training runs."""

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
from typing import Any, TypeVar

import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

T = TypeVar("T")


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


WALL: dict[str, Callable[[], float]] = {"wall": time.perf_counter}


def alternating_times(ways: dict[Any, Callable[[], Any]], rounds: int, calls: int,
                      warmup: int = 0, clocks: dict[str, Callable[[], float]] = WALL
                      ) -> dict[str, dict[Any, list[float]]]:
    """Seconds per call of each of `ways` on each of `clocks` ({name: timer}, e.g. wall clock
    and `time.thread_time`), one figure per round: `calls` timed calls, the ways taking turns
    in an order that reverses every round (so a slow spell of the machine hits each alike),
    after `warmup` untimed calls of each before the first round."""
    names = list(ways)
    for name in names:
        for _ in range(warmup):
            ways[name]()
    times: dict[str, dict[Any, list[float]]] = {c: {name: [] for name in names} for c in clocks}
    timers = list(clocks.items())
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            fn = ways[name]
            start = [timer() for _, timer in timers]
            for _ in range(calls):
                fn()
            stop = [timer() for _, timer in timers]
            for (clock, _), a, b in zip(timers, start, stop):
                times[clock][name].append((b - a) / calls)
    return times


def alternating_us(ways: dict[Any, Callable[[], Any]], rounds: int, calls: int,
                   warmup: int = 0) -> dict[Any, list[float]]:
    """Wall-clock microseconds per call of each of `ways`, one figure per round
    (`alternating_times`)."""
    wall = alternating_times(ways, rounds, calls, warmup)["wall"]
    return {name: [t * 1e6 for t in ts] for name, ts in wall.items()}


def speedup(slow: list[float], fast: list[float], slow_name: str,
            fast_name: str) -> dict[str, float]:
    """Two ways' per-round seconds, timed side by side: each one's median in milliseconds,
    the ratio of the medians (`achieved_speedup`) and the median of the per-round ratios."""
    return {f"median_ms_{slow_name}": median(slow) * 1e3,
            f"median_ms_{fast_name}": median(fast) * 1e3,
            "achieved_speedup": median(slow) / median(fast),
            "paired_speedup": median([a / b for a, b in zip(slow, fast)])}


def median_repeat(runs: list[T], key: Callable[[T], float]) -> T:
    """The run of median rank by `key` among repeated measurements (the upper one of the two
    middle runs of an even count): the repeat a benchmark reports and judges."""
    return sorted(runs, key=key)[len(runs) // 2]


def data_dir() -> str:
    """Where the real data sets are: $PRUNELAB_DATA, else ../shared/data next to the
    repository."""
    return os.environ.get("PRUNELAB_DATA") or str(REPO_ROOT.parent / "shared" / "data")


def timed_training(model: Any, data: Any, cfg: Any, method: Any) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds of this process and test error of one `Trainer` run of
    `model` on `data` with the TrainConfig `cfg` and the pruning `method`."""
    from prunelab.train import Trainer

    start, cpu_start = time.perf_counter(), time.process_time()
    result = Trainer(model, data, cfg, method, progress=False).fit()
    return (time.perf_counter() - start, time.process_time() - cpu_start,
            1.0 - result.final["test_accuracy"])


def paired_training_rounds(rounds: int, labels: tuple[str, str],
                           run: Callable[[str], tuple[float, float, float]]) -> dict[str, Any]:
    """`rounds` rounds of one training run per label, the order reversed every other round;
    `run(label)` returns (wall s, process CPU s, test error) (`timed_training`), printed as
    each run ends. Returns {"seconds", "median_seconds", "cpu_seconds", "median_cpu_seconds"}
    by label, each label's last "test_error" and the "per_round_ratios" second / first."""
    first, second = labels
    times: dict[str, list[float]] = {label: [] for label in labels}
    cpu_times: dict[str, list[float]] = {label: [] for label in labels}
    errors: dict[str, float] = {}
    width = max(map(len, labels))
    for r in range(rounds):
        for label in labels if r % 2 == 0 else labels[::-1]:
            secs, cpu, err = run(label)
            times[label].append(secs)
            cpu_times[label].append(cpu)
            errors[label] = err
            print(f"round {r + 1}: {label:{width}s} {secs:7.2f}s (CPU {cpu:7.2f}s)  test error "
                  f"{100 * err:.2f}%", flush=True)
    return {"seconds": times, "median_seconds": {k: median(v) for k, v in times.items()},
            "cpu_seconds": cpu_times,
            "median_cpu_seconds": {k: median(v) for k, v in cpu_times.items()},
            "test_error": errors,
            "per_round_ratios": [b / a for a, b in zip(times[first], times[second])]}


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
