"""Inference speed of a physically shrunk network vs the same network masked (dense shapes,
pruned units' weights zero), batch 256 on the CPU, against the ideal speedup given by the
FLOP ratio (2 x MACs of the Linear/Conv layers, `prunelab.masks.sparsity_report`).

Cases: conv-small and LeNet-300-100 keeping 50% and 25% of every hidden layer's units, and the
networks `prunelab reproduce dead-units` chose (full run: conv-small 4-7-19, LeNet-300-100
58-21; the units kept are a random subset, which does not change the timing). Each case is
timed twice, as two pairs:
- "plain": the masked and the shrunk model as built (torch's own layers);
- "fast path": each of the two passed separately through
  `prunelab.inference.optimize_for_inference`, which picks per layer the faster of equivalent
  implementations on that model's own activations (strided-maximum pooling or max_pool2d;
  oneDNN or native convolution; conv -> ReLU -> max-pool fused into one packed convolution,
  `PackedConvPool2d`), so both sides get their best configuration.
In each pair the masked and the shrunk model run side by side in one process on the same
batch: after a warm-up, `--rounds` interleaved rounds (order alternating) each time `--reps`
forward passes of each; the medians give

    achieved = t_masked / t_shrunk,  ideal = FLOPs_masked / FLOPs_shrunk,
    efficiency = achieved / ideal    target >= 0.70

Every case is measured `--repeats` times (default 3; the cases take turns, so the repeats are
minutes apart); the repeat with the median fast-path efficiency is reported and judged, and all
repeats' efficiencies are listed.

Run: .venv/bin/python benchmarks/shrink_speedup.py [--rounds 15 --reps 20 --repeats 3
     --threads 1] [--quick]
Writes benchmarks/results/shrink_speedup.json.
"""

from __future__ import annotations

import argparse
import copy
import sys
from functools import partial
from typing import Any

import torch
from benchcommon import (
    alternating_times,
    machine_info,
    median_repeat,
    speedup,
    verdict,
    write_results,
)
from torch import nn

from prunelab.inference import optimize_for_inference
from prunelab.masks import apply_masks, sparsity_report, unit_masks_to_weight_masks
from prunelab.models import build_model
from prunelab.shrink import shrink, unit_layers

NAME = "shrink_speedup"
BATCH = 256
TARGET = 0.70
# keep: a fraction of every hidden layer, or units per hidden layer by name (the widths the
# full dead-units reproduction chose, docs/dead-units.md)
CASES: tuple[tuple[str, float | dict[str, int]], ...] = (
    ("conv-small", 0.5), ("conv-small", 0.25), ("conv-small", {"0": 4, "3": 7, "7": 19}),
    ("lenet-300-100", 0.5), ("lenet-300-100", 0.25), ("lenet-300-100", {"1": 58, "3": 21}))


def _keep_masks(model: nn.Module, keep: float | dict[str, int]) -> dict[str, torch.Tensor]:
    out = {}
    for L in unit_layers(model):
        count = keep[L.name] if isinstance(keep, dict) else max(1, round(keep * L.units))
        m = torch.zeros(L.units, dtype=torch.bool)
        m[torch.randperm(L.units, generator=torch.Generator().manual_seed(0))[:count]] = True
        out[L.name] = m
    return out


def _label(keep: float | dict[str, int]) -> str:
    return "-".join(map(str, keep.values())) if isinstance(keep, dict) else f"{keep:.0%}"


@torch.no_grad()
def _pair_timing(masked: nn.Module, small: nn.Module, x: torch.Tensor, rounds: int,
                 reps: int) -> dict[str, float]:
    t = alternating_times({"masked": partial(masked, x), "shrunk": partial(small, x)}, rounds,
                          reps, warmup=3 * reps)["wall"]
    return speedup(t["masked"], t["shrunk"], "masked", "shrunk")


