"""The command line: success paths write their files; mistakes give one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from prunelab.cli import main

TRAIN = ["train", "--model", "mlp", "--dataset", "xor", "--epochs", "2", "--quiet",
         "--data-option", "n_train=200", "--data-option", "n_test=200",
         "--model-option", "widths=[8]", "--optimizer", "adam", "--lr", "0.01"]


def _one_line_error(capsys, argv, *fragments):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("prunelab: error:")
    for f in fragments:
        assert f in err, err
    return err


def test_train_writes_a_run_directory(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(TRAIN + ["--method", "gmp", "--sparsity", "0.5", "-o", "frequency=2",
                         "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test_accuracy" in printed and str(out) in printed
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["method_options"] == {"sparsity": 0.5, "frequency": 2}
    assert json.loads((out / "sparsity.json").read_text())["global"]["weight_sparsity"] == \
        pytest.approx(0.5, abs=0.01)
    assert main(["retrain", str(out), "--init", "original", "--out", str(tmp_path / "lt"),
                 "--quiet"]) == 0
    assert (tmp_path / "lt" / "results.json").is_file()


def test_retrain_of_a_shrunk_run_trains_its_architecture_or_refuses_in_one_line(tmp_path,
                                                                                 capsys):
    out = tmp_path / "gated"
    assert main(TRAIN + ["--method", "bernoulli", "-o", "pi=0.05", "-o", "penalty_scale=20",
                         "-o", "theta_init=0.6", "--out", str(out)]) == 0
    assert (out / "shrunk.pt").is_file()
    _one_line_error(capsys, ["retrain", str(out), "--init", "rewind:1", "--out",
                             str(tmp_path / "x")], "only be retrained from scratch")
    assert not (tmp_path / "x").exists()
    assert main(["retrain", str(out), "--init", "scratch", "--out", str(tmp_path / "s"),
                 "--quiet"]) == 0
    assert (tmp_path / "s" / "shrunk.pt").is_file()


def test_bernoulli_with_adamw_removes_units_and_finishes(tmp_path):
    """torch 2.13's AdamW could not be rebuilt after a shrink (exit 2 at the first removal)."""
    out = tmp_path / "gated"
    argv = [a if a != "adam" else "adamw" for a in TRAIN]
    assert main(argv + ["--method", "bernoulli", "-o", "pi=0.05", "-o", "penalty_scale=20",
                        "-o", "theta_init=0.6", "--out", str(out)]) == 0
    saved = torch.load(out / "shrunk.pt", weights_only=True)
    assert saved["state_dict"]["1.weight"].shape[0] < 8  # units were removed


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["train", "--model", "resnet", "--dataset", "xor"], ["unknown model 'resnet'", "lenet5"]),
        (["train", "--dataset", "cifar"], ["unknown dataset 'cifar'", "mnist"]),
        (["train", "--method", "obd"], ["unknown method 'obd'", "gmp"]),
        (TRAIN + ["--method", "gmp", "--sparsity", "1.5"], ["sparsity", "[0, 1)"]),
        (TRAIN[:5] + ["--epochs", "-3"], ["epochs"]),
        (TRAIN + ["--method", "dense", "--sparsity", "0.5"], ["takes no --sparsity"]),
        (TRAIN + ["--method", "gmp", "-o", "bogus=1"], ["no option bogus", "frequency"]),
        (TRAIN + ["--method", "gmp", "-o", "novalue"], ["KEY=VALUE"]),
        (["train", "--epochs", "two"], ["invalid int value"]),
        (["retrain", "nowhere", "--init", "scratch"], ["not a finished prunelab run"]),
        (["retrain", "nowhere", "--init", "sideways"], ["--init must be"]),
        (["data", "download", "cifar"], ["unknown downloadable dataset"]),
        (["frobnicate"], ["invalid choice"]),
        (["reproduce", "pareto", "--processes", "2"], ["'pareto' runs in one process",
                                                       "bernoulli"]),
        (["reproduce", "bernoulli", "--processes", "0"], ["--processes"]),
    ],
)
def test_user_mistakes_are_one_line(capsys, tmp_path, monkeypatch, argv, fragments):
    monkeypatch.chdir(tmp_path)
    _one_line_error(capsys, argv, *fragments)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_missing_data_file_names_file_and_command(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRUNELAB_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path))
    _one_line_error(capsys, ["train", "--dataset", "mnist", "--model", "lenet-300-100",
                             "--out", str(tmp_path / "o")],
                    "train-images-idx3-ubyte", "prunelab data download mnist")
    assert not (tmp_path / "o").exists()


