"""`prunelab hessian RUN_DIR`: the Hessian spectrum of a finished run (parsing and output only).

Modes (any combination): --top-k K (Lanczos, the default with K=10), --bottom-k K, --exact (all
eigenvalues, small models), --density (stochastic Lanczos quadrature), --trace (Hutch++).
--gauss-newton adds the same analysis for the Gauss-Newton part G. Writes results.json and
figures/*.png into --out (default RUN_DIR/hessian), atomically.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def register(subparsers) -> None:
    p = subparsers.add_parser("hessian", help="Hessian spectrum of a run: top-k, bottom-k, "
                              "exact, density, trace, Gauss-Newton split")
    p.add_argument("run_dir")
    p.add_argument("--top-k", type=int, help="largest K eigenvalues by Lanczos (default 10 "
                   "when no other mode is given)")
    p.add_argument("--bottom-k", type=int, help="smallest K eigenvalues by Lanczos")
    p.add_argument("--exact", action="store_true", help="dense Hessian, all eigenvalues "
                   "(small models; refused with the size when too large)")
    p.add_argument("--density", action="store_true", help="spectral density by stochastic "
                   "Lanczos quadrature")
    p.add_argument("--trace", action="store_true", help="trace by Hutch++")
    p.add_argument("--subspace", default="dense", help="dense (all parameters) or sparse (the "
                   "mask's free coordinates; needs a pruned run)")
    p.add_argument("--gauss-newton", action="store_true", help="also analyse the Gauss-Newton "
                   "part G of H = G + residual")
    p.add_argument("--samples", type=int, help="training samples used (seeded subset; default "
                   "all)")
    p.add_argument("--checkpoint", default="final", help="weights to analyse: final, init, "
                   "epochK or stepK")
    p.add_argument("--float64", action="store_true", help="products in float64")
    p.add_argument("--outlier-rule", default="bulk-edge", help="how outliers are counted: "
                   "bulk-edge (beyond the bulk's fence Q90 + 3 (Q90 - Q50); needs --exact or "
                   "--density) or largest-gap (the earlier rule: above the widest log-gap)")
    p.add_argument("--tol", type=float, default=1e-6, help="Lanczos relative tolerance")
    p.add_argument("--lanczos-steps", type=int, default=80, help="steps per SLQ run")
    p.add_argument("--vectors", type=int, default=4, help="SLQ runs (random start vectors)")
    p.add_argument("--trace-products", type=int, default=48, help="products for Hutch++")
    p.add_argument("--batch-size", type=int, help="samples per chunk (memory only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and random vectors")
    p.add_argument("--out", help="output directory (default RUN_DIR/hessian)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_hessian)


def _analyse(op, args: argparse.Namespace, top_k: int | None) -> dict[str, Any]:
    from prunelab.landscape import spectrum as S

    out: dict[str, Any] = {}
    rule = args.outlier_rule
    density = None
    if args.density:
        density = S.spectral_density(op, n_steps=args.lanczos_steps, n_vectors=args.vectors,
                                     seed=args.seed)
        out["density"] = density
    ev = None
    if args.exact:
        res = S.exact_eigenvalues(op)
        ev = res.values
        enough = ev.size >= (10 if rule == "bulk-edge" else 2)
        out["exact"] = {**res.to_dict(),
                        "outliers": S.count_outliers(ev, rule=rule).to_dict() if enough
                        else None,
                        "near_zero_fraction": S.near_zero_fraction(ev),
                        "negative_fraction": float((ev < 0).mean()),
                        "trace": float(ev.sum())}
    if top_k:
        res = S.top_eigenvalues(op, top_k, tol=args.tol, seed=args.seed)
        out["top_k"] = res.to_dict()
        if rule == "largest-gap" and top_k >= 2:
            out["top_k"]["outliers"] = S.count_outliers(res.values, rule=rule).to_dict()
        elif rule == "bulk-edge" and (density is not None or ev is not None):
            # the bulk edge needs the bulk: from the exact spectrum, else from the density
            edge_from = {"density": density} if ev is None else {}
            counted = S.count_outliers(res.values if ev is None else ev, **edge_from)
            out["top_k"]["outliers"] = counted.to_dict()
        elif rule == "bulk-edge":
            out["top_k"]["outliers"] = None
            out["top_k"]["outliers_note"] = ("the bulk-edge rule needs the bulk: add --density "
                                             "(or --exact), or use --outlier-rule largest-gap")
    if args.bottom_k:
        out["bottom_k"] = S.bottom_eigenvalues(op, args.bottom_k, tol=args.tol,
                                               seed=args.seed).to_dict()
    if args.trace:
        out["trace"] = S.hutchpp_trace(op, args.trace_products, seed=args.seed).to_dict()
    return out


def _figures(stage: Path, parts: dict[str, dict[str, Any]]) -> list[str]:
    from prunelab.landscape.spectrum import plot_density, plot_eigenvalues
    from prunelab.report import new_figure, save_figure

    made = []
    for key, title in (("exact", "all eigenvalues"), ("top_k", "top eigenvalues")):
        if any(key in p for p in parts.values()):
            fig, axes = new_figure()
            for name, p in parts.items():
                if key in p:
                    plot_eigenvalues(axes[0][0], p[key]["eigenvalues"], label=name)
            axes[0][0].set_title(title)
            axes[0][0].legend(fontsize=7)
            save_figure(fig, stage / "figures" / f"{key}.png")
            made.append(f"figures/{key}.png")
            break  # exact supersedes top-k in the figure
    if any("density" in p for p in parts.values()):
        fig, axes = new_figure()
        for name, p in parts.items():
            if "density" in p:
                plot_density(axes[0][0], p["density"], label=name)
        axes[0][0].set_title("spectral density (SLQ)")
        axes[0][0].legend(fontsize=7)
        save_figure(fig, stage / "figures" / "density.png")
        made.append("figures/density.png")
    return made


def cmd_hessian(args: argparse.Namespace) -> int:
    import torch

    from prunelab import atomic
    from prunelab.data import load_dataset, sample, split_tensors
    from prunelab.errors import ConfigError, MaskError, check_range
    from prunelab.landscape.hessian import SUBSPACES, HessianOperator
    from prunelab.landscape.spectrum import OUTLIER_RULES
    from prunelab.report import text_table
    from prunelab.runs import load_run

    if args.outlier_rule not in OUTLIER_RULES:
        raise ConfigError(f"--outlier-rule must be one of {', '.join(OUTLIER_RULES)}; got "
                          f"'{args.outlier_rule}'")
    if args.subspace not in SUBSPACES:
        raise ConfigError(f"--subspace must be one of {', '.join(SUBSPACES)}; got "
                          f"'{args.subspace}'")
    for flag, value, low in (("--top-k", args.top_k, 1), ("--bottom-k", args.bottom_k, 1),
                             ("--samples", args.samples, 1), ("--tol", args.tol, 0.0),
                             ("--lanczos-steps", args.lanczos_steps, 1),
                             ("--vectors", args.vectors, 1),
                             ("--trace-products", args.trace_products, 3),
                             ("--batch-size", args.batch_size, 1)):
        if value is not None:
            check_range(flag, value, low)
    run = load_run(args.run_dir)
    if args.subspace == "sparse" and run.masks is None:
        raise MaskError(f"--subspace sparse needs a pruned run; {args.run_dir} has no masks.pt "
                        "(use --subspace dense)")
    cfg = run.config
    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, seed=cfg.train.seed,
                        **cfg.data_options)
    summary = data.summary()
    if args.samples is not None:
        check_range("--samples", args.samples, 1, data.n_train)
        x, y = sample(data, args.samples, seed=args.seed)
        summary.update(n_train=args.samples, n_train_subset=args.samples)
    else:
        x, y = split_tensors(data, "train")
    params = None if args.checkpoint == "final" else run.state(args.checkpoint)
    model = run.model.eval()
    if params is not None:
        names = dict(model.named_parameters())
        params = {n: params[n] for n in names if n in params}
    op = HessianOperator(model, x, y, params=params, masks=run.masks,
                         subspace=args.subspace, dtype="float64" if args.float64 else None,
                         batch_size=args.batch_size)
    top_k = args.top_k
    if not (top_k or args.bottom_k or args.exact or args.density or args.trace):
        top_k = min(10, op.dim)
    for flag, value in (("--top-k", top_k), ("--bottom-k", args.bottom_k)):
        if value is not None:
            check_range(flag, value, 1, op.dim)
    start = time.perf_counter()
    grad = op.gradient().to(torch.float64)
    results: dict[str, Any] = {
        "run": str(run.path), "checkpoint": args.checkpoint, **op.describe(),
        "dataset": summary, "loss": op.loss(), "grad_norm": float(grad.norm()),
    }
    parts = {"H": _analyse(op, args, top_k)}
    if args.gauss_newton:
        parts["G"] = _analyse(op.with_kind("gauss-newton"), args, top_k)
    out = Path(args.out) if args.out else Path(args.run_dir) / "hessian"
    with atomic.staged_directory(out) as stage:
        figures = _figures(stage, parts)
        for name, p in parts.items():
            results[name] = {k: (v.to_dict() if hasattr(v, "to_dict") else v)
                             for k, v in p.items()}
        if args.gauss_newton:
            key = "exact" if args.exact else "top_k" if top_k else None
            if key:
                import numpy as np

                h = np.sort(results["H"][key]["eigenvalues"])[::-1][: top_k or 10]
                g = np.sort(results["G"][key]["eigenvalues"])[::-1][: len(h)]
                results["G_vs_H_top_relative_difference"] = (np.abs(g - h) / np.abs(h)).tolist()
        results["seconds"] = time.perf_counter() - start
        results["figures"] = figures
        atomic.write_json(stage / "results.json", results)
    rows = []
    for name, p in results.items():
        if name not in ("H", "G"):
            continue
        for key in ("top_k", "exact", "bottom_k"):
            if key in p:
                ev = p[key]["eigenvalues"]
                shown = sorted(ev, reverse=key != "bottom_k")[:5]
                rows.append({"operator": name, "mode": key, "n": len(ev),
                             "eigenvalues": " ".join(f"{v:.4g}" for v in shown),
                             "products": p[key]["n_products"]})
        if "trace" in p:
            rows.append({"operator": name, "mode": "trace", "n": 1,
                         "eigenvalues": f"{p['trace']['estimate']:.4g}",
                         "products": p["trace"]["n_products"]})
        if "density" in p:
            rows.append({"operator": name, "mode": "density", "n": p["density"]["n_vectors"],
                         "eigenvalues": "", "products": p["density"]["n_products"]})
    if rows:
        print(text_table(rows, ["operator", "mode", "n", "eigenvalues", "products"]))
    print(f"loss {results['loss']:.4g}  |grad| {results['grad_norm']:.3g}  dim {op.dim}")
    print(f"wrote {out}/results.json")
    return 0
