"""The `prunelab` command: parsing only; the work is done by library functions.

User mistakes end with one line on stderr ("prunelab: error: ...") and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError
from prunelab.signals import RunInterrupted


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not the usage block
        raise PrunelabError(f"{message} (see '{self.prog} --help')")


def _progress(args: argparse.Namespace) -> bool | None:
    return False if getattr(args, "quiet", False) else None


def _print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    from prunelab.report import text_table

    print(text_table(rows, columns))


# ----------------------------------------------------------------------------- train


def _add_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int)
    g.add_argument("--steps", type=int, help="stop after this many steps (overrides epochs)")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--optimizer", help="sgd, adam or adamw")
    g.add_argument("--lr", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--lr-schedule", help="constant, cosine, step or multistep")
    g.add_argument("--seed", type=int)
    g.add_argument("--checkpoint-steps", type=_int_list, metavar="K[,K...]",
                   help="also save the weights after these steps (for rewind:Kit)")
    g.add_argument("--checkpoint-every", type=_positive_int, metavar="N",
                   help="also write the resumable checkpoint every N steps (it is always "
                   "written at the end of each epoch)")
    g.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    g.add_argument("--precision", help="fp32 (default), bf16 (autocast; CPU or GPU) or fp16 "
                   "(autocast with loss scaling; CUDA only)")
    g.add_argument("--channels-last", action="store_const", const=True, default=None,
                   help="NHWC memory format for conv weights and inputs (GPU convs)")
    g.add_argument("--quiet", action="store_true", help="no progress bar, no per-epoch lines")
    g.add_argument("--tensorboard", metavar="DIR",
                   help="also write TensorBoard scalars to DIR (needs the tensorboard package)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _epoch_log(args: argparse.Namespace):
    """One line per epoch on stderr when it is not a terminal (logs, pipes; a terminal shows
    the progress bar instead); none with --quiet."""
    if getattr(args, "quiet", False) or sys.stderr.isatty():
        return None
    from prunelab.runlog import stderr_line

    return stderr_line


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers K[,K...], got '{text}'") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected step numbers >= 1, got '{text}'")
    return values


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("epochs", "steps", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
            "lr_schedule", "seed", "device", "checkpoint_steps", "precision", "channels_last",
            "checkpoint_every")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def _refuse_existing(out: Path, overwrite: bool) -> None:
    """A finished run (or any other non-empty folder) at `out` is only replaced on request,
    and the refusal comes before any training."""
    if overwrite or not out.exists():
        return
    if out.is_file():
        raise PrunelabError(f"--out {out} is a file; give a directory")
    if (out / "results.json").is_file():
        raise PrunelabError(f"{out} already holds a finished run; give --overwrite to replace "
                            "it (with everything inside, e.g. hessian/) or another --out")
    if any(out.iterdir()):
        raise PrunelabError(f"{out} exists and is not empty; give --overwrite to replace it "
                            "or another --out")


def cmd_train(args: argparse.Namespace) -> int:
    from prunelab.config import RunConfig, TrainConfig, load_config, parse_options
    from prunelab.data import DATASETS, _looks_like_path
    from prunelab.errors import UnknownNameError
    from prunelab.methods import list_methods, method_options
    from prunelab.models import MODELS

    if args.method == "list":
        for name in list_methods():
            print(f"{name:12s} options: {', '.join(method_options(name)) or 'none'}")
        return 0
    if args.resume and not args.out:
        raise PrunelabError("--resume needs --out DIR: the output the interrupted run was "
                            "writing")
    if args.config:
        cfg = load_config(args.config)
    elif args.resume:
        cfg = _interrupted_config(Path(args.out))
    else:
        cfg = RunConfig()
    if args.model:
        cfg.model = args.model
    if args.dataset:
        cfg.dataset = args.dataset
    if args.method:
        cfg.method = args.method
    if args.data_dir:
        cfg.data_dir = args.data_dir
    if cfg.model not in MODELS:
        raise UnknownNameError("model", cfg.model, MODELS)
    if cfg.dataset not in DATASETS and not _looks_like_path(cfg.dataset):
        raise UnknownNameError("dataset", cfg.dataset, DATASETS)
    if cfg.method not in list_methods():
        raise UnknownNameError("method", cfg.method, list_methods())
    cfg.model_options.update(parse_options(args.model_option, "--model-option"))
    cfg.data_options.update(parse_options(args.data_option, "--data-option"))
    cfg.method_options.update(parse_options(args.option, "--option"))
    if args.sparsity is not None:
        if "sparsity" not in method_options(cfg.method):
            raise PrunelabError(f"method '{cfg.method}' takes no --sparsity")
        cfg.method_options["sparsity"] = args.sparsity
    if args.keep_first_last:
        if "keep_first_last" not in method_options(cfg.method):
            raise PrunelabError(f"method '{cfg.method}' takes no --keep-first-last")
        cfg.method_options["keep_first_last"] = True
    if args.weight is not None:
        if "weight" not in method_options(cfg.method):
            raise PrunelabError(f"method '{cfg.method}' takes no --weight")
        cfg.method_options["weight"] = args.weight
    cfg.train = TrainConfig(**{**cfg.train.__dict__, **_train_overrides(args)}).validate()
    out = Path(args.out) if args.out else Path("runs") / cfg.run_name()
    _refuse_existing(out, args.overwrite)
    if args.tensorboard:
        from prunelab.runlog import check_tensorboard

        check_tensorboard()  # a missing package: one line, before any work
    from prunelab import dist

    hint = f"continue with: prunelab train --resume --out {out} (or rerun the same command)"
    if dist.launched():  # started by torchrun: one data-parallel run over its processes
        return _train_distributed(cfg, out, args, hint)
    if cfg.method == "imp":
        from prunelab.methods.lottery import IMPConfig, run_imp, summarize

        results = run_imp(cfg, out, progress=_progress(args), log=_epoch_log(args),
                          resume_hint=hint)
        rows = summarize(IMPConfig(**cfg.method_options).validate(), results)["levels"]
        _print_table(rows, ["level", "weight_sparsity", "test_accuracy", "test_loss"])
    else:
        from prunelab.train import run

        result = run(cfg, out, progress=_progress(args), log=_epoch_log(args),
                     tensorboard=args.tensorboard, resume_hint=hint)
        _print_table([_result_row(cfg, result)], ["method", "test_accuracy", "test_loss",
                                                  "weight_sparsity", "seconds"])
    print(f"wrote {out}")
    return 0


def _interrupted_config(out: Path):
    """The config an interrupted run at `out` was started with (kept in its staging folder)."""
    from prunelab.atomic import stage_path
    from prunelab.config import load_config

    recorded = stage_path(out) / "config.yaml"
    if not recorded.is_file():
        raise PrunelabError(f"nothing to resume at {out}: no interrupted run's staging folder "
                            f"({stage_path(out)}) with a config.yaml")
    return load_config(recorded)


def _result_row(cfg, result) -> dict[str, Any]:
    return {"method": cfg.method, "test_accuracy": result.final.get("test_accuracy"),
            "test_loss": result.final.get("test_loss"),
            "weight_sparsity": result.sparsity["global"]["weight_sparsity"],
            "seconds": result.final["train_seconds"]}


def _train_distributed(cfg, out: Path, args: argparse.Namespace, hint: str) -> int:
    """One run over torchrun's processes (DistributedDataParallel; gloo on the CPU): rank 0
    prints and writes, the others train their share of every batch."""
    from prunelab import dist
    from prunelab.train import resolve_device, run

    if cfg.method == "imp":
        raise PrunelabError("method 'imp' is not supported under torchrun yet; run it in one "
                            "process (each level is a full training run)")
    platform = dist.detect(resolve_device(cfg.train.device))
    try:
        result = run(cfg, out, progress=_progress(args) and platform.is_primary,
                     platform=platform, log=_epoch_log(args), resume_hint=hint,
                     tensorboard=args.tensorboard)
        platform.barrier()
    finally:
        platform.shutdown()
    if platform.is_primary:
        _print_table([_result_row(cfg, result)], ["method", "test_accuracy", "test_loss",
                                                  "weight_sparsity", "seconds"])
        print(f"wrote {out} ({platform.world_size} processes, {platform.backend})")
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from prunelab.retrain import parse_init, retrain

    parse_init(args.init)
    run_dir = Path(args.run_dir)
    tag = args.init.replace(":", "-")
    out = Path(args.out) if args.out else run_dir.with_name(f"{run_dir.name}-retrain-{tag}")
    _refuse_existing(out, args.overwrite)
    result = retrain(run_dir, args.init, out_dir=out, seed=args.seed, progress=_progress(args),
                     log=_epoch_log(args), resume_hint="rerun the same command to continue")
    row = {"init": args.init, "test_accuracy": result.final["test_accuracy"],
           "test_loss": result.final["test_loss"],
           "weight_sparsity": result.sparsity["global"]["weight_sparsity"]}
    _print_table([row], list(row))
    print(f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------- data


def cmd_data(args: argparse.Namespace) -> int:
    from prunelab.data import BUILT_IN, DATASETS, dataset_options, images, load_dataset
    from prunelab.errors import UnknownNameError

    if args.action == "list":
        for name in DATASETS:
            kind = "built-in" if name in BUILT_IN else "data directory"
            print(f"{name:16s} {kind:15s} options: {', '.join(dataset_options(name))}")
        print(f"{'imagefolder:PATH':16s} {'class folders':15s} options: "
              f"{', '.join(dataset_options('imagefolder'))}")
        print("or a path to an .arff, .csv or libsvm file")
        return 0
    if not args.name:
        raise PrunelabError(f"'prunelab data {args.action}' needs a dataset name")
    if args.action == "download":
        if args.name not in images.CANONICAL_FILES:
            raise UnknownNameError("downloadable dataset", args.name, images.CANONICAL_FILES)
        paths = images.download(args.name, args.data_dir)
        for p in paths:
            print(p)
        return 0
    from prunelab.config import parse_options

    options = parse_options(args.data_option, "--data-option")
    data = load_dataset(args.name, data_dir=args.data_dir, **options)
    print(json.dumps(data.summary(), indent=2))
    return 0


# ----------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from prunelab.experiments.demo import run_demo

    run_demo(Path(args.out), quick=args.quick, progress=_progress(args), log=print)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from prunelab.experiments import registry

    if args.name == "list":
        for name, desc in registry.available().items():
            print(f"{name:18s} {desc}")
        return 0
    run = registry.get(args.name)
    out = Path(args.out) if args.out else Path("runs") / f"reproduce-{args.name}"
    import os

    previous = os.environ.get("PRUNELAB_DATA")
    if args.data_dir:  # what every data loader of the reproduction searches first
        if not Path(args.data_dir).is_dir():
            raise PrunelabError(f"--data-dir {args.data_dir} is not a directory")
        os.environ["PRUNELAB_DATA"] = str(Path(args.data_dir).resolve())
    extra = {}
    if args.processes is not None:
        parallel = registry.with_processes()
        if args.name not in parallel:
            raise PrunelabError(f"reproduction '{args.name}' runs in one process; --processes "
                                f"is for: {', '.join(parallel) or 'none'}")
        extra["processes"] = args.processes
    try:
        results = run(out, quick=args.quick, progress=_progress(args), log=print, **extra)
    finally:
        if previous is None:
            os.environ.pop("PRUNELAB_DATA", None)
        else:
            os.environ["PRUNELAB_DATA"] = previous
    print(f"wrote {out}/report.md")
    skipped = (results or {}).get("skipped_sections") or []
    if skipped:
        for s in skipped:
            print(f"prunelab: skipped {s['section']}: {s['reason']}", file=sys.stderr)
        if not args.allow_missing_data:
            print(f"prunelab: error: {len(skipped)} section(s) of '{args.name}' were skipped for "
                  "missing data (listed above; the report says so too); give --data-dir DIR, "
                  "or --allow-missing-data to accept a partial reproduction", file=sys.stderr)
            return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    from prunelab import __version__

    parser = _Parser(prog="prunelab", description="prunelab: prune neural networks and study "
                     "why sparse networks are hard to train.")
    parser.add_argument("--version", action="version", version=f"prunelab {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("train", help="train one model with a pruning method")
    p.add_argument("--config", help="a run config YAML (flags override it)")
    p.add_argument("--model", help="registered model name (see the README)")
    p.add_argument("--dataset", help="registered dataset name or a data file path")
    p.add_argument("--method", help="a method name ('prunelab train --method list' lists them)")
    p.add_argument("--sparsity", type=float, help="target weight sparsity in [0, 1)")
    p.add_argument("--keep-first-last", action="store_true",
                   help="keep the first and last Linear/Conv layer dense (Gale et al.)")
    p.add_argument("--weight", type=float,
                   help="biobjective: weight of the cross-entropy in (0, 1] (l1 gets 1 - weight)")
    p.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                   help="a method option, e.g. -o begin=0.2 -o scope=layer")
    p.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                   help="e.g. --model-option widths=[300,100]")
    p.add_argument("--data-option", action="append", metavar="KEY=VALUE",
                   help="e.g. --data-option n_irrelevant=20")
    p.add_argument("--data-dir", help="directory holding data files (else $PRUNELAB_DATA)")
    p.add_argument("--out", help="run directory (default runs/NAME-HASH)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished run at --out (refused otherwise)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run at --out with the config it was started "
                   "with (flags given override it); rerunning the same command also continues")
    _add_train_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("retrain", help="retrain a run's mask: scratch, original or rewind:K; "
                       "a run that removed units (units, bernoulli): its final architecture "
                       "from scratch")
    p.add_argument("run_dir")
    p.add_argument("--init", required=True, help="scratch | original | rewind:K | rewind:Kit")
    p.add_argument("--seed", type=int, help="init seed for scratch (default: run seed + 1000)")
    p.add_argument("--out")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished run at --out (refused otherwise)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("data", help="list, download or describe datasets")
    p.add_argument("action", choices=["list", "download", "info"])
    p.add_argument("name", nargs="?", help="a dataset name or imagefolder:PATH")
    p.add_argument("--data-dir")
    p.add_argument("--data-option", action="append", metavar="KEY=VALUE",
                   help="info: dataset options, e.g. --data-option validation=0.1")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("demo", help="the main job on built-in data (minutes on a laptop)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="fewer sparsities and seeds")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("reproduce", help="reproduce one paper claim end to end, with a report")
    p.add_argument("name", help="a reproduction name, or 'list'")
    p.add_argument("--quick", action="store_true", help="a smaller run (minutes)")
    p.add_argument("--out")
    p.add_argument("--data-dir", help="directory holding the data sets (mnist/, tabular/; "
                   "else $PRUNELAB_DATA)")
    p.add_argument("--allow-missing-data", action="store_true",
                   help="exit 0 even when sections were skipped for missing data")
    p.add_argument("--processes", type=_positive_int, metavar="N",
                   help="train N runs at a time in forked processes, one thread each (the "
                   "same results; reproductions that support it: bernoulli)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_reproduce)

    from prunelab.commands import register_all

    register_all(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `prunelab` console script."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return args.func(args)
    except PrunelabError as exc:
        message = " ".join(str(exc).split())  # always one line
        print(f"prunelab: error: {message}", file=sys.stderr)
        return 2
    except OSError as exc:  # permission, read-only or full disk, a file in the path
        from prunelab.errors import os_error_message

        print(f"prunelab: error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except RunInterrupted as exc:  # a checkpoint was written: say how to continue
        print(f"prunelab: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("prunelab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
