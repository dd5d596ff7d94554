"""Per-epoch wall time of masked training: dense vs prunelab's MaskEnforcer vs
torch.nn.utils.prune hooks, LeNet-300-100 on synthetic MNIST-shaped data.

The variants train side by side in one process: same initial weights, same batches, same
optimizer settings (SGD, momentum 0.9, lr 0.05, batch 128), 90% sparse masks for the masked
ones. `masked_prestep` is the enforcement before issue 20.6b (gradients masked only in the
optimizer's step pre-hook, so clip_grad_norm_ saw pruned gradients); `masked` is today's
(gradients masked by post-accumulate-grad hooks when backward returns, the step pre-hook only
checks that). Besides these, two breakdown variants (MaskEnforcer with only its gradient
hook, or only its re-zero hook, each timed from inside) show where the masked overhead goes
(skip them with --no-breakdown). After a warm-up epoch each,
they are interleaved over several rounds (the order rotates every round so none always runs
first or last) and the median epoch time of each is reported with the ratios

    masked / dense          target <= 1.05   (masking costs at most 5%)
    masked / masked_prestep  informational    (what masking at backward costs over before)
    torch_prune / masked    target >  1      (prunelab is faster than torch's prune hooks)

Run: .venv/bin/python benchmarks/masked_training_overhead.py [--rounds 25] [--batches 60]
     [--threads N] [--quick]
Writes benchmarks/results/masked_training_overhead.json.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from benchcommon import machine_info, median, verdict, write_results
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import prune

from prunelab.masks import MaskEnforcer, prunable_parameters, sparsity_report
from prunelab.models import build_model
from prunelab.selection import select_masks

NAME = "masked_training_overhead"
INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
BATCH = 128
LR = 0.05
MOMENTUM = 0.9
SPARSITY = 0.9
MASKED_TARGET = 1.05  # masked / dense must be <= this
VARIANTS = ("dense", "masked", "torch_prune", "masked_prestep")
# Attribution of the masked overhead (on unless --no-breakdown): MaskEnforcer with only one
# of its two optimizer hooks, to see what each pass over the weights costs.
BREAKDOWN = ("masked_grad_only", "masked_zero_only")


class Variant:
    """One model + optimizer, trained one 'epoch' (a fixed list of batches) at a time."""

    def __init__(self, name: str, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.name = name
        self.model = model
        self.optimizer = optimizer
        self.times: list[float] = []
        self.losses: list[float] = []
        self.hook_seconds = 0.0  # time inside the timed hook (breakdown variants only)
        self.hook_times: list[float] = []  # per epoch

    def epoch(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """Train over `batches` the way prunelab's Trainer does; returns the wall time."""
        model, opt = self.model, self.optimizer
        model.train()
        running = torch.zeros(())
        start = time.perf_counter()
        for xb, yb in batches:
            for group in opt.param_groups:
                group["lr"] = LR
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running = running + loss.detach() * xb.shape[0]
        mean_loss = float(running) / (len(batches) * BATCH)  # the one sync, as in Trainer
        elapsed = time.perf_counter() - start
        self.losses.append(mean_loss)
        self.hook_times.append(self.hook_seconds)
        self.hook_seconds = 0.0
        return elapsed

    def timed(self, fn: Callable[[], None]) -> Callable[..., None]:
        """Wrap a hook body so the time spent in it is added to `hook_seconds`."""
        def hook(*_: Any) -> None:
            t = time.perf_counter()
            fn()
            self.hook_seconds += time.perf_counter() - t
        return hook


