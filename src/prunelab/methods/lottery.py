"""Iterative magnitude pruning with weight rewinding (lottery tickets, Frankle et al.; the
recipe of open_lth): train, prune `rate` of the remaining weights by magnitude, rewind the
surviving weights to their values at the rewind point, retrain; repeat for `rounds` levels.

Level 0 is dense training; level L has sparsity 1 - (1 - rate)^L. Each level is a full run of
the same recipe (fresh optimiser and learning-rate schedule, as in open_lth)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prunelab import atomic
from prunelab.config import RunConfig, load_config, save_config
from prunelab.errors import ConfigError, PrunelabError, check_range
from prunelab.masks import prunable_parameters
from prunelab.retrain import parse_init, retrain_from
from prunelab.runlog import stderr_line
from prunelab.runs import load_result
from prunelab.selection import select_masks
from prunelab.train import TrainResult, load_data, run
from prunelab.typecheck import check_fields


@dataclass
class IMPConfig:
    """Options of iterative magnitude pruning."""

    rounds: int = 5
    rate: float | None = None  # fraction of the remaining weights pruned per round (0.2)
    rewind: str = "0"  # epoch K, or 'Kit' for step K; '0' is the original init
    scope: str = "global"
    keep_first_last: bool = False  # the first and last Linear/Conv layer stay dense
    sparsity: float | None = None  # final sparsity: sets rate = 1 - (1 - sparsity)^(1/rounds)

    def validate(self) -> IMPConfig:
        check_range("rounds", self.rounds, 1)
        if self.sparsity is not None:
            if self.rate is not None:
                raise ConfigError("method 'imp' takes rate or sparsity, not both")
            check_range("sparsity", self.sparsity, 0.0, 1.0, low_inclusive=False,
                        high_inclusive=False)
            self.rate = 1.0 - (1.0 - self.sparsity) ** (1.0 / self.rounds)
        elif self.rate is None:
            self.rate = 0.2
        check_range("rate", self.rate, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        if self.scope not in ("global", "layer"):
            raise ConfigError(f"scope must be 'global' or 'layer', got '{self.scope}'")
        parse_init(f"rewind:{self.rewind}")
        return self


def run_imp(
    cfg: RunConfig, out_dir: str | Path | None = None, *, progress: bool | None = None,
    log: Callable[[str], None] | None = None, resume: bool = True,
    resume_hint: str | None = None,
) -> list[TrainResult]:
    """Run IMP for the config (cfg.method must be 'imp'; its options are IMPConfig fields).
    With `out_dir`, writes level_0 ... level_R run directories and a summary results.json.
    Each level is its own staged run inside the IMP directory's stage: a level that finished
    before an interruption is read back, not trained again, and the level that was running
    continues from its checkpoint (`resume`), so a resumed IMP equals an uninterrupted one."""
    opts = dict(cfg.method_options)
    unknown = set(opts) - set(IMPConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"method 'imp' has no option {', '.join(sorted(unknown))}; valid: "
                          f"{', '.join(IMPConfig.__dataclass_fields__)}")
    check_fields(IMPConfig, opts, "method 'imp' option ")
    imp = IMPConfig(**opts).validate()
    _, ckpt = parse_init(f"rewind:{imp.rewind}")
    dense_cfg = copy.deepcopy(cfg)
    dense_cfg.method, dense_cfg.method_options = "dense", {}
    if ckpt.startswith("step") and ckpt != "step0":
        dense_cfg.train.checkpoint_steps = sorted({*cfg.train.checkpoint_steps, int(ckpt[4:])})
    data = load_data(dense_cfg)
    options = dict(progress=progress, log=log, resume_hint=resume_hint)

    def level_run(root: Path | None, level: int, train: Callable[..., TrainResult]
                  ) -> TrainResult:
        out = root / f"level_{level}" if root is not None else None
        if out is not None and resume and (out / "results.json").is_file():
            stderr_line(f"prunelab: imp level {level} finished before the interruption; "
                        f"read back from {out}")
            return load_result(out)
        return train(out)

    def body(root: Path | None) -> list[TrainResult]:
        if root is not None:
            save_config(root / "config.yaml", cfg)  # (a resume reads the run's config here)
        results = [level_run(root, 0, lambda out: run(
            dense_cfg, out, data=data, extra_results={"imp_level": 0}, resume=resume,
            **options))]
        states = results[0].checkpoints
        if ckpt not in states:
            raise ConfigError(f"rewind point '{ckpt}' is beyond the training run")
        masks = None
        final = results[0]
        names = list(prunable_parameters(_model_like(dense_cfg, data),
                                         keep_first_last=imp.keep_first_last))
        for level in range(1, imp.rounds + 1):
            scores = {n: final.final_state[n].abs() for n in names}
            sparsity = 1.0 - (1.0 - imp.rate) ** level
            masks = select_masks(scores, sparsity=sparsity, scope=imp.scope, current=masks)
            final = level_run(root, level, lambda out, masks=masks, level=level: retrain_from(
                dense_cfg, masks, f"rewind:{imp.rewind}", init_states={ckpt: states[ckpt]},
                data=data, out_dir=out, extra_results={"imp_level": level}, resume=resume,
                **options))
            results.append(final)
        if root is not None:
            atomic.write_json(root / "results.json", summarize(imp, results))
        return results

    if out_dir is None:
        return body(None)
    with atomic.staged_directory(out_dir, resumable=True) as stage:
        if not resume or not _same_imp(stage, cfg):
            atomic.clear_stage(stage)
        return body(stage)


def _same_imp(stage: Path, cfg: RunConfig) -> bool:
    """Whether an IMP stage holds levels of this very config (else it is cleared)."""
    recorded = stage / "config.yaml"
    if not recorded.is_file():
        return False
    try:
        return load_config(recorded).config_hash() == cfg.config_hash()
    except PrunelabError:
        return False


def _model_like(cfg: RunConfig, data):
    from prunelab.models import build_model

    return build_model(cfg.model, data.input_shape, data.num_classes, **cfg.model_options)


def summarize(imp: IMPConfig, results: list[TrainResult]) -> dict[str, Any]:
    """Sparsity and final accuracy per level."""
    return {
        "method": "imp",
        "options": asdict(imp),
        "levels": [
            {"level": i, "weight_sparsity": r.sparsity["global"]["weight_sparsity"],
             "test_accuracy": r.final["test_accuracy"], "test_loss": r.final["test_loss"]}
            for i, r in enumerate(results)
        ],
    }
