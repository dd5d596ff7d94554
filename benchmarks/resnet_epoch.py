"""ResNet-20 on CIFAR-shaped data: one training epoch dense vs masked (prunelab's
MaskEnforcer, a fixed 90% mask) vs `torch.nn.utils.prune` (the same mask as a
reparametrisation), side by side in one run, as images per second; optionally with bf16
autocast and channels_last (GPU paths).

The prepared GPU benchmark of issue 19 item 4: run it on a lent GPU with
`python benchmarks/resnet_epoch.py --device cuda --n 50000 --variants fp32,bf16,bf16-cl` and
record the device name it prints in benchmarks/RESULTS.md. On the CPU it runs on a subset
(`--n 1024 --width 0.5`) so the ratios are measured here too.

The three ways train the same network from the same init on the same random CIFAR-shaped
images (3x32x32, 10 classes) in the same order with SGD momentum 0.9; each way is timed over
`--rounds` epochs, alternating, after one warm-up epoch each; the median epoch is reported.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from benchcommon import machine_info, median, write_results
from torch.nn import functional as F
from torch.nn.utils import prune

from prunelab.masks import MaskEnforcer, full_masks
from prunelab.models import build_model
from prunelab.selection import select_masks
from prunelab.train import autocast


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _epoch(model, opt, x, y, batch, device, precision, channels_last) -> float:
    cast = autocast(device, precision)
    model.train()
    _sync(device)
    start = time.perf_counter()
    for i in range(0, x.shape[0], batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with cast:
            loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=1024, help="images per epoch")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", default="fp32",
                   help="comma list of fp32, bf16, fp32-cl, bf16-cl (cl: channels_last)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (args.n,), generator=g).to(device)
    torch.manual_seed(0)
    base = build_model("resnet20", (3, 32, 32), 10, width=args.width).to(device)
    scores = {n: torch.rand(m.shape, generator=g).to(device)
              for n, m in full_masks(base, keep_first_last=True).items()}
    masks = select_masks(scores, sparsity=args.sparsity, scope="layer")
    rows = []
    for variant in args.variants.split(","):
        precision = "bf16" if variant.startswith("bf16") else "fp32"
        cl = variant.endswith("-cl")
        ways = {}
        for way in ("dense", "masked", "torch_prune"):
            model = copy.deepcopy(base)
            if cl:
                model = model.to(memory_format=torch.channels_last)
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            if way == "masked":
                MaskEnforcer(model, masks).attach(opt)
            elif way == "torch_prune":
                modules = dict(model.named_modules())
                for name, m in masks.items():
                    mod, _, attr = name.rpartition(".")
                    prune.custom_from_mask(modules[mod], attr, m)
                opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            _epoch(model, opt, x, y, args.batch, device, precision, cl)  # warm-up
            ways[way] = (model, opt, [])
        for _ in range(args.rounds):
            for model, opt, times in ways.values():
                times.append(_epoch(model, opt, x, y, args.batch, device, precision, cl))
        med = {way: median(t) for way, (_, _, t) in ways.items()}
        row = {"variant": variant, **{f"{w}_s": med[w] for w in med},
               **{f"{w}_images_per_s": args.n / med[w] for w in med},
               "masked_vs_dense": med["masked"] / med["dense"],
               "torch_prune_vs_dense": med["torch_prune"] / med["dense"],
               "masked_vs_torch_prune": med["masked"] / med["torch_prune"]}
        rows.append(row)
        print(f"{variant}: dense {row['dense_images_per_s']:.0f} img/s, masked "
              f"{row['masked_images_per_s']:.0f} img/s ({row['masked_vs_dense']:.3f}x the dense "
              f"epoch), torch.nn.utils.prune {row['torch_prune_images_per_s']:.0f} img/s "
              f"({row['torch_prune_vs_dense']:.3f}x)")
    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else machine_info()["cpu_model"])
    print(f"device: {device_name}")
    write_results("resnet_epoch", {"machine": machine_info(), "device": device_name,
                                   "settings": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
