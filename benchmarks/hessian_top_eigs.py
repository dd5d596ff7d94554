"""Top-5 Hessian eigenvalues of LeNet-300-100 on 2k MNIST samples at tolerance 1e-3:
prunelab (ARPACK Lanczos on forward-over-reverse products) vs PyHessian's power iteration with
deflation, side by side in one process.

Both use the same briefly trained model, the same 2,000 samples as one full batch, float32 and
relative tolerance 1e-3 (PyHessian: `eigenvalues(top_n=5, tol=1e-3, maxIter=100)`; prunelab:
`top_eigenvalues(op, 5, tol=1e-3)`). Each method runs `--rounds` times, alternating which goes
first; the median wall time is reported with the number of Hessian-vector products (PyHessian's
are counted by wrapping its `hessian_vector_product`). Accuracy of both is measured against a
tight prunelab run (tol 1e-8).

PyHessian is GPL and is never a dependency of prunelab: install it outside the project
environment, e.g.
    .venv/bin/pip download --no-deps -d /tmp/pyh pyhessian
    .venv/bin/pip install --no-deps --target benchmarks/.vendor /tmp/pyh/PyHessian-*.whl
This script adds benchmarks/.vendor to sys.path only here; without it, it compares against
a plain power iteration with deflation written below and says so.

Targets: products(prunelab) < products(PyHessian) and time(prunelab) < time(PyHessian).
Run: .venv/bin/python benchmarks/hessian_top_eigs.py [--rounds 3] [--samples 2000]
Writes benchmarks/results/hessian_top_eigs.json.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from typing import Any

import numpy as np
import torch
from benchcommon import BENCH_DIR, machine_info, median, verdict, write_results
from torch.nn import functional as F

from prunelab.data import load_dataset
from prunelab.landscape.hessian import HessianOperator
from prunelab.landscape.spectrum import top_eigenvalues
from prunelab.models import build_model

NAME = "hessian_top_eigs"
TOL = 1e-3
TOP_N = 5


def _train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
    """A few epochs of SGD so the spectrum is that of a trained net, not of the init."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], 128):
            idx = order[i : i + 128]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.zero_grad(set_to_none=True)


def run_prunelab(model, x, y) -> dict[str, Any]:
    t0 = time.perf_counter()
    op = HessianOperator(model, x, y)
    res = top_eigenvalues(op, TOP_N, tol=TOL, seed=0)
    return {"seconds": time.perf_counter() - t0, "products": res.n_products,
            "eigenvalues": sorted(res.values.tolist(), reverse=True)}


def _load_pyhessian():
    vendor = BENCH_DIR / ".vendor"
    if vendor.is_dir() and str(vendor) not in sys.path:
        sys.path.insert(0, str(vendor))
    import importlib

    try:  # the package re-exports a class named `hessian`, so fetch the module itself
        return importlib.import_module("pyhessian.hessian")
    except ImportError:
        return None


def run_pyhessian(ph, model, x, y) -> dict[str, Any]:
    model = copy.deepcopy(model)
    counter = {"n": 0}
    original = ph.hessian_vector_product

    def counted(*args, **kwargs):
        counter["n"] += 1
        return original(*args, **kwargs)

    ph.hessian_vector_product = counted
    try:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        comp = ph.hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        vals, _ = comp.eigenvalues(maxIter=100, tol=TOL, top_n=TOP_N)
        seconds = time.perf_counter() - t0
    finally:
        ph.hessian_vector_product = original
    return {"seconds": seconds, "products": counter["n"],
            "eigenvalues": sorted((float(v) for v in vals), reverse=True)}