def make_masks(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Global magnitude masks on the initial weights (what a one-shot prune would give)."""
    scores = {n: p.detach().abs() for n, p in prunable_parameters(model).items()}
    return select_masks(scores, sparsity=sparsity, scope="global")


def make_sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)


def build_variants(
    seed: int, breakdown: bool
) -> tuple[dict[str, Variant], dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    base = build_model("lenet-300-100", INPUT_SHAPE, NUM_CLASSES)
    masks = make_masks(base, SPARSITY)

    dense_model = copy.deepcopy(base)
    dense = Variant("dense", dense_model, make_sgd(dense_model.parameters()))

    # prunelab: masks outside the model, enforced through optimizer step hooks (as in Trainer).
    masked_model = copy.deepcopy(base)
    masked_opt = make_sgd(masked_model.parameters())
    MaskEnforcer(masked_model, masks).attach(masked_opt)
    masked = Variant("masked", masked_model, masked_opt)

    # torch.nn.utils.prune: weight = weight_orig * weight_mask recomputed by a forward pre-hook.
    tp_model = copy.deepcopy(base)
    modules = dict(tp_model.named_modules())
    for pname, mask in masks.items():
        mod_name, _, attr = pname.rpartition(".")
        prune.custom_from_mask(modules[mod_name], attr, mask)
    tp = Variant("torch_prune", tp_model, make_sgd(tp_model.parameters()))

    # The enforcement before issue 20.6b, as attach() did it for SGD: one step pre-hook.
    pre_model = copy.deepcopy(base)
    pre_opt = make_sgd(pre_model.parameters())
    pre_enforcer = MaskEnforcer(pre_model, masks)  # masks applied, no hooks
    pre_opt.register_step_pre_hook(lambda *_: pre_enforcer.mask_gradients())
    prestep = Variant("masked_prestep", pre_model, pre_opt)
    variants = [dense, masked, tp, prestep]

    if breakdown:
        for name in BREAKDOWN:
            model = copy.deepcopy(base)
            opt = make_sgd(model.parameters())
            enforcer = MaskEnforcer(model, masks)  # masks applied, no hooks yet
            v = Variant(name, model, opt)
            # The same bodies MaskEnforcer.attach registers, timed from inside the loop.
            if name == "masked_grad_only":
                opt.register_step_pre_hook(v.timed(enforcer.mask_gradients))
            else:
                opt.register_step_post_hook(v.timed(enforcer.enforce))
            variants.append(v)
    return {v.name: v for v in variants}, masks


def count_revived(variant: Variant, masks: dict[str, torch.Tensor]) -> int:
    """Pruned entries whose (effective) weight is not exactly zero."""
    params = dict(variant.model.named_parameters())
    modules = dict(variant.model.named_modules())
    n_bad = 0
    for pname, mask in masks.items():
        if pname in params:
            w = params[pname].detach()
        else:  # torch prune form: the effective weight is an attribute of the module
            mod_name, _, attr = pname.rpartition(".")
            w = getattr(modules[mod_name], attr).detach()
        n_bad += int(w[~mask].ne(0).sum())
    return n_bad


def check_masked_zero(variants: dict[str, Variant], masks: dict[str, torch.Tensor]) -> None:
    """Sanity: pruned weights are exactly zero after training, in both masked variants."""
    for label in ("masked", "torch_prune", "masked_prestep"):
        n_bad = count_revived(variants[label], masks)
        assert n_bad == 0, f"{label}: {n_bad} pruned weights are nonzero after training"
    report = sparsity_report(variants["masked"].model, masks, INPUT_SHAPE)["global"]
    expected = 1.0 - sum(int(m.sum()) for m in masks.values()) / report["weights"]
    assert report["weight_sparsity"] >= expected - 1e-9, (report["weight_sparsity"], expected)


def run(rounds: int, n_batches: int, warmup: int, seed: int, breakdown: bool = True,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    variants, masks = build_variants(seed, breakdown)
    names_all = tuple(variants)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n_batches * BATCH, *INPUT_SHAPE, generator=g)
    y = torch.randint(0, NUM_CLASSES, (n_batches * BATCH,), generator=g)
    order = torch.randperm(x.shape[0], generator=g)
    batches = []
    for b in range(n_batches):  # gathered by index, like the Trainer's shuffled batches
        idx = order[b * BATCH : (b + 1) * BATCH]
        batches.append((x[idx], y[idx]))

    for _ in range(warmup):
        for v in variants.values():
            v.epoch(batches)
    for r in range(rounds):
        k = r % len(names_all)
        for name in names_all[k:] + names_all[:k]:
            variants[name].times.append(variants[name].epoch(batches))
        log(f"round {r + 1}/{rounds}: " + "  ".join(
            f"{n} {variants[n].times[-1] * 1e3:.1f}" for n in names_all) + " (ms)")

    check_masked_zero(variants, masks)
    med = {n: median(variants[n].times) for n in names_all}
    # Paired per-round ratios too: both variants of a round ran back to back, under the same
    # background load, so their median is a second, load-robust estimate.
    paired_md = median([m / d for m, d in zip(variants["masked"].times,
                                               variants["dense"].times)])
    paired_tm = median([t / m for t, m in zip(variants["torch_prune"].times,
                                              variants["masked"].times)])
    paired_mp = median([m / p for m, p in zip(variants["masked"].times,
                                              variants["masked_prestep"].times)])
    ratio_md = med["masked"] / med["dense"]
    ratio_tm = med["torch_prune"] / med["masked"]
    sparsity = 1.0 - sum(int(m.sum()) for m in masks.values()) / sum(
        m.numel() for m in masks.values())
    return {
        "benchmark": NAME,
        "command": " ".join(["python benchmarks/masked_training_overhead.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "setup": {
            "model": "lenet-300-100",
            "input_shape": list(INPUT_SHAPE),
            "batch_size": BATCH,
            "batches_per_epoch": n_batches,
            "optimizer": f"SGD lr {LR} momentum {MOMENTUM}",
            "mask_sparsity": sparsity,
            "rounds": rounds,
            "warmup_epochs": warmup,
            "seed": seed,
            "data": "synthetic N(0,1) inputs, uniform random labels",
        },
        "epoch_seconds": {n: variants[n].times for n in names_all},
        "median_epoch_seconds": med,
        "median_step_ms": {n: med[n] / n_batches * 1e3 for n in names_all},
        "overhead_over_dense": {n: med[n] / med["dense"] - 1.0 for n in names_all},
        # Time inside each MaskEnforcer hook, measured in the training loop, per step and as a
        # fraction of the median dense step: the attribution of the masked overhead.
        "hook_us_per_step": {n: median(variants[n].hook_times) / n_batches * 1e6
                             for n in BREAKDOWN if n in variants},
        "hook_fraction_of_dense_step": {n: median(variants[n].hook_times) / med["dense"]
                                        for n in BREAKDOWN if n in variants},
        "ratios": {
            "masked_over_dense": ratio_md,
            "torch_prune_over_masked": ratio_tm,
            "paired_masked_over_dense": paired_md,
            "paired_torch_prune_over_masked": paired_tm,
            "masked_over_masked_prestep": med["masked"] / med["masked_prestep"],
            "paired_masked_over_masked_prestep": paired_mp,
        },
        "targets": {
            "masked_over_dense_max": MASKED_TARGET,
            "torch_prune_over_masked_min_exclusive": 1.0,
        },
        "pass": {
            "masked_over_dense": ratio_md <= MASKED_TARGET,
            "torch_prune_over_masked": ratio_tm > 1.0,
        },
        "final_train_loss": {n: variants[n].losses[-1] for n in names_all},
        "masked_weights_zero": True,
        # Informational: do the single-hook variants keep the pruned weights at zero too?
        "breakdown_nonzero_pruned": {n: count_revived(variants[n], masks)
                                     for n in BREAKDOWN if n in variants},
    }


def print_table(res: dict[str, Any]) -> None:
    med, r, ok = res["median_epoch_seconds"], res["ratios"], res["pass"]
    s = res["setup"]
    m = res["machine"]
    print(f"\nLeNet-300-100, batch {s['batch_size']}, {s['batches_per_epoch']} batches/epoch, "
          f"{s['mask_sparsity']:.0%} sparsity, median of {s['rounds']} interleaved rounds "
          f"({m['cpu_model']}, {m['torch_threads']} threads, torch {m['torch_version']})")
    print(f"{'variant':<18}{'epoch ms':>10}{'step ms':>10}{'vs dense':>10}")
    for n in med:
        print(f"{n:<18}{med[n] * 1e3:>10.1f}{res['median_step_ms'][n]:>10.3f}"
              f"{res['overhead_over_dense'][n]:>+10.1%}")
    print(f"masked / dense       = {r['masked_over_dense']:.3f} "
          f"(paired {r['paired_masked_over_dense']:.3f})  target <= {MASKED_TARGET}  "
          f"{verdict(ok['masked_over_dense'])}")
    print(f"torch_prune / masked = {r['torch_prune_over_masked']:.3f} "
          f"(paired {r['paired_torch_prune_over_masked']:.3f})  target > 1       "
          f"{verdict(ok['torch_prune_over_masked'])}")
    print(f"masked / masked_prestep = {r['masked_over_masked_prestep']:.3f} "
          f"(paired {r['paired_masked_over_masked_prestep']:.3f})  masking at backward vs "
          "in the step pre-hook (before 20.6b)")
    print("sanity: pruned weights exactly zero after training in masked, torch_prune and "
          "masked_prestep: OK")
    for n, us in res.get("hook_us_per_step", {}).items():
        hook = "mask_gradients (pre-step)" if n == "masked_grad_only" else "enforce (post-step)"
        print(f"time inside {hook:<26}: {us:6.1f} us/step = "
              f"{res['hook_fraction_of_dense_step'][n]:.1%} of a dense step; "
              f"{res['breakdown_nonzero_pruned'][n]} pruned weights nonzero after training "
              f"with this hook alone")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=25, help="interleaved timed rounds (25)")
    ap.add_argument("--batches", type=int, default=60, help="batches per epoch (60)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed epochs per variant (1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None,
                    help=f"JSON output (default benchmarks/results/{NAME}.json)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's default, one per core); 1 "
                         "keeps the timings sane on a machine whose cores are busy")
    ap.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                    help="skip the two single-hook variants that attribute the masked overhead")
    ap.add_argument("--quick", action="store_true", help="3 rounds of 20 batches (smoke test)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.batches = 3, 20
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    res = run(args.rounds, args.batches, args.warmup, args.seed, args.breakdown)
    print_table(res)
    path = write_results(NAME, res, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
