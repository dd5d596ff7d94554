"""Ensemble training of R = 128 XOR networks vs a Python loop over the same 128, side by side.

Both sides train the same 128 networks (same seeds, same recipe, same results to float
tolerance, checked here): the loop runs `prunelab.train.Trainer` once per seed (the one-by-one
path a user would take, with its per-epoch test evaluation), the ensemble runs
`prunelab.landscape.ensemble.EnsembleTrainer` with the `bmm` and `vmap` backends. A bare loop
(plain PyTorch, no evaluation or hooks) is timed too, as the most favourable one-by-one case.

    .venv/bin/python benchmarks/ensemble_vs_loop.py [--restarts 128] [--epochs 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchcommon import machine_info, verdict, write_results  # noqa: E402

from prunelab.config import TrainConfig  # noqa: E402
from prunelab.data import load_dataset  # noqa: E402
from prunelab.landscape.ensemble import EnsembleTrainer  # noqa: E402
from prunelab.models import build_model  # noqa: E402
from prunelab.train import Trainer, make_optimizer  # noqa: E402


def bare_loop(model_fn, data, cfg: TrainConfig, seeds) -> list[float]:
    """Plain one-by-one training: no evaluation during training, no method hooks."""
    accs = []
    for s in seeds:
        torch.manual_seed(s)
        model = model_fn()
        opt = make_optimizer(model, cfg)
        g = torch.Generator().manual_seed(s)
        n = data.n_train
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=g)
            for b in range(0, n, cfg.batch_size):
                idx = order[b : b + cfg.batch_size]
                loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        with torch.no_grad():
            accs.append(float((model(data.x_test).argmax(1) == data.y_test).float().mean()))
    return accs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--restarts", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("xor", n_irrelevant=18, n_train=500, n_test=2000, seed=0)
    model_fn = lambda: build_model("mlp", data.input_shape, 2, widths=[32])
    cfg = TrainConfig(epochs=args.epochs, batch_size=32, optimizer="adam", lr=1e-2,
                      eval_train=False, checkpoint_epochs=False)
    seeds = list(range(args.restarts))

    # warm-up (lazy initialisation of kernels and torch.func) on a few members, untimed
    EnsembleTrainer(model_fn, data, cfg, seeds[:4], backend="bmm").fit()
    EnsembleTrainer(model_fn, data, cfg, seeds[:4], backend="vmap").fit()
    bare_loop(model_fn, data, cfg, seeds[:2])

    times: dict[str, float] = {}
    accs: dict[str, list[float]] = {}
    for backend in ("bmm", "vmap"):
        t = time.perf_counter()
        res = EnsembleTrainer(model_fn, data, cfg, seeds, backend=backend).fit()
        times[f"ensemble-{backend}"] = time.perf_counter() - t
        accs[f"ensemble-{backend}"] = res.final["test_accuracy"].tolist()
    t = time.perf_counter()
    loop = []
    for s in seeds:
        torch.manual_seed(s)
        one = Trainer(model_fn(), data, TrainConfig(**{**cfg.__dict__, "seed": s}),
                      progress=False).fit()
        loop.append(one.final["test_accuracy"])
    times["loop-trainer"] = time.perf_counter() - t
    accs["loop-trainer"] = loop
    t = time.perf_counter()
    accs["loop-bare"] = bare_loop(model_fn, data, cfg, seeds)
    times["loop-bare"] = time.perf_counter() - t

    best = min(times["ensemble-bmm"], times["ensemble-vmap"])
    ratio_trainer = times["loop-trainer"] / best
    ratio_bare = times["loop-bare"] / best
    max_acc_diff = max(abs(a - b) for a, b in zip(accs["ensemble-bmm"], accs["loop-trainer"]))
    print(f"R = {args.restarts} XOR nets (18 irrelevant inputs, MLP [32], Adam, "
          f"{args.epochs} epochs x 16 steps), {args.threads} thread(s)")
    for k, v in times.items():
        print(f"  {k:14s} {v:8.2f} s")
    print(f"  loop-trainer / best ensemble = {ratio_trainer:.1f}x  "
          f"[target >= 10x: {verdict(ratio_trainer >= 10)}]")
    print(f"  loop-bare    / best ensemble = {ratio_bare:.1f}x")
    print(f"  bmm vs vmap: {times['ensemble-vmap'] / times['ensemble-bmm']:.2f}x "
          "(>1: bmm faster)")
    print(f"  max |test acc ensemble - loop| over members = {max_acc_diff:.4g}")
    path = write_results("ensemble_vs_loop", {
        "machine": machine_info(), "restarts": args.restarts, "epochs": args.epochs,
        "seconds": times, "ratio_loop_trainer": ratio_trainer, "ratio_loop_bare": ratio_bare,
        "max_test_accuracy_diff": max_acc_diff, "target_10x": ratio_trainer >= 10,
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