def run_power_baseline(model, x, y) -> dict[str, Any]:
    """Fallback when PyHessian is absent: power iteration with deflation (orthogonalise
    against found eigenvectors), stopping when the Rayleigh quotient changes by < tol
    relative, at most 100 iterations per eigenvalue, on the same products as prunelab."""
    t0 = time.perf_counter()
    op = HessianOperator(model, x, y)
    gen = torch.Generator().manual_seed(0)
    found: list[torch.Tensor] = []
    vals: list[float] = []
    for _ in range(TOP_N):
        v = torch.randn(op.dim, generator=gen)
        lam = None
        for _ in range(100):
            for u in found:
                v = v - (u @ v) * u
            v = v / v.norm()
            hv = op.matvec(v)
            new = float(v @ hv)
            v = hv
            if lam is not None and abs(new - lam) / (abs(lam) + 1e-6) < TOL:
                lam = new
                break
            lam = new
        for u in found:
            v = v - (u @ v) * u
        found.append(v / v.norm())
        vals.append(float(lam))
    return {"seconds": time.perf_counter() - t0, "products": op.n_products,
            "eigenvalues": sorted(vals, reverse=True)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=3, help="training epochs before measuring")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = os.environ.get("PRUNELAB_DATA") or str(BENCH_DIR.parent.parent / "shared" /
                                                      "data")
    data = load_dataset("mnist", data_dir=data_dir, seed=0, n_train=args.samples, n_test=100)
    x, y = data.x_train, data.y_train
    torch.manual_seed(0)
    model = build_model("lenet-300-100", data.input_shape, 10)
    _train(model, x, y, args.epochs)
    model.eval()
    ph = _load_pyhessian()
    if ph is None:
        print("PyHessian not found in benchmarks/.vendor: comparing against the plain "
              "power-iteration-with-deflation baseline in this script instead")
        baseline_name = "power-iteration baseline (this script)"

        def baseline():
            return run_power_baseline(model, x, y)
    else:
        baseline_name = "PyHessian 0.1 power iteration"

        def baseline():
            return run_pyhessian(ph, model, x, y)

    ref = top_eigenvalues(HessianOperator(model, x, y, dtype="float64"), TOP_N, tol=1e-8)
    reference = sorted(ref.values.tolist(), reverse=True)
    ours_runs, base_runs = [], []
    for r in range(args.rounds):
        order = [("ours", lambda: run_prunelab(model, x, y)), ("base", baseline)]
        if r % 2:
            order.reverse()
        for name, fn in order:
            (ours_runs if name == "ours" else base_runs).append(fn())
    ours_t = median([r["seconds"] for r in ours_runs])
    base_t = median([r["seconds"] for r in base_runs])
    ours_p = ours_runs[0]["products"]
    base_p = base_runs[0]["products"]

    def rel_err(vals):
        return float(np.max(np.abs(np.array(vals) - reference) / np.abs(reference)))

    payload = {
        "machine": machine_info(),
        "setting": {"model": "lenet-300-100", "params": sum(p.numel()
                                                           for p in model.parameters()),
                    "samples": args.samples, "train_epochs": args.epochs, "tol": TOL,
                    "top_n": TOP_N, "rounds": args.rounds, "baseline": baseline_name},
        "reference_eigenvalues_float64_tol1e-8": reference,
        "prunelab": {"median_seconds": ours_t, "products": ours_p,
                     "eigenvalues": ours_runs[0]["eigenvalues"],
                     "max_rel_error": rel_err(ours_runs[0]["eigenvalues"]),
                     "seconds_per_product": ours_t / ours_p,
                     "all_seconds": [r["seconds"] for r in ours_runs]},
        "baseline": {"median_seconds": base_t, "products": base_p,
                     "eigenvalues": base_runs[0]["eigenvalues"],
                     "max_rel_error": rel_err(base_runs[0]["eigenvalues"]),
                     "seconds_per_product": base_t / base_p,
                     "all_seconds": [r["seconds"] for r in base_runs]},
        "ratios": {"products_baseline_over_prunelab": base_p / ours_p,
                   "time_baseline_over_prunelab": base_t / ours_t},
    }
    payload["pass"] = {"fewer_products": ours_p < base_p, "less_time": ours_t < base_t}
    path = write_results(NAME, payload)
    print(f"LeNet-300-100, {args.samples} MNIST samples, top-{TOP_N}, tol {TOL:g}, "
          f"{args.rounds} rounds, {torch.get_num_threads()} thread(s)")
    print(f"reference (float64, tol 1e-8): {', '.join(f'{v:.5g}' for v in reference)}")
    for label, d in (("prunelab", payload["prunelab"]), (baseline_name, payload["baseline"])):
        print(f"{label:40s} products {d['products']:5d}  median {d['median_seconds']:7.2f} s  "
              f"({1e3 * d['seconds_per_product']:.1f} ms/product)  max rel err "
              f"{d['max_rel_error']:.2e}")
    print(f"products baseline/prunelab {payload['ratios']['products_baseline_over_prunelab']:.2f}"
          f"  [{verdict(payload['pass']['fewer_products'])}]")
    print(f"time     baseline/prunelab {payload['ratios']['time_baseline_over_prunelab']:.2f}"
          f"  [{verdict(payload['pass']['less_time'])}]")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
