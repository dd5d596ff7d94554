"""Training wall time of Bernoulli-gate pruning (gates + shrinking during training) versus
dense training of the starting network for the same epochs, side by side in one process.

LeNet-300-100 (or its x2/x4 widening) on MNIST, Adam, batch 100, cosine learning rate, 20
epochs. By default a full run: all 60,000 training images with the method options of
`prunelab reproduce bernoulli`; `--subset` uses a 10,000-image subset with the options of
`--quick` (tuned for that subset and 20 epochs). Each round trains one dense and one Bernoulli run
from the same initial weights and batch order; the order alternates every round; the median
of each is reported with the ratio

    bernoulli / dense    target < 1   (shrinking during training pays for the gates)

plus the training FLOPs ratio the method counts and the final widths and test errors.

Run: .venv/bin/python benchmarks/bernoulli_training_time.py [--rounds 3] [--epochs 20]
     [--subset] [--width 1] [--quick]
Writes benchmarks/results/bernoulli_training_time.json. Needs MNIST in $PRUNELAB_DATA (or
../shared/data).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from benchcommon import (
    data_dir,
    machine_info,
    paired_training_rounds,
    timed_training,
    verdict,
    write_results,
)

from prunelab.config import TrainConfig
from prunelab.data import load_dataset
from prunelab.errors import PrunelabError
from prunelab.experiments.bernoulli import METHOD_OPTIONS, QUICK_OPTIONS, build
from prunelab.methods.base import PruningMethod
from prunelab.methods.bernoulli import BernoulliGating
from prunelab.train import preload_optimizers

NAME = "bernoulli_training_time"


def one_run(data, width: int, epochs: int,
            method: PruningMethod) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds of this process and test error of one training run."""
    torch.manual_seed(0)
    model = build("lenet-300-100", width, data.input_shape, data.num_classes)
    cfg = TrainConfig(epochs=epochs, batch_size=100, optimizer="adam", lr=1e-3,
                      lr_schedule="cosine", seed=0, eval_train=False, checkpoint_epochs=False)
    return timed_training(model, data, cfg, method)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--subset", action="store_true",
                    help="10,000 training images and the --quick options of the reproduction")
    ap.add_argument("--width", type=int, default=1, help="starting width factor (1, 2, 4)")
    ap.add_argument("--quick", action="store_true", help="1 round")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds = 1
    torch.set_num_threads(1)
    try:
        data = load_dataset("mnist", data_dir=data_dir(),
                            n_train=10000 if args.subset else None, seed=0)
    except PrunelabError as exc:
        print(f"{NAME}: {exc}", file=sys.stderr)
        return 2
    options = QUICK_OPTIONS if args.subset else METHOD_OPTIONS
    preload_optimizers()  # else round 1's first run pays torch's one-time imports (~1 s)
    summary: dict[str, Any] = {}

    def run(name: str) -> tuple[float, float, float]:
        if name == "dense":
            method: PruningMethod = PruningMethod()
        else:
            method = BernoulliGating(n_train=data.n_train, **options)
        out = one_run(data, args.width, args.epochs, method)
        if name == "bernoulli":
            summary.update(method.summary())
        return out

    res = paired_training_rounds(args.rounds, ("dense", "bernoulli"), run)
    med, cpu_med = res["median_seconds"], res["median_cpu_seconds"]
    ratio = med["bernoulli"] / med["dense"]
    per_round = res["per_round_ratios"]
    flops_ratio = summary["train_flops"] / summary["train_flops_dense"]
    ok = ratio < 1.0
    print(f"median wall time: dense {med['dense']:.2f}s, bernoulli {med['bernoulli']:.2f}s, "
          f"ratio {ratio:.3f} (target < 1) {verdict(ok)}")
    print(f"per-round ratios {', '.join(f'{x:.2f}' for x in per_round)}; CPU time (this "
          f"process) medians: dense {cpu_med['dense']:.2f}s, bernoulli "
          f"{cpu_med['bernoulli']:.2f}s, ratio {cpu_med['bernoulli'] / cpu_med['dense']:.3f}")
    print(f"training FLOPs ratio (counted by the method) {flops_ratio:.3f}; final widths "
          f"{summary['final_widths']} from {summary['start_widths']}")
    path = write_results(NAME, {
        "machine": machine_info(),
        "settings": vars(args) | {"method_options": options, "n_train": data.n_train},
        "seconds": res["seconds"], "median_seconds": med, "ratio_bernoulli_over_dense": ratio,
        "per_round_ratios": per_round, "cpu_seconds": res["cpu_seconds"],
        "median_cpu_seconds": cpu_med,
        "cpu_ratio_bernoulli_over_dense": cpu_med["bernoulli"] / cpu_med["dense"],
        "train_flops_ratio": flops_ratio, "test_error": res["test_error"],
        "final_widths": summary["final_widths"], "start_widths": summary["start_widths"],
        "target": "bernoulli / dense < 1", "pass": ok,
    })
    print(f"wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
