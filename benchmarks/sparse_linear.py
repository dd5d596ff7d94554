"""CSR execution of sparse Linear layers on the CPU (`prunelab.sparse_compute`) against the
dense masked computation, batch 256, LeNet-300-100 (784-300-100-10), one torch thread.

Three measurements, side by side in one process, each way timed in alternating rounds (order
reversed every round) after a warm-up, medians reported:

1. crossover: for each LeNet-300-100 layer and sparsity s in a grid, the layer computed dense
   (BLAS on the masked weight) and in CSR (`SparseLinear`), for inference (forward, no
   autograd) and for training (forward + backward; the first layer returns no input
   gradient), each in the data layout it has inside an all-CSR chain (see `layer_times`).
   The crossover is the lowest grid sparsity from which CSR wins at every higher grid point.
2. inference at 98%: the masked dense LeNet-300-100 against `optimize_sparse_inference` of
   it (per-layer choice by measurement), masks uniform random 98% per layer and ERK 98%.
       speedup = t_masked_dense / t_sparse       target >= 2
3. RigL training steps between mask updates (forward, cross-entropy, backward, SGD momentum
   step, the method's hooks; no update step) at 98% and 90% ERK sparsity: the default RigL
   (masked dense compute) and RigL with `sparse_compute=True` against a dense step.
       ratio = t_rigl_sparse_compute / t_dense     target <= 0.7
   For reference, one RigL mask update (dense gradient + drop/grow) is timed against a step.

Run: .venv/bin/python benchmarks/sparse_linear.py [--rounds 9 --calls 10 --repeats 3] [--quick]
Writes benchmarks/results/sparse_linear.json.
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Any

import torch
from benchcommon import alternating_us, machine_info, median, verdict, write_results
from torch import nn
from torch.nn import functional as F

from prunelab.data.base import Dataset
from prunelab.masks import apply_masks, prunable_parameters
from prunelab.methods import TrainContext
from prunelab.methods.dst import RigL
from prunelab.models import build_model
from prunelab.selection import layer_keep_counts, select_by_counts
from prunelab.sparse_compute import SparseLinear, optimize_sparse_inference

NAME = "sparse_linear"
BATCH = 256
SHAPE = (1, 28, 28)
LAYERS = {"1": (300, 784), "3": (100, 300), "5": (10, 100)}
GRID = (0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99)
INFERENCE_TARGET = 2.0
TRAINING_TARGET = 0.7


def _mask(shape: tuple[int, int], sparsity: float, g: torch.Generator) -> torch.Tensor:
    n = shape[0] * shape[1]
    keep = max(1, round(n * (1 - sparsity)))
    m = torch.zeros(n, dtype=torch.bool)
    m[torch.randperm(n, generator=g)[:keep]] = True
    return m.view(shape)


def layer_times(shape: tuple[int, int], sparsity: float, training: bool, first: bool,
                last: bool, rounds: int, calls: int, g: torch.Generator) -> dict[str, float]:
    """Dense and CSR times of one layer in the data layout it has inside an all-CSR chain: the
    first layer reads the batch row-major (the data) and pays the transposition, later layers
    read the feature-major output of a CSR layer; output gradients are feature-major except
    at the last layer (from the loss). The dense side is the same layer in `dense` mode (BLAS
    reads either layout)."""
    out_f, in_f = shape
    layer = nn.Linear(in_f, out_f)
    mask = _mask(shape, sparsity, g)
    with torch.no_grad():
        layer.weight.mul_(mask)
    ways = {mode: SparseLinear.from_linear(layer, mask, mode) for mode in ("dense", "csr")}
    x = torch.randn(BATCH, in_f, generator=g)
    if not first:
        x = x.t().contiguous().t()  # feature-major view
    fns = {}
    for mode, m in ways.items():
        if not training:
            def fn(m=m):
                with torch.no_grad():
                    m(x)
        else:
            xg = x.clone().requires_grad_(not first)
            gy = torch.randn(BATCH, out_f, generator=g)
            if not last:
                gy = gy.t().contiguous().t()
            inputs = [m.weight, m.bias] + ([] if first else [xg])

            def fn(m=m, xg=xg, gy=gy, inputs=inputs):
                torch.autograd.grad(m(xg), inputs, gy)
        fns[mode] = fn
    times = alternating_us(fns, rounds, calls, warmup=2)
    return {k: median(v) for k, v in times.items()}


def crossover_table(rounds: int, calls: int, grid: tuple[float, ...]) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {}
    for mode in ("inference", "training"):
        out[mode] = {}
        for name, shape in LAYERS.items():
            rows = []
            for s in grid:
                t = layer_times(shape, s, mode == "training", name == "1", name == "5",
                                rounds, calls, g)
                rows.append({"sparsity": s, "dense_us": t["dense"], "csr_us": t["csr"],
                             "dense_over_csr": t["dense"] / t["csr"]})
            cross = None
            for i in range(len(rows)):
                if all(r["csr_us"] < r["dense_us"] for r in rows[i:]):
                    cross = rows[i]["sparsity"]
                    break
            out[mode][name] = {"shape": list(shape), "rows": rows, "crossover": cross}
            print(f"{mode:9s} layer {name} {shape}: crossover "
                  f"{'none in grid' if cross is None else cross}; "
                  + ", ".join(f"{r['sparsity']}: {r['dense_over_csr']:.2f}x" for r in rows))
    return out


def _masks(model: nn.Module, sparsity: float, budget: str, seed: int) -> dict[str, torch.Tensor]:
    params = prunable_parameters(model)
    counts = layer_keep_counts({n: tuple(p.shape) for n, p in params.items()}, 1 - sparsity,
                               budget)
    g = torch.Generator().manual_seed(seed)
    scores = {n: torch.rand(p.shape, generator=g) for n, p in params.items()}
    return select_by_counts(scores, counts)


def inference(rounds: int, calls: int) -> dict[str, Any]:
    out = {}
    x = torch.randn(BATCH, *SHAPE, generator=torch.Generator().manual_seed(1))
    for budget in ("uniform", "erk"):
        torch.manual_seed(0)
        model = build_model("lenet-300-100", SHAPE, 10).eval()
        masks = _masks(model, 0.98, budget, 0)
        apply_masks(model, masks)
        fast, choices = optimize_sparse_inference(model, x, masks)
        with torch.no_grad():
            diff = float((fast(x) - model(x)).abs().max())

        def run(m):
            def f():
                with torch.no_grad():
                    m(x)
            return f
        times = alternating_us({"masked_dense": run(model), "sparse": run(fast)}, rounds,
                               calls, warmup=3)
        med = {k: median(v) for k, v in times.items()}
        speedup = med["masked_dense"] / med["sparse"]
        out[budget] = {"us": med, "speedup": speedup, "max_abs_diff": diff,
                       "choices": {k: v["choice"] for k, v in choices.items()},
                       "rounds_us": times}
        print(f"inference 98% ({budget}): masked dense {med['masked_dense']:.0f} us, sparse "
              f"{med['sparse']:.0f} us, speedup {speedup:.2f}x (target >= "
              f"{INFERENCE_TARGET}: {verdict(speedup >= INFERENCE_TARGET)}), max |diff| "
              f"{diff:.1e}, layers {out[budget]['choices']}")
    return out


class _Stepper:
    """One training setup: model, optimizer and (optionally) a RigL method attached."""

    def __init__(self, model: nn.Module, method: RigL | None, data: Dataset):
        self.model = model
        self.opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        self.method = method
        self.step_no = 0
        if method is not None:
            ctx = TrainContext(model, self.opt, data.n_train // BATCH, 10**6, 10,
                               torch.device("cpu"), data)
            method.attach(ctx)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.step_no = self.step_no % 98 + 1  # never a multiple of the update interval
        if self.method is not None:
            loss = self.method.batch_loss(self.model, x, y, F.cross_entropy)
        else:
            loss = F.cross_entropy(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.method is not None:
            self.method.after_step(self.step_no)


def training(rounds: int, calls: int, sparsities: tuple[float, ...]) -> dict[str, Any]:
    g = torch.Generator().manual_seed(2)
    xs = torch.randn(4 * BATCH, *SHAPE, generator=g)
    ys = torch.randint(0, 10, (4 * BATCH,), generator=g)
    data = Dataset("synthetic-mnist", xs, ys, xs[:BATCH], ys[:BATCH], 10)
    batches = [(xs[i:i + BATCH], ys[i:i + BATCH]) for i in range(0, 4 * BATCH, BATCH)]
    out = {}
    for sparsity in sparsities:
        torch.manual_seed(0)
        base = build_model("lenet-300-100", SHAPE, 10)
        steppers = {"dense": _Stepper(copy.deepcopy(base), None, data)}
        for label, sparse in (("rigl_masked_dense", False), ("rigl_sparse_compute", True)):
            torch.manual_seed(1)
            steppers[label] = _Stepper(copy.deepcopy(base), RigL(
                sparsity=sparsity, update_interval=100, seed=0, sparse_compute=sparse), data)
        choices = steppers["rigl_sparse_compute"].method.sparse_choices
        counter = {"i": 0}

        def way(s: _Stepper):
            def f():
                x, y = batches[counter["i"] % len(batches)]
                counter["i"] += 1
                s.step(x, y)
            return f
        times = alternating_us({k: way(s) for k, s in steppers.items()}, rounds, calls,
                               warmup=3)
        med = {k: median(v) for k, v in times.items()}
        # one mask update (dense gradient on a batch + drop/grow) for reference
        rigl = steppers["rigl_masked_dense"].method
        x, y = batches[0]

        def update():
            rigl._batch = (x, y, F.cross_entropy)
            rigl.update(100)
        upd = median(alternating_us({"update": update}, max(3, rounds // 3), 2, warmup=1)
                     ["update"])
        ratio = med["rigl_sparse_compute"] / med["dense"]
        out[str(sparsity)] = {
            "us": med, "rounds_us": times,
            "sparse_over_dense": ratio,
            "masked_over_dense": med["rigl_masked_dense"] / med["dense"],
            "update_us": upd, "update_over_dense_step": upd / med["dense"],
            "choices": {k: v["choice"] for k, v in choices.items()},
            "choice_us": {k: v.get("us") for k, v in choices.items()},
        }
        print(f"training {sparsity:.0%} ERK: dense {med['dense']:.0f} us, RigL masked dense "
              f"{med['rigl_masked_dense']:.0f} us ({med['rigl_masked_dense'] / med['dense']:.2f}"
              f"x), RigL sparse compute {med['rigl_sparse_compute']:.0f} us ({ratio:.2f}x, "
              f"target <= {TRAINING_TARGET}: {verdict(ratio <= TRAINING_TARGET)}); layers "
              f"{out[str(sparsity)]['choices']}; one mask update {upd:.0f} us "
              f"({upd / med['dense']:.1f} dense steps)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3, help="whole measurements (default 3)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="fewer rounds, one repeat")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.calls, args.repeats = 3, 3, 1
    torch.set_num_threads(args.threads)
    repeats = []
    for r in range(args.repeats):
        print(f"--- repeat {r + 1}/{args.repeats}")
        repeats.append({
            "crossover": crossover_table(args.rounds, args.calls, GRID),
            "inference": inference(args.rounds, args.calls),
            "training": training(args.rounds, args.calls, (0.98, 0.9)),
        })
    summary = {
        "inference_speedup_98": {b: [rep["inference"][b]["speedup"] for rep in repeats]
                                 for b in ("uniform", "erk")},
        "training_ratio": {s: [rep["training"][s]["sparse_over_dense"] for rep in repeats]
                           for s in ("0.98", "0.9")},
        "crossover": {mode: {layer: [rep["crossover"][mode][layer]["crossover"]
                                     for rep in repeats] for layer in LAYERS}
                      for mode in ("inference", "training")},
    }
    print("summary:", summary)
    path = write_results(NAME, {"machine": machine_info(),
                                "settings": {"batch": BATCH, "rounds": args.rounds,
                                             "calls": args.calls, "repeats": args.repeats,
                                             "grid": list(GRID), "threads": args.threads},
                                "summary": summary, "repeats": repeats})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
