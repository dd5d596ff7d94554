"""Training wall time of layer-gated training (sections removed and the network rebuilt during
training) versus dense training of the same starting network, side by side in one process.

The deep MLP of `prunelab reproduce layer-pruning` (784 -> 100 input layer, D residual
sections of 100 units, D = 8 by default) on MNIST, Adam 1e-3 cosine, batch 100. Each round
trains one dense and one layer-gated run from the same initial weights and batch order (the
order alternates every round); the medians give the ratio

    layer-gated / dense    target < 1   (removing sections pays for the gates)

plus the training FLOPs ratio the method counts, the sections kept and the test errors.
Defaults: a 10,000-image subset, 8 epochs and the reproduction's --quick method options at
`--strength` (the value its validation screen chose, 0.3); `--full` uses all 60,000 images,
20 epochs and penalty_scale 30 (minutes per run on a CPU).

Run: .venv/bin/python benchmarks/layer_pruning_time.py [--rounds 3] [--depth 8]
     [--strength 0.3] [--full] [--quick]
Writes benchmarks/results/layer_pruning_time.json. Needs MNIST in $PRUNELAB_DATA (or
../shared/data).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from benchcommon import REPO_ROOT, machine_info, median, verdict, write_results

from prunelab.config import TrainConfig
from prunelab.data import load_dataset
from prunelab.errors import PrunelabError
from prunelab.experiments.layer_pruning import METHOD_OPTIONS, deep_mlp
from prunelab.methods.base import PruningMethod
from prunelab.methods.layer_gates import LayerGating
from prunelab.train import Trainer, preload_optimizers

NAME = "layer_pruning_time"


def one_run(data, depth: int, epochs: int, method: PruningMethod) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds of this process and test error of one training run."""
    torch.manual_seed(0)
    model = deep_mlp(depth, 100, data.input_shape, data.num_classes)
    cfg = TrainConfig(epochs=epochs, batch_size=100, optimizer="adam", lr=1e-3,
                      lr_schedule="cosine", seed=0, eval_train=False, checkpoint_epochs=False)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = Trainer(model, data, cfg, method, progress=False).fit()
    return (time.perf_counter() - start, time.process_time() - cpu_start,
            1.0 - result.final["test_accuracy"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--strength", type=float, default=0.3)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--full", action="store_true", help="60,000 images, 20 epochs")
    ap.add_argument("--quick", action="store_true", help="1 round")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds = 1
    epochs = args.epochs or (20 if args.full else 8)
    torch.set_num_threads(1)
    data_dir = os.environ.get("PRUNELAB_DATA") or str(Path(REPO_ROOT).parent / "shared" / "data")
    try:
        data = load_dataset("mnist", data_dir=data_dir, n_train=None if args.full else 10000,
                            seed=0)
    except PrunelabError as exc:
        print(f"{NAME}: {exc}", file=sys.stderr)
        return 2
    options = {**METHOD_OPTIONS, "penalty_scale": 30.0 if args.full else 5.0,
               "strength": args.strength}
    preload_optimizers()
    times: dict[str, list[float]] = {"dense": [], "gated": []}
    cpu_times: dict[str, list[float]] = {"dense": [], "gated": []}
    errors: dict[str, float] = {}
    summary = {}
    for r in range(args.rounds):
        order = ("dense", "gated") if r % 2 == 0 else ("gated", "dense")
        for name in order:
            method = PruningMethod() if name == "dense" else LayerGating(
                n_train=data.n_train, **options)
            secs, cpu, err = one_run(data, args.depth, epochs, method)
            times[name].append(secs)
            cpu_times[name].append(cpu)
            errors[name] = err
            if name == "gated":
                summary = method.summary()
            print(f"round {r + 1}: {name:6s} {secs:7.2f}s (CPU {cpu:7.2f}s)  test error "
                  f"{100 * err:.2f}%", flush=True)
    med = {k: median(v) for k, v in times.items()}
    ratio = med["gated"] / med["dense"]
    cpu_med = {k: median(v) for k, v in cpu_times.items()}
    per_round = [g / d for g, d in zip(times["gated"], times["dense"])]
    flops_ratio = summary["train_flops"] / summary["train_flops_dense"]
    ok = ratio < 1.0
    print(f"median wall time: dense {med['dense']:.2f}s, layer-gated {med['gated']:.2f}s, "
          f"ratio {ratio:.3f} (target < 1) {verdict(ok)}")
    print(f"per-round ratios {', '.join(f'{x:.2f}' for x in per_round)}; CPU time medians: "
          f"dense {cpu_med['dense']:.2f}s, layer-gated {cpu_med['gated']:.2f}s")
    print(f"training FLOPs ratio (counted by the method) {flops_ratio:.3f}; sections kept "
          f"{len(summary['sections_kept'])} of {len(summary['start_sections'])} "
          f"(removed at steps {sorted(summary['sections_removed'].values())})")
    path = write_results(NAME, {
        "machine": machine_info(),
        "settings": vars(args) | {"epochs": epochs, "method_options": options,
                                  "n_train": data.n_train},
        "seconds": times, "median_seconds": med, "ratio_gated_over_dense": ratio,
        "per_round_ratios": per_round, "cpu_seconds": cpu_times, "median_cpu_seconds": cpu_med,
        "train_flops_ratio": flops_ratio, "test_error": errors,
        "sections_kept": summary["sections_kept"], "removed_at": summary["sections_removed"],
        "target": "layer-gated / dense < 1", "pass": ok,
    })
    print(f"wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
