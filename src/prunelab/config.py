"""Typed run configuration <-> YAML <-> CLI flags, and a config hash for run names."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prunelab import atomic
from prunelab.errors import ConfigError, check_range
from prunelab.typecheck import check_fields

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "cosine", "step", "multistep")
PRECISIONS = ("fp32", "bf16", "fp16")
# Fields added after runs were named: left out of the hash at their default, so a config that
# does not use them keeps the run name (and sweep cell) it had before they existed.
_HASHED_UNLESS_DEFAULT = {"precision": "fp32"}


@dataclass
class TrainConfig:
    """How to train: optimiser, learning rate schedule, length, batching, seed, device and
    numeric precision (fp32; bf16 or fp16 autocast, fp16 with a loss scaler and on CUDA only).
    `channels_last` stores conv weights and inputs NHWC (faster convs on GPUs)."""

    epochs: int = 10
    steps: int | None = None  # if set, overrides epochs (training stops after this many steps)
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    lr_milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    lr_gamma: float = 0.1
    seed: int = 0
    init_seed: int | None = None  # seed of the weight init only; None: same as `seed`
    device: str = "cpu"  # cpu | cuda | auto
    eval_train: bool = True
    eval_batch_size: int = 2048
    checkpoint_steps: list[int] = field(default_factory=list)
    checkpoint_epochs: bool = True
    precision: str = "fp32"  # fp32 | bf16 | fp16
    channels_last: bool = False
    # also write the resumable checkpoint every N steps (it is always written at epoch ends)
    checkpoint_every: int | None = None

    def validate(self) -> TrainConfig:
        check_fields(TrainConfig, {f.name: getattr(self, f.name)
                                   for f in dataclasses.fields(self)}, "train.")
        check_range("epochs", self.epochs, 1)
        if self.steps is not None:
            check_range("steps", self.steps, 1)
        check_range("batch_size", self.batch_size, 1)
        check_range("lr", self.lr, 0.0, low_inclusive=False)
        check_range("momentum", self.momentum, 0.0, 1.0, high_inclusive=False)
        check_range("weight_decay", self.weight_decay, 0.0)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got "
                              f"'{self.optimizer}'")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got "
                              f"'{self.lr_schedule}'")
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be cpu, cuda, cuda:N or auto; got '{self.device}'")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got "
                              f"'{self.precision}'")
        if self.checkpoint_every is not None:
            check_range("checkpoint_every", self.checkpoint_every, 1)
        return self


@dataclass
class RunConfig:
    """One training run: data, model, method and training settings."""

    dataset: str = "xor"
    data_options: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    model: str = "mlp"
    model_options: dict[str, Any] = field(default_factory=dict)
    method: str = "dense"
    method_options: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def config_hash(self) -> str:
        """Short hash of everything that changes the result (not the data directory, the
        device and memory layout the run happened to use, nor how often it checkpoints)."""
        d = self.to_dict()
        d.pop("data_dir", None)
        d["train"].pop("device", None)
        d["train"].pop("channels_last", None)
        d["train"].pop("checkpoint_every", None)
        for key, default in _HASHED_UNLESS_DEFAULT.items():
            if d["train"].get(key) == default:
                d["train"].pop(key)
        blob = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]

    def run_name(self) -> str:
        return f"{self.method}-{self.model}-{Path(self.dataset).stem}-{self.config_hash()}"


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(unknown)} in {where}; valid: {', '.join(fields)}"
        )
    kwargs = dict(data)
    if cls is RunConfig:
        train = kwargs.get("train")
        if train is not None and not isinstance(train, dict):
            raise ConfigError(f"train must be a mapping of training settings, got {train!r}")
        if isinstance(train, dict):
            kwargs["train"] = _from_dict(TrainConfig, train, "train")
    prefix = "train." if cls is TrainConfig else ""
    check_fields(cls, {k: v for k, v in kwargs.items() if k != "train" or cls is not RunConfig},
                 prefix)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Build a RunConfig from a plain dict, naming unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError("a run config must be a mapping")
    cfg = _from_dict(RunConfig, data, "run config")
    cfg.train.validate()
    return cfg


def save_config(path: str | Path, cfg: RunConfig) -> None:
    """Write the config as YAML (atomically)."""
    atomic.write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML run config; syntax errors give the line and column."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise ConfigError(
            f"{path}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {exc.problem}"
        ) from None
    return config_from_dict(data or {})


def parse_option_value(text: str) -> Any:
    """Parse a CLI KEY=VALUE value with YAML rules: 0.9 -> float, [300,100] -> list."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_options(items: list[str] | None, flag: str) -> dict[str, Any]:
    """Turn ['a=1', 'b=[2,3]'] into {'a': 1, 'b': [2, 3]}."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=VALUE, got '{item}'")
        out[key.strip().replace("-", "_")] = parse_option_value(value)
    return out
