"""Inference speed of a physically shrunk network vs the same network masked (dense shapes,
pruned units' weights zero), batch 256 on the CPU, against the ideal speedup given by the
FLOP ratio (2 x MACs of the Linear/Conv layers, `prunelab.masks.sparsity_report`).

For each case (conv-small and LeNet-300-100, keeping 50% and 25% of every hidden layer's units)
the masked and the shrunk model run side by side in one process on the same batch: after a
warm-up, `--rounds` interleaved rounds (order alternating) each time `--reps` forward passes
of each; the medians give

    achieved = t_masked / t_shrunk,  ideal = FLOPs_masked / FLOPs_shrunk,
    efficiency = achieved / ideal    target >= 0.70

Run: .venv/bin/python benchmarks/shrink_speedup.py [--rounds 15 --reps 20 --threads 1] [--quick]
Writes benchmarks/results/shrink_speedup.json.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from typing import Any

import torch
from benchcommon import machine_info, median, verdict, write_results
from torch import nn

from prunelab.masks import apply_masks, sparsity_report, unit_masks_to_weight_masks
from prunelab.models import build_model
from prunelab.shrink import shrink, unit_layers

NAME = "shrink_speedup"
BATCH = 256
TARGET = 0.70
CASES = (("conv-small", 0.5), ("conv-small", 0.25), ("lenet-300-100", 0.5),
         ("lenet-300-100", 0.25))


def _keep_masks(model: nn.Module, keep: float) -> dict[str, torch.Tensor]:
    out = {}
    for L in unit_layers(model):
        m = torch.zeros(L.units, dtype=torch.bool)
        m[torch.randperm(L.units, generator=torch.Generator().manual_seed(0))[
            : max(1, round(keep * L.units))]] = True
        out[L.name] = m
    return out


@torch.no_grad()
def _time(model: nn.Module, x: torch.Tensor, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        model(x)
    return (time.perf_counter() - start) / reps


def bench_case(name: str, keep: float, rounds: int, reps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    shape = (1, 28, 28)
    base = build_model(name, shape, 10).eval()
    um = _keep_masks(base, keep)
    masked = copy.deepcopy(base)
    apply_masks(masked, unit_masks_to_weight_masks(masked, um))
    small = shrink(masked, um).eval()
    x = torch.randn(BATCH, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        err = float((small(x) - masked(x)).abs().max())
    fl_masked = sparsity_report(masked, None, shape)["global"]["flops_dense"]
    fl_small = sparsity_report(small, None, shape)["global"]["flops_dense"]
    for _ in range(3):
        _time(masked, x, reps)
        _time(small, x, reps)
    tm, ts = [], []
    for r in range(rounds):
        pair = [("masked", masked), ("shrunk", small)]
        for label, m in pair if r % 2 == 0 else pair[::-1]:
            (tm if label == "masked" else ts).append(_time(m, x, reps))
    achieved = median(tm) / median(ts)
    paired = median([a / b for a, b in zip(tm, ts)])
    ideal = fl_masked / fl_small
    return {
        "model": name, "keep_units": keep, "max_abs_output_difference": err,
        "flops_masked": fl_masked, "flops_shrunk": fl_small, "ideal_speedup": ideal,
        "median_ms_masked": median(tm) * 1e3, "median_ms_shrunk": median(ts) * 1e3,
        "achieved_speedup": achieved, "paired_speedup": paired,
        "efficiency": achieved / ideal, "pass": achieved / ideal >= TARGET,
        "params_masked": sum(p.numel() for p in masked.parameters()),
        "params_shrunk": sum(p.numel() for p in small.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=20, help="forward passes per timing (20)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1)")
    ap.add_argument("--quick", action="store_true", help="5 rounds of 5 reps (smoke test)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.reps = 5, 5
    torch.set_num_threads(args.threads)
    rows = []
    for name, keep in CASES:
        row = bench_case(name, keep, args.rounds, args.reps)
        rows.append(row)
        print(f"{name:<14} keep {keep:4.0%}: masked {row['median_ms_masked']:7.2f} ms  shrunk "
              f"{row['median_ms_shrunk']:7.2f} ms  achieved {row['achieved_speedup']:5.2f}x "
              f"(paired {row['paired_speedup']:.2f}x)  ideal {row['ideal_speedup']:5.2f}x  "
              f"efficiency {row['efficiency']:5.0%}  target >= {TARGET:.0%}  "
              f"{verdict(row['pass'])}  (max |diff| {row['max_abs_output_difference']:.1e})")
    res = {
        "benchmark": NAME,
        "command": "python benchmarks/shrink_speedup.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "setup": {"batch_size": BATCH, "rounds": args.rounds, "reps": args.reps,
                  "threads": args.threads, "mode": "inference, torch.no_grad, eval",
                  "units_kept": "random subset of each hidden layer (seed 0)"},
        "cases": rows,
        "target_efficiency": TARGET,
        "pass": all(r["pass"] for r in rows),
    }
    print(f"wrote {write_results(NAME, res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
