"""`prunelab sweep SPEC.yaml`: run (or resume) a grid of runs into a results database."""

from __future__ import annotations

import argparse


def cmd_sweep(args: argparse.Namespace) -> int:
    from prunelab.report import text_table
    from prunelab.sweep import load_spec, output_dir, run_sweep, select_tasks, summary_rows

    spec = select_tasks(load_spec(args.spec), args.task)
    out = output_dir(spec, args.out)
    if args.dry_run:
        rows = [{"task": c.task, "label": c.label, "sparsity": "-" if c.sparsity is None
                 else c.sparsity, "seed": c.seed, "run": c.config.run_name()}
                for c in spec.cells]
        print(text_table(rows, ["task", "label", "sparsity", "seed", "run"]))
        extra = f" ({spec.duplicates} duplicate cell(s) dropped)" if spec.duplicates else ""
        print(f"{len(spec.cells)} run(s){extra}; would write {out}")
        return 0
    result = run_sweep(
        spec, out, executor=args.executor, workers=args.workers, threads=args.threads,
        address=args.address, retry_failed=args.retry_failed,
        progress=False if args.quiet else None, log=print, ray_timeout=args.ray_timeout,
        overwrite=args.overwrite,
    )
    summary = summary_rows(result.rows)
    if summary:
        print(text_table(summary, ["task", "label", "sparsity", "n", "test_accuracy",
                                   "test_accuracy_std", "weight_sparsity",
                                   "weights_removed_vs_start", "train_seconds"]))
    print(f"{result.total} run(s): {result.skipped} already done, {result.recovered} recovered, "
          f"{len(result.executed)} run now, {len(result.failed)} failed "
          f"({result.seconds:.1f} s)")
    print(f"wrote {result.db}; make a report with: prunelab report {result.out}")
    return 1 if result.failed else 0


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="run a grid of runs from a YAML spec (resumable)")
    p.add_argument("spec", help="sweep spec YAML (see sweeps/*.yaml)")
    p.add_argument("--out", help="output directory (default: the spec's output, else "
                   "runs/sweeps/NAME)")
    p.add_argument("--executor", choices=["local", "ray"],
                   help="local process pool (default) or Ray")
    p.add_argument("--workers", type=int, help="parallel runs (default: one per core)")
    p.add_argument("--threads", type=int,
                   help="torch threads per run (default: cores // workers)")
    p.add_argument("--address", help="Ray cluster address HOST:PORT (default: start a local "
                   "Ray for the sweep)")
    p.add_argument("--ray-timeout", type=float, default=20.0,
                   help="seconds to reach the Ray cluster before giving up (default 20)")
    p.add_argument("--task", action="append", metavar="NAME",
                   help="run only this task of the spec (repeatable)")
    p.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of another spec's sweep in the output folder")
    p.add_argument("--dry-run", action="store_true", help="list the runs, run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)
