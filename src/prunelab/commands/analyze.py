"""`prunelab analyze masks|lmc|gradflow`: mask overlap (Jaccard) across runs, linear-mode-
connectivity instability from a run's rewind points, and gradient flow per mask. Each writes
results.json (atomically) into its output directory and prints a short table."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prunelab.errors import ConfigError, PrunelabError


def _out(args: argparse.Namespace, kind: str) -> Path:
    if args.out:
        return Path(args.out)
    paths = getattr(args, "paths", None)
    first = Path(paths[0] if paths else args.run_dir).name
    return Path("runs") / f"analyze-{kind}-{first}"


def cmd_masks(args: argparse.Namespace) -> int:
    from prunelab import atomic
    from prunelab.landscape.mask_overlap import collect_masks, overlap_matrix
    from prunelab.report import text_table

    masks = collect_masks(args.paths, args.labels)
    res = overlap_matrix(masks)
    out = _out(args, "masks")
    with atomic.staged_directory(out) as stage:
        atomic.write_json(stage / "results.json", {"command": "analyze masks",
                                                   "inputs": [str(p) for p in args.paths],
                                                   **res})
    labels = res["labels"]
    rows = []
    for i, a in enumerate(labels):
        for j in range(i + 1, len(labels)):
            rows.append({"a": a, "b": labels[j], "jaccard": res["global"][i][j],
                         "chance": res["chance"][i][j]})
    print(text_table(rows, ["a", "b", "jaccard", "chance"]))
    print(f"wrote {out}")
    return 0


def _data_for(cfg, data_dir: str | None):
    from prunelab.data import load_dataset

    return load_dataset(cfg.dataset, data_dir=data_dir or cfg.data_dir, seed=cfg.train.seed,
                        **cfg.data_options)


def cmd_lmc(args: argparse.Namespace) -> int:
    from prunelab import atomic
    from prunelab.landscape.lmc import instability_from_run
    from prunelab.landscape.mask_overlap import collect_masks
    from prunelab.report import text_table
    from prunelab.runs import load_run

    loaded = load_run(args.run_dir)
    masks = None
    if args.masks:
        found = collect_masks([args.masks])
        if len(found) != 1:
            raise ConfigError(f"--masks {args.masks} holds {len(found)} masks (an IMP "
                              "directory?); give one masks.pt or run directory")
        masks = next(iter(found.values()))
    data = _data_for(loaded.config, args.data_dir)
    results = instability_from_run(args.run_dir, args.rewind, masks=masks, data=data,
                                   seeds=tuple(args.seeds) if args.seeds else None,
                                   points=args.points, bn=args.bn,
                                   progress=False if args.quiet else None)
    out = _out(args, "lmc")
    with atomic.staged_directory(out) as stage:
        atomic.write_json(stage / "results.json", {
            "command": "analyze lmc", "run": str(args.run_dir), "rewind": list(args.rewind),
            "masks": args.masks, "definition": "max_t E(t) - (E(0) + E(1)) / 2",
            "results": [r.to_dict() for r in results]})
    rows: list[dict[str, Any]] = []
    for spec, r in zip(args.rewind, results):
        b = r.barriers()
        rows.append({"rewind": spec, "step": r.start_step,
                     "test_error_barrier": b["test"]["error"],
                     "test_loss_barrier": b["test"]["loss"],
                     "train_loss_barrier": b["train"]["loss"]})
    print(text_table(rows, list(rows[0])))
    print(f"wrote {out}")
    return 0


def cmd_gradflow(args: argparse.Namespace) -> int:
    import torch

    from prunelab import atomic
    from prunelab.init_scores import sample_batches
    from prunelab.landscape.gradflow import gradient_flow
    from prunelab.report import text_table
    from prunelab.runs import load_run

    entries = {}
    rows = []
    for run_dir in args.paths:
        loaded = load_run(run_dir)
        if loaded.masks is None:
            raise ConfigError(f"run {run_dir} has no masks.pt: gradient flow is per mask")
        model = loaded.model
        if args.state != "final":
            model.load_state_dict(loaded.state(args.state))
        data = _data_for(loaded.config, args.data_dir)
        batch = sample_batches(data, 1, args.batch_size, torch.Generator().manual_seed(0))[0]
        res = gradient_flow(model, batch, loaded.masks, max_samples=args.samples)
        entries[str(run_dir)] = res
        s = res["jacobian"]["summary"]
        rows.append({"run": str(run_dir), "grad_norm": res["gradient_norms"]["global"],
                     "sv_mean": s["mean"], "sv_max": s["max"], "sv_min": s["min"]})
    out = _out(args, "gradflow")
    with atomic.staged_directory(out) as stage:
        atomic.write_json(stage / "results.json", {
            "command": "analyze gradflow", "state": args.state,
            "batch_size": args.batch_size, "samples": args.samples, "runs": entries})
    print(text_table(rows, ["run", "grad_norm", "sv_mean", "sv_max", "sv_min"]))
    print(f"wrote {out}")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise PrunelabError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise PrunelabError(f"expected a positive integer, got {value}")
    return value


def register(subparsers) -> None:
    """Add `prunelab analyze masks|lmc|gradflow`."""
    p = subparsers.add_parser("analyze", help="mask overlap, linear-mode-connectivity "
                              "instability and gradient flow of sparse runs")
    sub = p.add_subparsers(dest="analyze_command", parser_class=type(p), metavar="KIND")

    q = sub.add_parser("masks", help="Jaccard overlap of masks (per layer and global)")
    q.add_argument("paths", nargs="+", help="masks.pt files, run directories or IMP "
                   "directories (every level)")
    q.add_argument("--labels", nargs="+", help="one label per path")
    q.add_argument("--out", help="output directory")
    q.set_defaults(func=cmd_masks)

    q = sub.add_parser("lmc", help="instability (Frankle et al. 2020) from a run's rewind "
                       "points: two copies per point, the barrier between them")
    q.add_argument("run_dir", help="a finished run directory with the rewind checkpoints")
    q.add_argument("--rewind", nargs="+", required=True,
                   help="rewind points: 0 (init), K (epoch K) or Kit (step K)")
    q.add_argument("--masks", help="train the copies sparse under this mask (masks.pt or run "
                   "directory)")
    q.add_argument("--seeds", nargs=2, type=int, metavar=("A", "B"),
                   help="data-order seeds of the two copies (default: seed+1, seed+2)")
    q.add_argument("--points", type=int, default=11, help="points on the line (default 11)")
    q.add_argument("--bn", default="recompute", choices=["keep", "recompute"])
    q.add_argument("--data-dir")
    q.add_argument("--out")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=cmd_lmc)

    q = sub.add_parser("gradflow", help="per-layer gradient norms and input-output Jacobian "
                       "singular values of masked runs")
    q.add_argument("paths", nargs="+", help="run directories with masks.pt")
    q.add_argument("--state", default="init", help="init (default), final, epochK or stepK")
    q.add_argument("--batch-size", type=_positive, default=128)
    q.add_argument("--samples", type=_positive, default=16,
                   help="samples whose Jacobian is decomposed (default 16)")
    q.add_argument("--data-dir")
    q.add_argument("--out")
    q.set_defaults(func=cmd_gradflow)

    def need_kind(args: argparse.Namespace) -> int:
        raise PrunelabError("'prunelab analyze' needs a kind: masks, lmc or gradflow")

    p.set_defaults(func=need_kind)
