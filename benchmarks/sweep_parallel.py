"""Wall time of a sweep of 8 small runs: local executor with 2 workers vs sequential.

Both sweeps run side by side in one process on the same spec (XOR with 18 irrelevant inputs,
4000 training points, MLP 256-256, dense and gmp x 4 seeds; about 4 s of CPU per run, i.e.
"small"), one torch thread per run, into fresh output directories; the order alternates every
round so neither always runs first. The parallel time includes starting the worker processes
(`--context`, default forkserver as in `prunelab sweep`: the server imports torch and
prunelab once, about 1.8 s of CPU, and forks the workers; spawn pays that import in every
worker). Reported: median over rounds of

    parallel / sequential     target <= 0.60

the load average during each measurement (the machine may be shared), and the cores each
sweep actually got (CPU seconds of the process and its workers / wall seconds; only with
spawn or fork, since forkserver's workers are not this process's children): on a shared
machine with the kernel's per-session fair share (sched_autogroup) a second worker process
gets no extra CPU while other sessions keep the cores busy, and the ratio cannot drop. Both
sweeps must give identical metrics (same seeds), which is checked.

Run: .venv/bin/python benchmarks/sweep_parallel.py [--rounds 2] [--epochs 50] [--quick]
Writes benchmarks/results/sweep_parallel.json.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from benchcommon import machine_info, median, verdict, write_results

from prunelab.sweep import POOL_CONTEXTS, run_sweep, spec_from_dict

NAME = "sweep_parallel"
TARGET = 0.60


def spec(epochs: int) -> dict:
    return {
        "name": "bench",
        "base": {"train": {"epochs": epochs, "batch_size": 50, "optimizer": "adam", "lr": 3e-3,
                           "eval_train": False, "checkpoint_epochs": False}},
        "tasks": [{"name": "xor", "dataset": "xor", "model": "mlp",
                   "model_options": {"widths": [256, 256]},
                   "data_options": {"n_irrelevant": 18, "n_train": 4000, "n_test": 2000}}],
        "methods": ["dense", {"name": "gmp", "options": {"frequency": 20}}],
        "sparsities": [0.9],
        "seeds": [0, 1, 2, 3],
    }


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the pool's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(workers: int, sweep, root: Path, context: str
          ) -> tuple[float, dict, tuple[float, float], float]:
    out = Path(tempfile.mkdtemp(prefix=f"w{workers}-", dir=root))
    load0 = os.getloadavg()[0]
    cpu0 = _cpu()
    start = time.perf_counter()
    result = run_sweep(sweep, out, workers=workers, threads=1, progress=False,
                       context=context)
    seconds = time.perf_counter() - start
    cpu = _cpu() - cpu0
    load1 = os.getloadavg()[0]
    if result.failed or len(result.executed) != len(sweep.cells):
        sys.exit(f"sweep with {workers} worker(s) did not finish every run")
    metrics = {r["config_hash"]: r["test_accuracy"] for r in result.rows}
    shutil.rmtree(out, ignore_errors=True)
    return seconds, metrics, (load0, load1), cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=50, help="epochs per run (run size)")
    ap.add_argument("--quick", action="store_true", help="1 round, 10 epochs (misses the "
                    "target: runs that short are dominated by worker start-up)")
    ap.add_argument("--context", default="forkserver", choices=POOL_CONTEXTS,
                    help="how the pool starts its workers")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.epochs = 1, 10
    torch.set_num_threads(1)
    sweep = spec_from_dict(spec(args.epochs))
    assert len(sweep.cells) == 8
    root = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    rounds = []
    try:
        for r in range(args.rounds):
            order = (1, 2) if r % 2 == 0 else (2, 1)
            got = {w: timed(w, sweep, root, args.context) for w in order}
            same = got[1][1] == got[2][1]
            row = {"round": r, "order": list(order), "sequential_s": got[1][0],
                   "parallel_s": got[2][0], "ratio": got[2][0] / got[1][0],
                   "load_sequential": got[1][2], "load_parallel": got[2][2],
                   "identical_metrics": same,
                   # CPU seconds used / wall seconds: how many cores the sweep actually got
                   "cpu_sequential_s": got[1][3], "cpu_parallel_s": got[2][3],
                   "cores_used_sequential": got[1][3] / got[1][0],
                   "cores_used_parallel": got[2][3] / got[2][0]}
            if args.context == "forkserver":  # the workers' CPU is not ours to count
                row["cpu_parallel_s"] = row["cores_used_parallel"] = None
            par_cpu = ("n/a" if row["cpu_parallel_s"] is None
                       else f"{row['cpu_parallel_s']:.1f}, cores used "
                            f"{row['cores_used_parallel']:.2f}")
            rounds.append(row)
            print(f"round {r}: sequential {row['sequential_s']:.1f} s, 2 workers "
                  f"{row['parallel_s']:.1f} s, ratio {row['ratio']:.3f}; load avg "
                  f"{got[1][2][0]:.1f}->{got[1][2][1]:.1f} / {got[2][2][0]:.1f}->"
                  f"{got[2][2][1]:.1f}; identical metrics: {same}; CPU s sequential "
                  f"{got[1][3]:.1f} (cores used {row['cores_used_sequential']:.2f}), "
                  f"2 workers {par_cpu}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratio = median([r["ratio"] for r in rounds])
    ok = ratio <= TARGET and all(r["identical_metrics"] for r in rounds)
    payload = {
        "machine": machine_info(),
        "settings": {"runs": 8, "epochs": args.epochs, "rounds": args.rounds, "workers": 2,
                     "threads_per_run": 1, "context": args.context},
        "rounds": rounds,
        "median_ratio": ratio,
        "target": TARGET,
        "pass": ok,
    }
    path = write_results(NAME, payload)
    print(f"parallel / sequential (median of {len(rounds)}): {ratio:.3f} (target <= {TARGET}) "
          f"{verdict(ok)}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
