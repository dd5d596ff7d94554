"""Wall time of evaluating one path (61 points, 10k samples) against one training epoch of the
same model, LeNet-300-100 on MNIST-shaped inputs.

The issue's target compares a path evaluated on 10k samples (the MNIST test set's size) with
one training epoch; an epoch of the sparse-landscape reproduction is a pass over MNIST's
60,000 training images, so the epoch here runs over 60,000 samples (`--epoch-samples`). The
stricter ratio against an epoch over the same 10k samples is printed too.

Side by side in one process, interleaved over several rounds (order rotated each round),
median of each:

    epoch            one epoch (60k samples) of prunelab's Trainer (SGD momentum 0.9, batch 128; the
                     per-epoch test evaluation runs on a 128-sample test set, so it is ~free)
    path             prunelab.landscape.paths.interpolate at 61 points: vmap over points in
                     chunks of 4, first layer computed once per endpoint (the default)
    path_vmap        the same without the first-layer shortcut (vmap over the whole model)
    path_loop        one point at a time (no batching, no shortcut): the naive baseline

Target: path / epoch <= 1.0 (evaluating a 61-point path costs no more than an epoch).
Speed does not depend on the input values, so the inputs are seeded standard-normal images.

Run: .venv/bin/python benchmarks/path_eval.py [--rounds 5] [--quick]
Writes benchmarks/results/path_eval.json.
"""

from __future__ import annotations

import argparse
import time

import torch
from benchcommon import machine_info, median, verdict, write_results

from prunelab.config import TrainConfig
from prunelab.data.base import Dataset
from prunelab.landscape.paths import interpolate
from prunelab.models import build_model
from prunelab.train import Trainer

NAME = "path_eval"
N_SAMPLES = 10_000
EPOCH_SAMPLES = 60_000
POINTS = 61
TARGET = 1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 rounds, no loop baseline")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epoch-samples", type=int, default=EPOCH_SAMPLES,
                    help="training samples per epoch (MNIST's training set by default)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rounds = 2 if args.quick else args.rounds

    g = torch.Generator().manual_seed(0)
    x_epoch = torch.randn(args.epoch_samples, 1, 28, 28, generator=g)
    y_epoch = torch.randint(0, 10, (args.epoch_samples,), generator=g)
    x = torch.randn(N_SAMPLES, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (N_SAMPLES,), generator=g)
    data = Dataset("mnist-shaped", x_epoch, y_epoch, x[:128], y[:128], 10)
    torch.manual_seed(0)
    model = build_model("lenet-300-100", (1, 28, 28), 10)
    torch.manual_seed(1)
    other = build_model("lenet-300-100", (1, 28, 28), 10)
    ts = [i / (POINTS - 1) for i in range(POINTS)]
    split = {"train": (x, y)}
    cfg = TrainConfig(epochs=1, batch_size=128, lr=0.05, momentum=0.9, eval_train=False,
                      checkpoint_epochs=False)

    def epoch() -> None:
        Trainer(model, data, cfg, progress=False).fit()

    def path() -> None:
        interpolate(model, other, split, ts=ts, splits=["train"])

    def path_vmap() -> None:
        interpolate(model, other, split, ts=ts, splits=["train"], fast_first_layer=False)

    def path_loop() -> None:
        interpolate(model, other, split, ts=ts, splits=["train"], fast_first_layer=False,
                    points_per_batch=1)

    variants = {"epoch": epoch, "path": path, "path_vmap": path_vmap}
    if not args.quick:
        variants["path_loop"] = path_loop
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t0)
    med = {k: median(v) for k, v in times.items()}
    ratios = {f"{k}/epoch": med[k] / med["epoch"] for k in med if k != "epoch"}
    same_size = med["path"] / (med["epoch"] * N_SAMPLES / args.epoch_samples)
    ok = ratios["path/epoch"] <= TARGET
    print(f"LeNet-300-100, path on {N_SAMPLES} samples at {POINTS} points, epoch on "
          f"{args.epoch_samples} samples, {rounds} rounds, torch threads {torch.get_num_threads()}")
    for k, v in med.items():
        print(f"  {k:10s} median {v:7.3f} s")
    for k, v in ratios.items():
        print(f"  {k:16s} {v:6.2f}")
    if "path_loop" in med:
        print(f"  batching speed-up (loop / path): {med['path_loop'] / med['path']:.2f}x")
    print(f"path / epoch = {ratios['path/epoch']:.2f} (target <= {TARGET}): {verdict(ok)}")
    print(f"path / epoch over the same {N_SAMPLES} samples (stricter reading) = {same_size:.2f}")
    path_file = write_results(NAME, {
        "machine": machine_info(), "rounds": rounds, "samples": N_SAMPLES, "points": POINTS,
        "epoch_samples": args.epoch_samples, "path/epoch_same_samples": same_size,
        "times_s": times, "median_s": med, "ratios": ratios, "target": TARGET,
        "pass": ok,
    })
    print(f"wrote {path_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
