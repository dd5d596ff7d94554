"""Typed configs: wrongly typed values in run configs, method and model options and sweep specs
are refused before anything runs, with the key path in one line (exit 2 from the CLI)."""

from __future__ import annotations

import subprocess
import sys
from typing import Literal

import pytest
import yaml

from prunelab.config import TrainConfig, config_from_dict
from prunelab.errors import ConfigError
from prunelab.methods import build_method
from prunelab.models import build_model
from prunelab.sweep import spec_from_dict
from prunelab.typecheck import check, matches


@pytest.mark.parametrize("value, hint, ok", [
    (3, int, True), (True, int, False), (2.7, int, False), ("3", int, False),
    (3, float, True), (0.5, float, True), ("0.5", float, False), (False, float, False),
    (float("nan"), float, False), (True, bool, True), ("no", bool, False), (0, bool, False),
    (None, int | None, True), (1, int | None, True), ("a", int | None, False),
    ([1, 2], list[int], True), ([1, "a"], list[int], False), ((1, 2), list[int], True),
    ("ab", list[str], False), ({"a": 1}, dict[str, int], True), ([("a", 1)], dict, False),
    ("x", Literal["x", "y"], True), ("z", Literal["x", "y"], False), (0.3, float | int, True),
])
def test_matches(value, hint, ok):
    assert matches(value, hint) is ok


def test_message_names_path_and_type():
    with pytest.raises(ConfigError, match=r"^train\.epochs must be an integer, got 'ten'$"):
        check("ten", int, "train.epochs")


@pytest.mark.parametrize("train, message", [
    ({"epochs": "ten"}, "train.epochs must be an integer, got 'ten'"),
    ({"epochs": 2.7}, "train.epochs must be an integer, got 2.7"),
    ({"lr": "fast"}, "train.lr must be a number, got 'fast'"),
    ({"eval_train": "no"}, "train.eval_train must be true or false, got 'no'"),
    ({"checkpoint_steps": [1, "x"]}, "train.checkpoint_steps must be a list of integers"),
    ({"steps": "5"}, "train.steps must be an integer or null, got '5'"),
])
def test_run_config_values_are_typed(train, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"train": train})


@pytest.mark.parametrize("cfg, message", [
    ({"method_options": ["sparsity", 0.9]}, "method_options must be a mapping"),
    ({"model": 3}, "model must be a string, got 3"),
    ({"train": 3}, "train must be a mapping"),
])
def test_run_config_structure_is_typed(cfg, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(cfg)


def test_train_config_from_python_is_checked_too():
    with pytest.raises(ConfigError, match="train.batch_size must be an integer"):
        TrainConfig(batch_size=12.5).validate()


def test_method_and_model_options_are_typed():
    with pytest.raises(ConfigError, match="method 'gmp' option sparsity must be a number, "
                                          "got '0.9'"):
        build_method("gmp", sparsity="0.9")
    with pytest.raises(ConfigError, match="method 'bernoulli' option shrink must be true"):
        build_method("bernoulli", shrink="yes")
    with pytest.raises(ConfigError, match="model 'mlp' option widths must be a list of "
                                          "integers or an integer, got 'abc'"):
        build_model("mlp", (4,), 2, widths="abc")
    with pytest.raises(ConfigError, match="model 'resnet20' option width must be a number"):
        build_model("resnet20", (3, 32, 32), 10, width="wide")
    assert build_method("gmp", sparsity=1 - 0.25, begin=100, end=0.5).begin == 100


def test_sweep_option_types_are_checked_when_the_spec_loads():
    spec = {"tasks": [{"dataset": "xor"}], "methods": [{"name": "gmp",
                                                          "options": {"sparsity": "0.9"}}]}
    with pytest.raises(ConfigError, match=r"methods\[0\] \(gmp\).*sparsity must be a number"):
        spec_from_dict(spec)
    spec = {"tasks": [{"dataset": "xor", "model": "mlp", "model_options": {"widths": "x"}}],
            "methods": ["dense"]}
    with pytest.raises(ConfigError, match="widths must be a list of integers"):
        spec_from_dict(spec)
    with pytest.raises(ConfigError, match="unknown key"):
        spec_from_dict({"methods": ["dense"], "wokers": 2})


def test_cli_bad_config_value_is_one_line_exit_2(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"dataset": "xor", "train": {"epochs": "ten"}}))
    proc = subprocess.run([sys.executable, "-m", "prunelab.cli", "train", "--config", str(path),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "prunelab: error: train.epochs must be an integer, got 'ten'"]
    assert not (tmp_path / "run").exists()
    proc = subprocess.run([sys.executable, "-m", "prunelab.cli", "train", "--dataset", "xor",
                           "--model-option", "widths=abc", "--out", str(tmp_path / "r2")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "widths must be a list of integers" in proc.stderr