def bench_case(name: str, keep: float | dict[str, int], rounds: int,
               reps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    shape = (1, 28, 28)
    base = build_model(name, shape, 10).eval()
    um = _keep_masks(base, keep)
    masked = copy.deepcopy(base)
    apply_masks(masked, unit_masks_to_weight_masks(masked, um))
    small = shrink(masked, um).eval()
    x = torch.randn(BATCH, *shape, generator=torch.Generator().manual_seed(1))
    fast_masked, choice_masked = optimize_for_inference(masked, x)
    fast_small, choice_small = optimize_for_inference(small, x)
    with torch.no_grad():
        ref = masked(x)
        err = max(float((m(x) - ref).abs().max()) for m in (small, fast_masked, fast_small))
    fl_masked = sparsity_report(masked, None, shape)["global"]["flops_dense"]
    fl_small = sparsity_report(small, None, shape)["global"]["flops_dense"]
    ideal = fl_masked / fl_small
    row: dict[str, Any] = {
        "model": name, "keep_units": keep if isinstance(keep, dict) else float(keep),
        "widths": _label(keep), "max_abs_output_difference": err,
        "flops_masked": fl_masked, "flops_shrunk": fl_small, "ideal_speedup": ideal,
        "params_masked": sum(p.numel() for p in masked.parameters()),
        "params_shrunk": sum(p.numel() for p in small.parameters()),
        "fast_path_choices": {"masked": choice_masked, "shrunk": choice_small},
    }
    for variant, (a, b) in (("plain", (masked, small)), ("fast", (fast_masked, fast_small))):
        t = _pair_timing(a, b, x, rounds, reps)
        t["efficiency"] = t["achieved_speedup"] / ideal
        t["pass"] = t["efficiency"] >= TARGET
        row[variant] = t
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=20, help="forward passes per timing (20)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="independent measurements of every case, cases interleaved; the "
                         "median one is reported and judged (3)")
    ap.add_argument("--quick", action="store_true", help="1 repeat of 5 rounds of 5 reps")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.reps, args.repeats = 5, 5, 1
    if min(args.rounds, args.reps, args.repeats) < 1:
        ap.error("--rounds, --reps and --repeats must be >= 1")
    torch.set_num_threads(args.threads)
    # each case is rebuilt and re-timed `repeats` times, the cases taking turns, because a
    # case's efficiency moves by +-10 points between runs minutes apart (benchmarks/RESULTS.md)
    measured = [[bench_case(name, keep, args.rounds, args.reps) for name, keep in CASES]
                for _ in range(args.repeats)]
    rows = []
    for i, (name, _) in enumerate(CASES):
        row = median_repeat([m[i] for m in measured], lambda r: r["fast"]["efficiency"])
        row["repeat_efficiencies"] = {v: [m[i][v]["efficiency"] for m in measured]
                                      for v in ("plain", "fast")}
        rows.append(row)
        for variant in ("plain", "fast"):
            t = row[variant]
            spread = ", ".join(f"{e:.0%}" for e in row["repeat_efficiencies"][variant])
            print(f"{name:<14} keep {row['widths']:>8} {variant:<5}: masked "
                  f"{t['median_ms_masked']:6.2f} ms  shrunk {t['median_ms_shrunk']:6.2f} ms  "
                  f"achieved {t['achieved_speedup']:5.2f}x (paired {t['paired_speedup']:.2f}x)  "
                  f"ideal {row['ideal_speedup']:5.2f}x  efficiency {t['efficiency']:5.0%} "
                  f"(repeats {spread})  target >= {TARGET:.0%}  {verdict(t['pass'])}")
        print(f"{'':<14} max |diff| {row['max_abs_output_difference']:.1e}; fast path: "
              f"masked {row['fast_path_choices']['masked']}, shrunk "
              f"{row['fast_path_choices']['shrunk']}")
    res = {
        "benchmark": NAME,
        "command": "python benchmarks/shrink_speedup.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "setup": {"batch_size": BATCH, "rounds": args.rounds, "reps": args.reps,
                  "repeats": args.repeats, "reported": "the median repeat by fast-path efficiency",
                  "threads": args.threads, "mode": "inference, torch.no_grad, eval",
                  "units_kept": "random subset of each hidden layer (seed 0)"},
        "cases": rows,
        "target_efficiency": TARGET,
        "pass_plain": all(r["plain"]["pass"] for r in rows),
        "pass_fast_path": all(r["fast"]["pass"] for r in rows),
    }
    print(f"wrote {write_results(NAME, res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
