"""MNIST LeNet-300-100 with gradual magnitude pruning (Zhu & Gupta) to 95% and 98% weight
sparsity in 25 epochs, beside the dense baseline and, at 98%, the scratch and lottery
('original' init) retrains of the pruned run's mask (METHODS.md section 3).

Targets: test accuracy >= 98.0% at 95% sparsity and >= 97.5% at 98% sparsity.

Every run goes through prunelab.train.run with a RunConfig (the retrains through
prunelab.retrain.retrain_from); the data are loaded once and shared by all runs.

Run: .venv/bin/python benchmarks/mnist_gmp.py [--epochs 25] [--quick] [--data-dir DIR]
     [--threads N] [--seed S] [--no-retrain] [--select-lr]

The default lr 0.1 is the validation choice of `--select-lr` (2026-12-08: the 98% GMP run at
each rate of 0.02, 0.05, 0.1, 0.2 on 5/6 of the training images, scored on the other 1/6, the
sparse-landscape reproduction's rule, made before any run touched the test set); the earlier
default 0.05 had been picked by *test* accuracy (RESULTS.md, docs/claims-history.md).
`--select-lr` repeats the choice in the run itself.
Data: --data-dir, else $PRUNELAB_DATA, else ../shared/data next to the repository.
Writes benchmarks/results/mnist_gmp.json.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from benchcommon import REPO_ROOT, machine_info, verdict, write_results

from prunelab.config import RunConfig, TrainConfig
from prunelab.data import Dataset, load_dataset
from prunelab.methods import build_method
from prunelab.models import build_model
from prunelab.retrain import retrain_config, retrain_from
from prunelab.train import TrainResult, evaluate, run

NAME = "mnist_gmp"
TARGETS = {0.95: 0.980, 0.98: 0.975}  # sparsity -> minimum final test accuracy

# The recipe (see RESULTS.md for how it was chosen). METHODS.md section 3: momentum 0.9,
# batch 128, wd 1e-4, 25 epochs, pruning from step 3000 to 7000 of 11,725 every 100 steps.
# Its lr 0.2 is for raw [0, 1] pixels; prunelab standardises MNIST. 0.1: chosen on validation
# by --select-lr (validation accuracy 0.9747 / 0.9775 / 0.9783 / 0.9750 at 0.02 / 0.05 / 0.1 /
# 0.2, 2026-12-08); the earlier 0.05 was picked on test.
LR = 0.1
LR_SCHEDULE = "cosine"
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
BATCH = 128
REF_TOTAL_STEPS = 11_725  # 25 epochs x 469 steps: the setting the pruning steps refer to
REF_BEGIN, REF_END, FREQUENCY = 3000, 7000, 100


def default_data_dir() -> str:
    return os.environ.get("PRUNELAB_DATA") or str((REPO_ROOT / ".." / "shared" / "data").resolve())


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        epochs=args.epochs, batch_size=BATCH, optimizer="sgd", lr=args.lr, momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY, lr_schedule=args.lr_schedule, seed=args.seed,
        eval_train=False,  # the full training set is evaluated once, at the end
        checkpoint_epochs=False,
    )


def pruning_steps(total_steps: int) -> tuple[int, int, int]:
    """Steps 3000 -> 7000 every 100 of 11,725, scaled to a shorter or longer run."""
    scale = total_steps / REF_TOTAL_STEPS
    begin, end = round(REF_BEGIN * scale), round(REF_END * scale)
    return begin, end, max(1, min(FREQUENCY, round(FREQUENCY * scale)))


def run_config(args: argparse.Namespace, data: Dataset, sparsity: float | None) -> RunConfig:
    train = train_config(args)
    method, options = "dense", {}
    if sparsity is not None:
        total = train.epochs * math.ceil(data.n_train / train.batch_size)
        begin, end, freq = pruning_steps(total)
        method = "gmp"
        options = {"sparsity": sparsity, "begin": begin, "end": end, "frequency": freq,
                   "scope": "global"}
    return RunConfig(dataset="mnist", data_dir=args.data_dir, model="lenet-300-100",
                     method=method, method_options=options, train=train)


def summarize(name: str, cfg: RunConfig, res: TrainResult, data: Dataset, seconds: float,
              sparsity_target: float | None) -> dict[str, Any]:
    """Final figures of a run; the final weights are evaluated once on the training set."""
    model = build_model(cfg.model, data.input_shape, data.num_classes, **cfg.model_options)
    model.load_state_dict(res.final_state)
    train_ev = evaluate(model, data.x_train, data.y_train, cfg.train.eval_batch_size)
    accs = [m["test_accuracy"] for m in res.metrics]
    # Best epoch among those already at the final sparsity (GMP prunes until ~60% of training;
    # earlier, denser epochs do not count).
    at_final = [i for i, m in enumerate(res.metrics)
                if m.get("mask_sparsity", 1.0) >= (sparsity_target or 0.0) - 1e-6]
    best = max(at_final, key=accs.__getitem__)
    g = res.sparsity["global"]
    row = {
        "run": name,
        "method": cfg.method,
        "sparsity_target": sparsity_target,
        "test_accuracy": res.final["test_accuracy"],
        "test_loss": res.final["test_loss"],
        "train_loss": train_ev["loss"],  # final weights, whole training set
        "train_accuracy": train_ev["accuracy"],
        "last_epoch_train_loss": res.final["train_loss"],  # running mean during the epoch
        "weight_sparsity": g["weight_sparsity"],
        "weights_nonzero": g["weights_nonzero"],
        "params_nonzero": g["params_nonzero"],
        "best_test_accuracy": accs[best],  # among epochs at the final sparsity
        "best_epoch": best + 1,
        "test_accuracy_per_epoch": accs,
        "mask_sparsity_per_epoch": [m.get("mask_sparsity") for m in res.metrics],
        "steps": res.final["steps"],
        "seconds": seconds,
    }
    if cfg.method == "gmp":
        row["pruning"] = {k: cfg.method_options[k] for k in ("begin", "end", "frequency", "scope")}
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 3 epochs on a 10,000-image training subset "
                         "(targets are not expected to be met)")
    ap.add_argument("--data-dir", default=None, help="holds mnist/ (default: $PRUNELAB_DATA, "
                    "else ../shared/data next to the repository)")
    ap.add_argument("--lr", type=float, default=LR)
    ap.add_argument("--lr-schedule", default=LR_SCHEDULE,
                    choices=("constant", "cosine", "step", "multistep"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None,
                    help=f"JSON output (default benchmarks/results/{NAME}.json)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's default); 1 is much faster "
                         "on a machine whose cores are busy with other work")
    ap.add_argument("--no-retrain", dest="retrain", action="store_false",
                    help="skip the scratch and lottery retrains at 98%%")
    ap.add_argument("--select-lr", action="store_true",
                    help="choose the learning rate on a validation split first (the default "
                         "0.05 was picked by test accuracy)")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs = 3
    args.data_dir = args.data_dir or default_data_dir()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    data = load_dataset("mnist", data_dir=args.data_dir, seed=args.seed)
    if args.quick:
        data = data.subset_train(10_000, seed=args.seed)
    print(f"MNIST from {Path(args.data_dir)}: {data.n_train} train / {data.n_test} test, "
          f"loaded in {time.perf_counter() - t0:.1f}s; {args.epochs} epochs, lr {args.lr} "
          f"{args.lr_schedule}, torch threads {torch.get_num_threads()}", flush=True)

    screen: list[dict[str, Any]] = []
    if args.select_lr:
        from prunelab.experiments.sparse_landscape import Settings, select_lr

        s = Settings(epochs=args.epochs, lr_schedule=args.lr_schedule, seed=args.seed)
        args.lr, screen = select_lr(s, data, False, lambda m: print(f"  {m}", flush=True))
        print(f"learning rate chosen on validation: {args.lr}", flush=True)

    rows: list[dict[str, Any]] = []

    def log(row: dict[str, Any]) -> None:
        print(f"  {row['run']:<12} test acc {row['test_accuracy']:.4f}  train loss "
              f"{row['train_loss']:.4f}  sparsity {row['weight_sparsity']:.4f}  "
              f"{row['seconds']:.0f}s", flush=True)

    def train(name: str, sparsity: float | None) -> tuple[RunConfig, TrainResult]:
        cfg = run_config(args, data, sparsity)
        method = build_method(cfg.method, **cfg.method_options)
        t = time.perf_counter()
        res = run(cfg, data=data, method=method, progress=False)
        rows.append(summarize(name, cfg, res, data, time.perf_counter() - t, sparsity))
        log(rows[-1])
        return cfg, res

    train("dense", None)
    train("gmp-95", 0.95)
    cfg98, res98 = train("gmp-98", 0.98)
    if args.retrain:
        for init, name in (("scratch", "scratch-98"), ("original", "lottery-98")):
            t = time.perf_counter()
            res = retrain_from(cfg98, res98.masks, init, init_states={"step0": res98.initial_state},
                               data=data, progress=False)
            cfg = retrain_config(cfg98, init)
            row = summarize(name, cfg, res, data, time.perf_counter() - t, 0.98)
            row["init"] = init
            rows.append(row)
            log(row)

    by_name = {r["run"]: r for r in rows}
    checks = []
    for sp, need in TARGETS.items():
        r = by_name[f"gmp-{round(sp * 100)}"]
        ok = r["test_accuracy"] >= need and r["weight_sparsity"] >= sp - 1e-6
        checks.append({"run": r["run"], "sparsity": r["weight_sparsity"],
                       "test_accuracy": r["test_accuracy"], "target": need, "pass": ok})
    info = {}
    if args.retrain:
        info["scratch_train_loss_above_pruned"] = (
            by_name["scratch-98"]["train_loss"] > by_name["gmp-98"]["train_loss"])

    full = not args.quick and args.epochs == 25
    payload = {
        "benchmark": NAME,
        "command": " ".join(["python benchmarks/mnist_gmp.py", *(sys.argv[1:] if argv is None
                                                                  else argv)]),
        "machine": machine_info(),
        "setup": {
            "dataset": data.summary(),
            "model": "lenet-300-100",
            "epochs": args.epochs,
            "batch_size": BATCH,
            "optimizer": f"SGD momentum {MOMENTUM}",
            "lr": args.lr,
            "lr_chosen_on": "validation" if args.select_lr else "given (default picked on test)",
            "lr_screen": screen,
            "lr_schedule": args.lr_schedule,
            "weight_decay": WEIGHT_DECAY,
            "seed": args.seed,
            "quick": args.quick,
            "targets_apply": full,
        },
        "runs": rows,
        "targets": checks,
        "info": info,
        "total_seconds": time.perf_counter() - t0,
    }

    print(f"\n{'run':<12}{'sparsity':>10}{'nonzero w':>11}{'test acc':>10}{'best*':>8}"
          f"{'train loss':>12}{'seconds':>9}")
    for r in rows:
        print(f"{r['run']:<12}{r['weight_sparsity']:>10.4f}{r['weights_nonzero']:>11d}"
              f"{r['test_accuracy']:>10.2%}{r['best_test_accuracy']:>8.2%}"
              f"{r['train_loss']:>12.4f}{r['seconds']:>9.1f}")
    print("* best epoch among those at the final sparsity")
    for c in checks:
        tag = verdict(c["pass"]) if full else f"{verdict(c['pass'])} (not the 25-epoch setting)"
        print(f"target {c['run']}: test acc {c['test_accuracy']:.2%} >= {c['target']:.1%} "
              f"at sparsity {c['sparsity']:.4f}: {tag}")
    if info:
        print("info: scratch ends with higher training loss than pruned (METHODS.md 3): "
              f"{info['scratch_train_loss_above_pruned']}")
    path = write_results(NAME, payload, args.out)
    print(f"wrote {path} ({payload['total_seconds']:.0f}s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
