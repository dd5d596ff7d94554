"""Gathering a training minibatch: advanced indexing x[idx] (what the Trainer did) vs
x.index_select(0, idx) (what it does), side by side in one process.

A (60000, 784) float32 training set (MNIST's shape) and (60000,) labels, batches of 100 rows
from a random permutation, as the Trainer draws them; the two ways give the same tensors
(checked here). Rounds alternate; the median per batch is reported with the ratio

    index_select / indexing

Run: .venv/bin/python benchmarks/batch_gather.py [--rounds 5] [--batches 3000]
Writes benchmarks/results/batch_gather.json.
"""

from __future__ import annotations

import argparse
import sys

import torch
from benchcommon import alternating_us, report_ratio

NAME = "batch_gather"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=100)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60000, 784, generator=gen)
    y = torch.randint(0, 10, (60000,), generator=gen)
    order = torch.randperm(60000, generator=gen)
    per_epoch = 60000 // args.batch_size
    batches = [order[(b % per_epoch) * args.batch_size:(b % per_epoch + 1) * args.batch_size]
               for b in range(args.batches)]
    ways = {
        "indexing": lambda idx: (x[idx], y[idx]),
        "index_select": lambda idx: (x.index_select(0, idx), y.index_select(0, idx)),
    }
    for idx in batches[:50]:
        a, b = ways["indexing"](idx), ways["index_select"](idx)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    def every_batch(gather):
        return lambda: [gather(idx) for idx in batches]

    passes = alternating_us({k: every_batch(g) for k, g in ways.items()}, args.rounds, 1,
                            warmup=1)  # one untimed pass each: the first pays first touches
    times = {k: [t / len(batches) for t in ts] for k, ts in passes.items()}
    report_ratio(NAME, times, "batch", "index_select", "indexing", vars(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
