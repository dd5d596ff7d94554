"""Is the Trainer input-bound on a stream? One Trainer epoch over a DataLoader with loader
worker processes vs the same epoch from memory, LeNet-300-100 on MNIST-sized images.

The streamed data is a map-style torch Dataset holding uint8 images, served by
`prunelab.data.stream(train, test, workers=W)`, in two forms: `per_sample` converts one image
per `__getitem__` to normalised float32 (what torchvision's MNIST does), `batched` converts a
whole batch in one `__getitems__` call. The in-memory data is a `Dataset` holding the same
images already converted. All train one epoch in the same order (so they also end with
identical weights, checked) and evaluate on the test set once. Each round times each variant
once, the order alternating; the medians are compared:

    streamed (W workers) / in-memory    target <= 1.15   (each form)

The stream's workers send batches under torch's "file_system" sharing strategy (set in
the workers only: `StreamingSource(worker_sharing=...)`). A per-sample stream with no workers
(everything in the training process) is timed as a reference, and so is the batched stream
with workers sending under torch's default "file_descriptor" strategy (skip with
--no-file-descriptor), which passes each batch tensor's descriptor over a fresh socket
connection and costs the training process CPU per batch.
The training process's own CPU time is recorded too: with workers it shows how much
of the loading left the training process; what the wall time adds is waiting for workers.

Run: .venv/bin/python benchmarks/streaming_vs_memory.py [--rounds 7] [--workers 2]
Writes benchmarks/results/streaming_vs_memory.json.
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
from torch.utils.data import Dataset as TorchDataset

from prunelab.config import TrainConfig
from prunelab.data import Dataset, stream
from prunelab.models import build_model
from prunelab.train import Trainer, preload_optimizers

NAME = "streaming_vs_memory"
TARGET = 1.15
BATCH, LR, MOMENTUM = 128, 0.05, 0.9
MEAN, STD = 0.1307, 0.3081


class UInt8Images(TorchDataset):
    """(n, 1, 28, 28) uint8 images; each access returns one normalised float32 image."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.targets = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return (self.x[i].float() / 255.0 - MEAN) / STD, int(self.targets[i])


class UInt8ImagesBatched(UInt8Images):
    """The same images, a whole batch converted at once (torch's batched-fetch protocol)."""

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        t = torch.as_tensor(indices)
        xb = (self.x[t].float() / 255.0 - MEAN) / STD
        return list(zip(xb.unbind(0), self.targets[t].tolist()))


def make_data(n_train: int, n_test: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (n_train + n_test, 1, 28, 28), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n_train + n_test,), generator=g)
    x = (raw.float() / 255.0 - MEAN) / STD  # the same arithmetic as UInt8Images
    memory = Dataset("mnist-sized", x[:n_train], y[:n_train], x[n_train:], y[n_train:], 10)
    streams = {kind: (cls(raw[:n_train], y[:n_train]), cls(raw[n_train:], y[n_train:]))
               for kind, cls in (("per_sample", UInt8Images), ("batched", UInt8ImagesBatched))}
    return memory, streams


def epoch(model: nn.Module, data: Any, seed: int) -> tuple[float, float, nn.Module]:
    """(wall seconds, this process's CPU seconds, trained model) of one Trainer epoch."""
    cfg = TrainConfig(epochs=1, batch_size=BATCH, lr=LR, momentum=MOMENTUM, seed=seed,
                      eval_train=False)
    start, start_cpu = time.perf_counter(), time.process_time()
    trainer = Trainer(model, data, cfg, progress=False)
    trainer.fit()
    return time.perf_counter() - start, time.process_time() - start_cpu, trainer.model


def run(rounds: int, n_train: int, n_test: int, workers: int, seed: int,
        file_descriptor: bool = True) -> dict[str, Any]:
    preload_optimizers()
    memory, streams = make_data(n_train, n_test, seed)
    sources = {
        "in_memory": memory,
        f"per_sample_{workers}_workers": stream(*streams["per_sample"], workers=workers),
        f"batched_{workers}_workers": stream(*streams["batched"], workers=workers),
        "per_sample_0_workers": stream(*streams["per_sample"], workers=0),
    }
    if file_descriptor:
        sources[f"batched_{workers}_workers_file_descriptor"] = stream(
            *streams["batched"], workers=workers, worker_sharing="file_descriptor")
    torch.manual_seed(seed)
    init = build_model("lenet-300-100", (1, 28, 28), 10)
    finals = {}
    for name, data in sources.items():  # warm-up (starts the persistent workers) + check
        finals[name] = epoch(copy.deepcopy(init), data, seed)[2].state_dict()
    same = all(all(torch.equal(finals["in_memory"][k], f[k]) for k in f)
               for f in finals.values())
    names = list(sources)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            wall, used, _ = epoch(copy.deepcopy(init), sources[name], seed)
            times[name].append(wall)
            cpu[name].append(used)
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {times[n][-1]:.3f} s"
                                                     for n in names), flush=True)
    med = {k: median(v) for k, v in times.items()}
    ratios = {k: med[k] / med["in_memory"] for k in names[1:]}
    paired = {k: median([s / m for s, m in zip(times[k], times["in_memory"])])
              for k in names[1:]}
    return {
        "benchmark": NAME,
        "command": " ".join(["python benchmarks/streaming_vs_memory.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "setup": {"model": "lenet-300-100", "n_train": n_train, "n_test": n_test,
                  "batch_size": BATCH, "workers": workers, "rounds": rounds, "seed": seed,
                  "streamed_dataset": "uint8 (1, 28, 28) images normalised per __getitem__ "
                                      "(per_sample) or per __getitems__ batch (batched)"},
        "epoch_seconds": times, "median_epoch_seconds": med,
        "trainer_process_cpu_seconds": cpu,
        "median_trainer_process_cpu_seconds": {k: median(v) for k, v in cpu.items()},
        "ratio_over_in_memory": ratios, "paired_ratio_over_in_memory": paired,
        "target_max": TARGET,
        "pass": {k: ratios[k] <= TARGET for k in names[1:]
                 if not k.endswith(("_0_workers", "_file_descriptor"))},
        "same_weights_all_paths": same,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--n-train", type=int, default=60000)
    ap.add_argument("--n-test", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the trainer (1)")
    ap.add_argument("--no-file-descriptor", dest="file_descriptor", action="store_false",
                    help="skip the reference variant whose workers send under torch's default "
                         "file_descriptor strategy")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = run(args.rounds, args.n_train, args.n_test, args.workers, args.seed,
              args.file_descriptor)
    med = res["median_epoch_seconds"]
    print("median epoch: " + ", ".join(f"{k} {v:.3f} s" for k, v in med.items()))
    print("median CPU seconds of the training process: " + ", ".join(
        f"{k} {v:.3f}" for k, v in res["median_trainer_process_cpu_seconds"].items()))
    for k, ratio in res["ratio_over_in_memory"].items():
        ok = res["pass"].get(k)
        print(f"{k} / in_memory = {ratio:.3f} (paired "
              f"{res['paired_ratio_over_in_memory'][k]:.3f})" +
              (f"  target <= {TARGET}  {verdict(ok)}" if ok is not None else "  (reference)"))
    print(f"identical weights after one epoch on every path: {res['same_weights_all_paths']}")
    print(f"wrote {write_results(NAME, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
