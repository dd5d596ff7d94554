"""`prunelab landscape line|curve RUN_A RUN_B`: the loss along the straight line or a trained
Bezier curve between two finished runs, with a figure and results.json (written atomically)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prunelab.errors import ConfigError, PrunelabError


def _load_pair(args: argparse.Namespace):
    """Both runs, after checking they share model and data; the data from RUN_A's config."""
    from prunelab.data import load_dataset
    from prunelab.runs import load_run

    run_a, run_b = load_run(args.run_a), load_run(args.run_b)
    ca, cb = run_a.config, run_b.config
    for key in ("model", "model_options", "dataset", "data_options"):
        va, vb = getattr(ca, key), getattr(cb, key)
        if va != vb:
            raise ConfigError(f"the runs differ in {key}: {va!r} in {args.run_a} but {vb!r} in "
                              f"{args.run_b}; paths need two runs of the same model and data")
    data = load_dataset(ca.dataset, data_dir=args.data_dir or ca.data_dir, seed=ca.train.seed,
                        **ca.data_options)
    return run_a, run_b, data


def _default_out(kind: str, args: argparse.Namespace) -> Path:
    return Path("runs") / f"landscape-{kind}-{Path(args.run_a).name}-{Path(args.run_b).name}"


def _rows(paths: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, res in paths.items():
        for split, s in res.summary(0.01).items():
            rows.append({"path": name, "split": split, "loss_a": s["loss_a"],
                         "loss_b": s["loss_b"], "max_loss": s["max_loss"],
                         "barrier": s["barrier"], "monotone": s["monotone"]})
    return rows


def _figure(paths: dict[str, Any], title: str):
    from prunelab.landscape.paths import plot_path
    from prunelab.report import new_figure

    fig, axes = new_figure(2, size=(5.2, 3.8))
    for i, (name, res) in enumerate(paths.items()):
        for split, ls in (("train", "-"), ("test", "--")):
            if split in res.metrics:
                plot_path(axes[0][0], res, split=split, label=f"{name} {split}", ls=ls,
                          color=f"C{i}")
                plot_path(axes[0][1], res, split=split, metric="accuracy",
                          label=f"{name} {split}", ls=ls, color=f"C{i}")
    axes[0][0].set_ylabel("loss")
    axes[0][1].set_ylabel("accuracy")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def cmd_line(args: argparse.Namespace) -> int:
    from prunelab import atomic
    from prunelab.landscape.paths import interpolate
    from prunelab.report import save_figure, text_table

    run_a, run_b, data = _load_pair(args)
    lo, hi = args.range
    res = interpolate(run_a.model.state_dict(), run_b.model.state_dict(), data,
                      model=run_a.model, points=args.points, t_range=(lo, hi), bn=args.bn)
    res.info.update({"a": str(args.run_a), "b": str(args.run_b)})
    out = Path(args.out) if args.out else _default_out("line", args)
    with atomic.staged_directory(out) as stage:
        save_figure(_figure({"line": res}, f"{args.run_a} -> {args.run_b}"), stage / "line.png")
        atomic.write_json(stage / "results.json", {
            "command": "landscape line", "run_a": str(args.run_a), "run_b": str(args.run_b),
            "dataset": data.summary(), "line": res.to_dict(), "figure": "line.png"})
    print(text_table(_rows({"line": res}), ["path", "split", "loss_a", "loss_b", "max_loss",
                                            "barrier", "monotone"]))
    print(f"wrote {out}")
    return 0


def cmd_curve(args: argparse.Namespace) -> int:
    from prunelab import atomic
    from prunelab.landscape.curves import BezierCurve, evaluate_curve, train_curve
    from prunelab.landscape.paths import interpolate
    from prunelab.report import save_figure, text_table

    run_a, run_b, data = _load_pair(args)
    tc = run_a.config.train
    lr = args.lr if args.lr is not None else (tc.lr if tc.optimizer == "sgd" else 0.05)
    curve = BezierCurve.between(run_a.path, run_b.path, degree=args.degree,
                                subspace=args.subspace, mask=args.mask)
    epochs = args.epochs if args.epochs is not None else tc.epochs
    history = train_curve(
        curve, run_a.model, data, epochs=epochs, lr=lr,
        momentum=args.momentum if args.momentum is not None else tc.momentum,
        weight_decay=args.weight_decay if args.weight_decay is not None else tc.weight_decay,
        batch_size=args.batch_size or tc.batch_size,
        seed=args.seed if args.seed is not None else tc.seed,
        progress=False if args.quiet else None)
    res = evaluate_curve(curve, run_a.model, data, points=args.points, bn=args.bn)
    line = interpolate(run_a.model.state_dict(), run_b.model.state_dict(), data,
                       model=run_a.model, ts=res.t, bn=args.bn)
    name = f"bezier-{args.degree} ({args.subspace})"
    paths = {"line": line, name: res}
    out = Path(args.out) if args.out else _default_out(f"curve{args.degree}-{args.subspace}",
                                                       args)
    with atomic.staged_directory(out) as stage:
        curve.save(stage / "curve.pt")
        save_figure(_figure(paths, f"{args.run_a} -> {args.run_b}"), stage / "curve.png")
        atomic.write_json(stage / "results.json", {
            "command": "landscape curve", "run_a": str(args.run_a), "run_b": str(args.run_b),
            "dataset": data.summary(), "degree": args.degree, "subspace": args.subspace,
            "mask": curve.mask_mode, "training": {"epochs": epochs, "lr": lr},
            "history": history, "curve": res.to_dict(), "line": line.to_dict(),
            "curve_file": "curve.pt", "figure": "curve.png"})
    print(text_table(_rows(paths), ["path", "split", "loss_a", "loss_b", "max_loss", "barrier",
                                    "monotone"]))
    print(f"wrote {out}")
    return 0


def _range(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise PrunelabError(f"--range expects two numbers LO HI, got '{text}'") from None


def register(subparsers) -> None:
    """Add `prunelab landscape line|curve`."""
    p = subparsers.add_parser("landscape", help="loss along lines and Bezier curves between "
                              "two runs")
    sub = p.add_subparsers(dest="landscape_command", parser_class=type(p), metavar="KIND")
    def add_common(q: argparse.ArgumentParser) -> None:
        q.add_argument("run_a", help="a finished run directory")
        q.add_argument("run_b", help="a finished run directory (same model and data)")
        q.add_argument("--out", help="output directory")
        q.add_argument("--bn", default="recompute", choices=["keep", "recompute"],
                       help="BatchNorm statistics along the path (default recompute)")
        q.add_argument("--data-dir", help="directory holding data files (else the run's)")
        q.add_argument("--quiet", action="store_true")

    q = sub.add_parser("line", help="loss and accuracy along the straight line A -> B")
    add_common(q)
    q.add_argument("--points", type=int, default=29, help="points on the line (default 29)")
    q.add_argument("--range", nargs=2, type=_range, default=[-0.2, 1.2], metavar=("LO", "HI"),
                   help="range of t (default -0.2 1.2; must contain [0, 1])")
    q.set_defaults(func=cmd_line)

    q = sub.add_parser("curve", help="train and evaluate a Bezier curve A -> B")
    add_common(q)
    q.add_argument("--degree", type=int, default=2, help="2: quadratic, 3: cubic (>= 1)")
    q.add_argument("--subspace", default="dense", choices=["sparse", "dense"])
    q.add_argument("--mask", default="intersection", choices=["intersection", "union"],
                   help="sparse subspace: the endpoints' common mask or their union")
    q.add_argument("--epochs", type=int, help="curve training epochs (default: RUN_A's)")
    q.add_argument("--lr", type=float, help="SGD learning rate (default: RUN_A's)")
    q.add_argument("--momentum", type=float)
    q.add_argument("--weight-decay", type=float)
    q.add_argument("--batch-size", type=int)
    q.add_argument("--seed", type=int)
    q.add_argument("--points", type=int, default=61, help="evaluation points (default 61)")
    q.set_defaults(func=cmd_curve)

    def need_kind(args: argparse.Namespace) -> int:
        raise PrunelabError("'prunelab landscape' needs a kind: line or curve")

    p.set_defaults(func=need_kind)
