"""Safe outputs: operating-system errors on the output give one line and exit 2 with nothing
half-written; a finished run or another spec's sweep is replaced only with --overwrite."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prunelab.cli import main
from prunelab.errors import os_error_message

TRAIN = ["train", "--dataset", "xor", "--model", "mlp", "--model-option", "widths=[4]",
         "--epochs", "1", "--quiet"]


def _cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_os_error_messages():
    assert os_error_message(OSError(errno.ENOSPC, "No space left on device", "/x/y")) == (
        "cannot write /x/y: No space left on device")
    assert os_error_message(OSError(errno.EROFS, "Read-only file system", "/r")) == (
        "cannot write /r: Read-only file system")
    assert "not a directory" in os_error_message(NotADirectoryError(errno.ENOTDIR, "x", "/f/a"))
    assert os_error_message(PermissionError(errno.EACCES, "Permission denied", "/p")) == (
        "cannot access /p: Permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_is_one_line(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, err = _cli(TRAIN + ["--out", str(ro / "run")], capsys)
    finally:
        ro.chmod(0o755)
    assert code == 2 and len(err) == 1 and err[0].startswith("prunelab: error: cannot")
    assert list(ro.iterdir()) == []


def test_read_only_directory_as_root_via_a_file_in_the_path(tmp_path, capsys):
    """A path under a regular file fails with ENOTDIR for every user, root included."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _cli(TRAIN + ["--out", str(blocker / "run")], capsys)
    assert code == 2 and len(err) == 1
    assert "a part of the path is a file" in err[0]
    assert blocker.read_text() == "x"


def test_unwritable_output_via_subprocess_gives_no_traceback(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = subprocess.run([sys.executable, "-m", "prunelab.cli", *TRAIN, "--out",
                           str(blocker / "a" / "b")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_finished_run_is_replaced_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli(TRAIN + ["--out", str(out)], capsys)[0] == 0
    (out / "hessian").mkdir()
    (out / "hessian" / "results.json").write_text("{}")
    code, err = _cli(TRAIN + ["--out", str(out), "--seed", "1"], capsys)
    assert code == 2 and "already holds a finished run" in err[0] and "--overwrite" in err[0]
    assert (out / "hessian" / "results.json").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["seed"] == 0
    assert _cli(TRAIN + ["--out", str(out), "--seed", "1", "--overwrite"], capsys)[0] == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["seed"] == 1
    assert not (out / "hessian").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, err = _cli(TRAIN + ["--out", str(other)], capsys)
    assert code == 2 and "not empty" in err[0]
    assert (other / "notes.txt").read_text() == "mine"


def test_sweep_folder_with_another_spec_is_refused(tmp_path, capsys):
    def spec(seeds):
        path = tmp_path / f"spec{len(seeds)}.yaml"
        path.write_text(yaml.safe_dump({
            "name": "s", "seeds": seeds,
            "base": {"model": "mlp", "model_options": {"widths": [4]},
                     "train": {"epochs": 1}},
            "tasks": [{"dataset": "xor"}], "methods": ["dense"]}))
        return str(path)

    out = str(tmp_path / "sweep")
    assert _cli(["sweep", spec([0]), "--out", out, "--workers", "1", "--quiet"], capsys)[0] == 0
    code, err = _cli(["sweep", spec([0, 1]), "--out", out, "--workers", "1", "--quiet"], capsys)
    assert code == 2 and "holds another sweep" in err[0]
    assert len(list((Path(out) / "runs").iterdir())) == 1
    # the same spec resumes; another one replaces the results on request
    assert _cli(["sweep", spec([0]), "--out", out, "--workers", "1", "--quiet"], capsys)[0] == 0
    assert _cli(["sweep", spec([0, 1]), "--out", out, "--workers", "1", "--quiet",
                 "--overwrite"], capsys)[0] == 0
    assert len(list((Path(out) / "runs").iterdir())) == 2


@pytest.mark.parametrize("code_, text", [(errno.EROFS, "Read-only file system"),
                                         (errno.ENOSPC, "No space left on device")])
def test_disk_errors_mid_run_leave_nothing(tmp_path, capsys, monkeypatch, code_, text):
    """A read-only file system or a full disk while the run writes: one line, exit 2, and no
    run directory or staging folder left behind (simulated: root ignores permissions)."""
    import prunelab.atomic as atomic

    real = atomic.save_torch
    calls = []

    def failing(path, obj):
        calls.append(path)
        if len(calls) == 2:  # after init.pt: mid-run
            raise OSError(code_, text, str(path))
        real(path, obj)

    monkeypatch.setattr(atomic, "save_torch", failing)
    out = tmp_path / "run"
    code, err = _cli(TRAIN + ["--out", str(out)], capsys)
    assert code == 2 and err == [f"prunelab: error: cannot write {calls[1]}: {text}"]
    assert list(tmp_path.iterdir()) == []
