"""Cost of mean-replacement saliency (MRS) for every unit of every layer, relative to one
training step, side by side on the same batch (batch 128, CPU).

For conv-small and LeNet-300-100 three things are timed, interleaved over `--rounds` rounds
(order rotating), each the median of `--reps` repetitions:

    step       one Adam training step (forward, backward, optimizer step)
    mrs        prunelab.scores.unit_statistics: MRS, removal saliency and means of all units
               from one forward and one backward pass (hooks)
    step_hooks one training step with the `units` method's collector active (the scores
               accumulated during training itself)

and the ratios mrs / step (target <= 3) and step_hooks / step (the in-training overhead).

Run: .venv/bin/python benchmarks/mrs_cost.py [--rounds 15 --reps 10 --threads 1] [--quick]
Writes benchmarks/results/mrs_cost.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from benchcommon import machine_info, median, verdict, write_results
from torch.nn import functional as F

from prunelab.methods.base import TrainContext
from prunelab.methods.units import UnitPruning
from prunelab.models import build_model
from prunelab.scores import unit_statistics

NAME = "mrs_cost"
BATCH = 128
TARGET = 3.0


def _timer(fn: Callable[[], None], reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def bench_model(name: str, rounds: int, reps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (BATCH,), generator=gen)
    plain = build_model(name, (1, 28, 28), 10)
    opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    hooked = build_model(name, (1, 28, 28), 10)
    hooked.load_state_dict(plain.state_dict())
    hopt = torch.optim.Adam(hooked.parameters(), lr=1e-3)
    method = UnitPruning(fraction=0.2, rounds=1, score_steps=10**9)
    method.attach(TrainContext(hooked, hopt, steps_per_epoch=10**9, total_steps=10**9,
                               epochs=1))
    assert method.collector.active

    def step(model=plain, o=opt) -> None:
        model.train()
        loss = F.cross_entropy(model(x), y)
        o.zero_grad(set_to_none=True)
        loss.backward()
        o.step()

    def step_hooks() -> None:
        step(hooked, hopt)

    def mrs() -> None:
        unit_statistics(plain, (x, y))

    fns = {"step": step, "mrs": mrs, "step_hooks": step_hooks}
    for fn in fns.values():
        _timer(fn, 3)
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            times[n].append(_timer(fns[n], reps))
    med = {k: median(v) for k, v in times.items()}
    ratio = med["mrs"] / med["step"]
    return {
        "model": name,
        "median_ms": {k: v * 1e3 for k, v in med.items()},
        "mrs_over_step": ratio,
        "paired_mrs_over_step": median([a / b for a, b in zip(times["mrs"], times["step"])]),
        "step_hooks_over_step": med["step_hooks"] / med["step"],
        "units_scored": sum(v.numel() for v in unit_statistics(plain, (x, y)).mrs.values()),
        "pass": ratio <= TARGET,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1)")
    ap.add_argument("--quick", action="store_true", help="4 rounds of 3 reps (smoke test)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.reps = 4, 3
    torch.set_num_threads(args.threads)
    rows = []
    for name in ("conv-small", "lenet-300-100"):
        row = bench_model(name, args.rounds, args.reps)
        rows.append(row)
        ms = row["median_ms"]
        print(f"{name:<14} step {ms['step']:7.2f} ms  MRS (all {row['units_scored']} units) "
              f"{ms['mrs']:7.2f} ms  ratio {row['mrs_over_step']:.2f} (paired "
              f"{row['paired_mrs_over_step']:.2f})  target <= {TARGET}  {verdict(row['pass'])}"
              f"  | step with collector {row['step_hooks_over_step']:.2f}x a plain step")
    res = {
        "benchmark": NAME,
        "command": "python benchmarks/mrs_cost.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "setup": {"batch_size": BATCH, "rounds": args.rounds, "reps": args.reps,
                  "threads": args.threads, "optimizer": "Adam lr 1e-3",
                  "data": "synthetic N(0,1) 28x28 inputs, random labels"},
        "models": rows,
        "target_mrs_over_step": TARGET,
        "pass": all(r["pass"] for r in rows),
    }
    print(f"wrote {write_results(NAME, res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
