"""Retraining baselines from a pruned run's mask: `scratch` (a new random init), `original`
(the run's own initial weights: the lottery-ticket baseline) and `rewind:K` (the weights at
epoch K, or step K with `rewind:Kit`). The training recipe is the run's own; the mask is held
fixed throughout. A run whose method removed units (shrunk.pt: `bernoulli` shrinks while it
trains, `units` writes its smaller network at the end) is retrained from scratch at its final
architecture, Liu et al.'s "scratch" baseline for structured pruning; `original` and `rewind`
are refused there."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from prunelab.config import RunConfig
from prunelab.data import Dataset
from prunelab.errors import ConfigError
from prunelab.masks import Masks
from prunelab.methods import FixedMask
from prunelab.runs import load_run
from prunelab.shrink import architecture, kept_input_mask, load_shrunk
from prunelab.train import TrainResult, load_data, run

SCRATCH_SEED_OFFSET = 1000


def parse_init(init: str) -> tuple[str, str | None]:
    """'scratch' | 'original' | 'rewind:K' (epoch K) | 'rewind:Kit' (step K) ->
    (kind, checkpoint name)."""
    if init in ("scratch", "original"):
        return init, None
    if init.startswith("rewind:"):
        spec = init.split(":", 1)[1].strip().lower()
        for suffix, prefix in (("it", "step"), ("step", "step"), ("ep", "epoch"), ("", "epoch")):
            if spec.endswith(suffix) and spec[: len(spec) - len(suffix)].isdigit():
                k = int(spec[: len(spec) - len(suffix)])
                return "rewind", ("step0" if k == 0 else f"{prefix}{k}")
    raise ConfigError(
        f"--init must be scratch, original, rewind:K (epoch K) or rewind:Kit (step K); got '{init}'"
    )


def retrain_config(cfg: RunConfig, init: str, seed: int | None = None) -> RunConfig:
    """The config of a retrain: same recipe, fixed-mask method, new init seed for scratch."""
    new = copy.deepcopy(cfg)
    kind, _ = parse_init(init)
    new.method = "fixed-mask"
    new.method_options = {}
    if kind == "scratch":
        new.train.init_seed = (
            seed if seed is not None else cfg.train.seed + SCRATCH_SEED_OFFSET
        )
    return new


def retrain_from(
    cfg: RunConfig,
    masks: Masks,
    init: str,
    *,
    init_states: dict[str, dict[str, torch.Tensor]] | None = None,
    data: Dataset | None = None,
    seed: int | None = None,
    out_dir: str | Path | None = None,
    progress: bool | None = None,
    extra_results: dict[str, Any] | None = None,
    architecture: list[dict[str, Any]] | None = None,
    **run_options: Any,
) -> TrainResult:
    """Retrain `cfg`'s recipe under the fixed `masks` from the given init. `init_states` maps
    checkpoint names ('step0', 'epochK', 'stepK') to weights, for original and rewind.
    `architecture` trains that (shrunk) chain instead of the config's model (see `run`);
    `run_options` (resume, log, tensorboard, resume_hint) go to `prunelab.train.run`."""
    kind, ckpt = parse_init(init)
    new = retrain_config(cfg, init, seed)
    state = None
    if kind == "original":
        ckpt = "step0"
    if ckpt is not None:
        if not init_states or ckpt not in init_states:
            have = ", ".join(sorted(init_states or {})) or "none"
            raise ConfigError(f"no saved weights '{ckpt}' to start from (have: {have})")
        state = init_states[ckpt]
    if out_dir is not None:
        new.method_options = {"masks_path": "masks.pt"}
    method = FixedMask(masks_in={k: v.clone() for k, v in masks.items()},
                       masks_path=new.method_options.get("masks_path"))
    if data is None:
        data = load_data(new)
    return run(new, out_dir, progress=progress, data=data, method=method, initial_state=state,
               extra_results={"retrain": {"init": init}, **(extra_results or {})},
               architecture=architecture, **run_options)


def retrain(
    run_dir: str | Path,
    init: str,
    *,
    out_dir: str | Path | None = None,
    seed: int | None = None,
    progress: bool | None = None,
    **run_options: Any,
) -> TrainResult:
    """Retrain a finished run's mask from scratch, its original init, or a rewind point. A
    run whose method removed units physically (shrunk.pt: `units`, `bernoulli`) is retrained
    from scratch at its final architecture, keeping the input features it kept
    (`prunelab.shrink.kept_input_mask`)."""
    kind, ckpt = parse_init(init)
    loaded = load_run(run_dir)
    extra = {"retrain": {"init": init, "from": str(run_dir)}}
    shrunk_file = Path(run_dir) / "shrunk.pt"
    if shrunk_file.is_file():
        # `bernoulli` shrank the network itself (load_run gives the small one); `units`
        # trained it masked and wrote the physically smaller network beside its weights
        if kind != "scratch":
            raise ConfigError(
                f"run {run_dir} removed units (shrunk.pt): its saved initial weights do not "
                "fit the smaller network, so it can only be retrained from scratch "
                "(--init scratch)")
        small = loaded.model if loaded.masks is None else load_shrunk(shrunk_file)
        return retrain_from(loaded.config, kept_input_mask(small), init, seed=seed,
                            out_dir=out_dir, progress=progress, extra_results=extra,
                            architecture=architecture(small), **run_options)
    if loaded.masks is None:
        raise ConfigError(f"run {run_dir} has no masks.pt: it was not pruned")
    states = {}
    if kind == "original":
        states["step0"] = loaded.state("init")
    elif kind == "rewind":
        states[ckpt] = loaded.state("init" if ckpt == "step0" else ckpt)
    return retrain_from(loaded.config, loaded.masks, init, init_states=states, seed=seed,
                        out_dir=out_dir, progress=progress, extra_results=extra, **run_options)
