"""Cost of one SMGD step (two gradients, the min-norm coefficient, the update, threshold
pruning) against a plain training step, LeNet-5 (avgpool) on MNIST-shaped synthetic data.

Variants, side by side in one process, same initial weights and batches (batch 32):
- plain: forward, CE, backward, torch.optim.SGD step (momentum 0.9), as in the Trainer;
- weighted_sum: the same plus the biobjective penalty (l1 of the dense kernels, L2 of the conv
  kernels) and threshold pruning after the step (`BiobjectiveTraining`), the Trainer's loop;
- smgd_sgd, smgd_adam: `SMGDStepper.step` with momentum SGD / separate Adam moments.
After a warm-up, each variant trains one "epoch" (a fixed list of batches) per round, the order
rotating every round; the median epoch times give the ratios

    smgd_sgd / plain, smgd_adam / plain       target <= 2.2

and the median of the per-round paired ratios is reported as a load-robust second estimate.

Run: .venv/bin/python benchmarks/smgd_step_cost.py [--rounds 9] [--batches 40] [--quick]
Writes benchmarks/results/smgd_step_cost.json.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from benchcommon import machine_info, median, verdict, write_results
from torch.nn import functional as F

from prunelab.methods.base import TrainContext
from prunelab.methods.biobjective import BiobjectiveTraining
from prunelab.models import build_model
from prunelab.multiobjective.smgd import SMGDConfig, SMGDStepper

NAME = "smgd_step_cost"
INPUT_SHAPE = (1, 28, 28)
BATCH = 32
LR = 0.01
TARGET = 2.2
VARIANTS = ("plain", "weighted_sum", "smgd_sgd", "smgd_adam")


def build(seed: int) -> dict[str, Callable[[torch.Tensor, torch.Tensor], None]]:
    """One step function per variant, each with its own copy of the same initial model."""
    torch.manual_seed(seed)
    base = build_model("lenet5-avg", INPUT_SHAPE, 10)
    steps: dict[str, Callable[[torch.Tensor, torch.Tensor], None]] = {}

    plain = copy.deepcopy(base)
    opt_p = torch.optim.SGD(plain.parameters(), lr=LR, momentum=0.9)

    def plain_step(xb, yb):
        loss = F.cross_entropy(plain(xb), yb)
        opt_p.zero_grad(set_to_none=True)
        loss.backward()
        opt_p.step()

    ws = copy.deepcopy(base)
    opt_w = torch.optim.SGD(ws.parameters(), lr=LR, momentum=0.9)
    method = BiobjectiveTraining(weight=0.999)
    method.attach(TrainContext(ws, opt_w, 1, 1, 1))

    def ws_step(xb, yb):
        loss = F.cross_entropy(ws(xb), yb) + method.penalty(ws)
        opt_w.zero_grad(set_to_none=True)
        loss.backward()
        opt_w.step()
        method.after_step(1)

    steps["plain"], steps["weighted_sum"] = plain_step, ws_step
    for variant, lr in (("sgd", LR), ("adam", 1e-3)):
        stepper = SMGDStepper(copy.deepcopy(base), SMGDConfig(optimizer=variant, lr=lr))
        steps[f"smgd_{variant}"] = lambda xb, yb, s=stepper: s.step(xb, yb)
    return steps


def run(rounds: int, n_batches: int, warmup: int, seed: int,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    steps = build(seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n_batches * BATCH, *INPUT_SHAPE, generator=g)
    y = torch.randint(0, 10, (n_batches * BATCH,), generator=g)
    batches = [(x[b * BATCH:(b + 1) * BATCH], y[b * BATCH:(b + 1) * BATCH])
               for b in range(n_batches)]
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}

    def epoch(name: str) -> float:
        start = time.perf_counter()
        for xb, yb in batches:
            steps[name](xb, yb)
        return time.perf_counter() - start

    for _ in range(warmup):
        for v in VARIANTS:
            epoch(v)
    for r in range(rounds):
        k = r % len(VARIANTS)
        for v in VARIANTS[k:] + VARIANTS[:k]:
            times[v].append(epoch(v))
        log(f"round {r + 1}/{rounds}: " + "  ".join(
            f"{v} {times[v][-1] / n_batches * 1e3:.2f}" for v in VARIANTS) + " (ms/step)")
    med = {v: median(times[v]) for v in VARIANTS}
    ratios = {f"{v}/plain": med[v] / med["plain"] for v in VARIANTS[1:]}
    paired = {f"{v}/plain": median([a / b for a, b in zip(times[v], times["plain"])])
              for v in VARIANTS[1:]}
    ok = all(ratios[f"{v}/plain"] <= TARGET for v in ("smgd_sgd", "smgd_adam"))
    return {
        "benchmark": NAME,
        "command": "python benchmarks/smgd_step_cost.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "setup": {"model": "lenet5-avg", "input_shape": list(INPUT_SHAPE), "batch_size": BATCH,
                  "batches_per_epoch": n_batches, "rounds": rounds, "warmup_epochs": warmup,
                  "seed": seed, "data": "synthetic N(0,1) inputs, uniform random labels"},
        "epoch_seconds": times,
        "median_step_ms": {v: med[v] / n_batches * 1e3 for v in VARIANTS},
        "ratios": ratios,
        "paired_ratios": paired,
        "target": f"smgd/plain <= {TARGET}",
        "verdict": verdict(ok),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="3 rounds of 10 batches")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rounds, batches = (3, 10) if args.quick else (args.rounds, args.batches)
    result = run(rounds, batches, args.warmup, args.seed)
    path = write_results(NAME, result)
    for v, ms in result["median_step_ms"].items():
        print(f"{v:13s} {ms:7.2f} ms/step")
    for k, r in result["ratios"].items():
        print(f"{k:20s} {r:5.2f}x (paired {result['paired_ratios'][k]:.2f}x)")
    print(f"{result['verdict']}: {result['target']}; wrote {path}")
    return 0 if result["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