def test_mask_of_wrong_shape_is_refused(capsys, tmp_path):
    out = tmp_path / "r"
    assert main(TRAIN + ["--method", "gmp", "--sparsity", "0.5", "--out", str(out)]) == 0
    torch.save({"1.weight": torch.ones(3, 3, dtype=torch.bool)}, out / "masks.pt")
    _one_line_error(capsys, ["retrain", str(out), "--init", "scratch", "--out",
                             str(tmp_path / "re")], "1.weight", "shape")
    assert not (tmp_path / "re").exists()


def test_corrupt_masks_file_is_refused(capsys, tmp_path):
    out = tmp_path / "r"
    assert main(TRAIN + ["--method", "gmp", "--sparsity", "0.5", "--out", str(out)]) == 0
    (out / "masks.pt").write_bytes(b"\x00garbage")
    _one_line_error(capsys, ["retrain", str(out), "--init", "scratch"], "masks.pt")


def test_data_list_and_info(capsys):
    assert main(["data", "list"]) == 0
    listed = capsys.readouterr().out
    for name in ("xor", "blobs", "madelon-like", "digits", "mnist", "fashion-mnist", "madelon",
                 "colon", "leukemia"):
        assert name in listed
    assert main(["data", "info", "digits"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["input_shape"] == [1, 8, 8] and info["num_classes"] == 10


def test_console_script_runs_as_a_process():
    proc = subprocess.run([sys.executable, "-m", "prunelab.cli", "train", "--model", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_demo_quick_writes_its_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--quiet", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "| task | method |" in report and "accuracy_vs_sparsity.png" in report
    results = json.loads((out / "results.json").read_text())
    for f in results["figures"]:
        assert (out / f).stat().st_size > 1000
    methods = {(r["task"], r["method"]) for r in results["summary"]}
    for task in ("xor", "digits"):
        assert {(task, m) for m in ("dense", "pruned", "scratch", "lottery")} <= methods
    pruned = [r for r in results["summary"] if r["method"] == "pruned"]
    assert all(abs(r["weight_sparsity"] - r["sparsity"]) < 0.01 for r in pruned)
    dense_digits = [r for r in results["summary"]
                    if r["task"] == "digits" and r["method"] == "dense"][0]
    assert dense_digits["test_accuracy"] > 0.9


def test_readme_promises_imp_sparsity_checkpoint_steps_data_info_options(tmp_path, capsys):
    from prunelab.cli import main

    out = tmp_path / "imp"
    code = main(["train", "--dataset", "xor", "--model", "mlp", "--model-option", "widths=[8]",
                 "--method", "imp", "-o", "rounds=2", "--sparsity", "0.75", "--epochs", "1",
                 "--checkpoint-steps", "2,3", "--quiet", "--out", str(out)])
    assert code == 0
    import yaml

    summary = json.loads((out / "results.json").read_text())
    assert summary["options"]["sparsity"] == 0.75
    assert summary["options"]["rate"] == pytest.approx(0.5)
    assert summary["levels"][-1]["weight_sparsity"] == pytest.approx(0.75, abs=0.01)
    assert (out / "level_0" / "checkpoints" / "step2.pt").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["method_options"]["sparsity"] == 0.75
    capsys.readouterr()
    assert main(["data", "info", "xor", "--data-option", "n_train=50",
                 "--data-option", "validation=0.2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_train"] == 40 and info["evaluation"] == "validation"
    assert main(["train", "--dataset", "xor", "--checkpoint-steps", "a", "--quiet"]) == 2


def test_float_mask_files_are_refused(tmp_path):
    from prunelab.errors import DataError
    from prunelab.masks import load_masks

    torch.save({"0.weight": torch.rand(3, 4)}, tmp_path / "scores.pt")
    with pytest.raises(DataError, match="holds torch.float32 values, not True/False"):
        load_masks(tmp_path / "scores.pt")
    torch.save({"0.weight": torch.ones(3, 4, dtype=torch.uint8)}, tmp_path / "ok.pt")
    assert load_masks(tmp_path / "ok.pt")["0.weight"].dtype == torch.bool
