"""How a thin convolution's CPU time scales with its channel counts: the reason a shrunk
conv-small does not reach its FLOP-ideal speedup (issue 4, `shrink_speedup.py`).

Times one 5x5 convolution on conv-small's conv2 input shape (batch 256, 12x12 maps) for
input channels x output channels from the grid below, with oneDNN and with PyTorch's native
path, in one process, interleaved over `--rounds` rounds. For each shape it prints the best of
the two backends and, against the dense conv2 (8 -> 16), the time ratio next to the FLOP ratio:

    speedup = t(8 -> 16) / t(cin -> cout),  ideal = FLOPs(8 -> 16) / FLOPs(cin -> cout)

If time followed FLOPs, speedup would equal ideal. On a CPU whose vector unit holds 16 floats
(AVX-512), oneDNN computes output channels in blocks of 16, so 7 output channels cost about
what 16 do and the time follows the input channels only.

Run: .venv/bin/python benchmarks/conv_channel_granularity.py [--rounds 7 --reps 20]
Writes benchmarks/results/conv_channel_granularity.json.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch
from benchcommon import alternating_us, machine_info, median, write_results
from torch import nn

from prunelab.inference import BackendConv2d

NAME = "conv_channel_granularity"
BATCH, SIDE, KERNEL = 256, 12, 5
IN_CHANNELS = (1, 2, 4, 8)
OUT_CHANNELS = (1, 4, 7, 8, 12, 16)
REFERENCE = (8, 16)


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [v for v in ("avx2", "avx512f", "fma") if v in have]
    except OSError:
        pass
    return []


def _conv(x: torch.Tensor, cout: int, onednn: bool) -> Callable[[], object]:
    conv = BackendConv2d.from_conv(nn.Conv2d(x.shape[1], cout, KERNEL, bias=False), onednn)
    return lambda: conv(x)


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    shapes = [(ci, co) for ci in IN_CHANNELS for co in OUT_CHANNELS]
    calls = {}
    torch.manual_seed(0)
    for ci, co in shapes:
        x = torch.randn(BATCH, ci, SIDE, SIDE, generator=gen)
        for backend in ("oneDNN", "native"):
            calls[ci, co, backend] = _conv(x, co, backend == "oneDNN")
    times = {key: [us * 1e-6 for us in ts]  # seconds per call
             for key, ts in alternating_us(calls, args.rounds, args.reps, warmup=3).items()}
    out = (SIDE - KERNEL + 1) ** 2

    def flops(ci: int, co: int) -> float:
        return 2.0 * BATCH * out * ci * co * KERNEL * KERNEL

    best = {(ci, co): min(("oneDNN", "native"), key=lambda b: median(times[ci, co, b]))
            for ci, co in shapes}
    ms = {s: median(times[(*s, best[s])]) * 1e3 for s in shapes}
    ref_ms, ref_flops = ms[REFERENCE], flops(*REFERENCE)
    rows = []
    print(f"5x5 conv, batch {BATCH}, {SIDE}x{SIDE} maps, {args.threads} thread(s); "
          f"CPU vector flags {', '.join(_cpu_flags()) or 'unknown'}")
    print(f"{'in->out':>8} {'oneDNN ms':>10} {'native ms':>10} {'GFLOP/s':>8} "
          f"{'speedup vs 8->16':>17} {'ideal':>7} {'efficiency':>10}")
    for ci, co in shapes:
        t_on = median(times[ci, co, "oneDNN"]) * 1e3
        t_off = median(times[ci, co, "native"]) * 1e3
        speedup, ideal = ref_ms / ms[ci, co], ref_flops / flops(ci, co)
        rows.append({"in_channels": ci, "out_channels": co, "ms_onednn": t_on,
                     "ms_native": t_off, "best": best[ci, co],
                     "gflops": flops(ci, co) / ms[ci, co] / 1e6,
                     "speedup_vs_reference": speedup, "ideal_speedup": ideal,
                     "efficiency": speedup / ideal})
        print(f"{ci:>3}->{co:<4} {t_on:10.3f} {t_off:10.3f} {rows[-1]['gflops']:8.0f} "
              f"{speedup:16.2f}x {ideal:6.2f}x {speedup / ideal:10.0%}")
    res = {"benchmark": NAME,
           "command": "python benchmarks/conv_channel_granularity.py " + " ".join(sys.argv[1:]),
           "machine": {**machine_info(), "cpu_vector_flags": _cpu_flags()},
           "setup": {"batch_size": BATCH, "side": SIDE, "kernel": KERNEL,
                     "rounds": args.rounds, "reps": args.reps, "threads": args.threads,
                     "reference": list(REFERENCE)},
           "rows": rows}
    print(f"wrote {write_results(NAME, res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
