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
from prunelab.experiments.layer_pruning import METHOD_OPTIONS, deep_mlp
from prunelab.methods.base import PruningMethod
from prunelab.methods.layer_gates import LayerGating
from prunelab.train import preload_optimizers

NAME = "layer_pruning_time"


def one_run(data, depth: int, epochs: int, method: PruningMethod) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds of this process and test error of one training run."""
    torch.manual_seed(0)
    model = deep_mlp(depth, 100, data.input_shape, data.num_classes)
    cfg = TrainConfig(epochs=epochs, batch_size=100, optimizer="adam", lr=1e-3,
                      lr_schedule="cosine", seed=0, eval_train=False, checkpoint_epochs=False)
    return timed_training(model, data, cfg, method)


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
    try:
        data = load_dataset("mnist", data_dir=data_dir(), n_train=None if args.full else 10000,
                            seed=0)
    except PrunelabError as exc:
        print(f"{NAME}: {exc}", file=sys.stderr)
        return 2
    options = {**METHOD_OPTIONS, "penalty_scale": 30.0 if args.full else 5.0,
               "strength": args.strength}
    preload_optimizers()
    summary: dict[str, Any] = {}

    def run(name: str) -> tuple[float, float, float]:
        method = PruningMethod() if name == "dense" else LayerGating(
            n_train=data.n_train, **options)
        out = one_run(data, args.depth, epochs, method)
        if name == "gated":
            summary.update(method.summary())
        return out

    res = paired_training_rounds(args.rounds, ("dense", "gated"), run)
    med, cpu_med = res["median_seconds"], res["median_cpu_seconds"]
    ratio = med["gated"] / med["dense"]
    per_round = res["per_round_ratios"]
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
        "seconds": res["seconds"], "median_seconds": med, "ratio_gated_over_dense": ratio,
        "per_round_ratios": per_round, "cpu_seconds": res["cpu_seconds"],
        "median_cpu_seconds": cpu_med, "train_flops_ratio": flops_ratio,
        "test_error": res["test_error"],
        "sections_kept": summary["sections_kept"], "removed_at": summary["sections_removed"],
        "target": "layer-gated / dense < 1", "pass": ok,
    })
    print(f"wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
