"""Runs that survive: a run stopped by a signal or killed continues from its checkpoint, bit
for bit; staging folders are owned, kept on interruption, reported when stale; per-epoch
lines and metrics.csv; reproductions skip finished sub-runs and report skipped sections."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prunelab import atomic
from prunelab.cli import main
from prunelab.config import RunConfig, TrainConfig
from prunelab.data.base import Dataset
from prunelab.errors import ConfigError
from prunelab.methods import build_method
from prunelab.signals import RunInterrupted, stop_on_signals
from prunelab.train import Trainer, run

ROOT = Path(__file__).resolve().parents[1]


def _cfg(method: str, epochs: int = 4, model_options=None, **options) -> RunConfig:
    return RunConfig(dataset="blobs", model="mlp", model_options=model_options or {},
                     method=method, method_options=options,
                     train=TrainConfig(epochs=epochs, batch_size=32, lr=0.05))


def _interrupt_at(method, step: int):
    """The method, sending this process SIGTERM right after optimizer step `step`."""
    after = method.after_step

    def after_step(s: int) -> None:
        after(s)
        if s == step:
            signal.raise_signal(signal.SIGTERM)
    method.after_step = after_step
    return method


def _outputs(d: Path) -> dict:
    """Everything a run wrote that depends on training (not timing)."""
    out = {"weights": torch.load(d / "weights.pt"),
           "metrics": [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                       for line in (d / "metrics.jsonl").read_text().splitlines()],
           "checkpoints": {p.name: torch.load(p) for p in sorted(d.glob("checkpoints/*.pt"))}}
    for name in ("masks.pt", "shrunk.pt"):
        if (d / name).is_file():
            out[name] = torch.load(d / name, weights_only=False)
    if (d / "mask_updates.json").is_file():
        out["updates"] = json.loads((d / "mask_updates.json").read_text())["updates"]
    return out


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return a == b


# blobs: 4 steps per epoch. Steps in the middle of an epoch unless noted; bernoulli removes
# units physically between steps 12 and 15 (the checkpoint at 15 holds a shrunk network),
# units scores over steps 2-4 and 6-8 (a checkpoint inside a scoring window).
CASES = [
    ("dense", {}, None, 4, 6),  # the end of epoch 1 (step 4), then mid-epoch 2
    ("gmp", {"sparsity": 0.8, "frequency": 5}, None, 4, 7),
    ("annealed", {"sparsity": 0.7, "unit": "step"}, None, 4, 6),
    ("rigl", {"sparsity": 0.8, "update_interval": 5}, None, 4, 7),
    ("set", {"sparsity": 0.8, "update_interval": 5}, None, 4, 7),
    ("biobjective", {"weight": 0.9, "finetune_epochs": 1, "tau": 0.01,
                     "persistent_mask": True}, None, 4, 14),
    ("units", {"rounds": 2, "score_steps": 3}, None, 4, 7),
    ("bernoulli", {"shrink_every": 3, "penalty_scale": 6.0, "lr_theta": 0.5},
     {"widths": [32, 16]}, 6, 15),
    ("snip", {"sparsity": 0.8}, None, 4, 6),
]


@pytest.mark.parametrize("method, options, model_options, epochs, stop",
                         CASES, ids=[c[0] for c in CASES])
def test_a_run_stopped_by_sigterm_resumes_to_the_same_bits(tmp_path, method, options,
                                                            model_options, epochs, stop):
    cfg = _cfg(method, epochs, model_options, **options)
    run(cfg, tmp_path / "full", progress=False)
    stopped = _interrupt_at(build_method(method, **options), stop)
    with pytest.raises(RunInterrupted) as info:
        run(cfg, tmp_path / "resumed", progress=False, method=stopped)
    assert info.value.signum == signal.SIGTERM and info.value.exit_code == 143
    assert f"step {stop} of" in info.value.message
    stage = atomic.stage_path(tmp_path / "resumed")
    assert (stage / "resume.pt").is_file() and not (tmp_path / "resumed").exists()
    if method == "bernoulli":  # the checkpoint holds the physically smaller network
        assert torch.load(stage / "resume.pt", weights_only=False)["architecture"] is not None
    result = run(cfg, tmp_path / "resumed", progress=False)
    assert result.final["resumes"] == 1 and not stage.exists()
    assert _same(_outputs(tmp_path / "full"), _outputs(tmp_path / "resumed"))
    assert not (tmp_path / "resumed" / "resume.pt").exists()


def test_a_stop_request_is_only_a_flag_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with stop_on_signals() as request:
        assert not request
        signal.raise_signal(signal.SIGINT)  # no KeyboardInterrupt: only recorded
        assert request.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):  # asked twice: stop now
            signal.raise_signal(signal.SIGTERM)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A batched augmentation drawing from the epoch's generator."""
    return x + 0.3 * torch.randn(x.shape, generator=g, device=x.device)


def _fit_mlp(data, cfg: TrainConfig, out: Path, method=None):
    """Train a fresh, seeded 6-8-3 MLP on `data` in `out`, resuming from a checkpoint there."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    return Trainer(model, data, cfg, method, out_dir=out, resume=True, progress=False).fit()


def test_mid_epoch_resume_replays_the_augmentation_generator(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 6, generator=g), torch.arange(96) % 3
    data = Dataset("aug", x, y, x[:32], y[:32], 3, augment=_shift)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05)

    full = _fit_mlp(data, cfg, tmp_path / "a")
    with pytest.raises(RunInterrupted):
        _fit_mlp(data, cfg, tmp_path / "b", _interrupt_at(build_method("dense"), 3))  # batch 3 of 6
    ckpt = torch.load(tmp_path / "b" / "resume.pt", weights_only=False)
    assert (ckpt["epoch"], ckpt["batch"], ckpt["epoch_done"]) == (1, 3, False)
    assert ckpt["augment_rng"] is not None
    resumed = _fit_mlp(data, cfg, tmp_path / "b")
    assert _same(full.final_state, resumed.final_state)
    assert [m["train_loss"] for m in full.metrics] == [m["train_loss"] for m in resumed.metrics]


class _Noisy(torch.utils.data.Dataset):
    """A streamed data set whose samples draw from torch's RNG (per-sample seeding)."""

    def __init__(self, n: int):
        g = torch.Generator().manual_seed(3)
        self.x, self.y = torch.randn(n, 6, generator=g), torch.arange(n) % 3
        self.targets = self.y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i] + 0.2 * torch.randn(6), self.y[i]


def test_mid_epoch_resume_of_a_streamed_source(tmp_path):
    from prunelab.data import stream

    data = stream(_Noisy(80), _Noisy(20))
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, eval_train=False)

    full = _fit_mlp(data, cfg, tmp_path / "a")
    with pytest.raises(RunInterrupted):
        # stops at batch 2 of epoch 2
        _fit_mlp(data, cfg, tmp_path / "b", _interrupt_at(build_method("dense"), 7))
    resumed = _fit_mlp(data, cfg, tmp_path / "b")
    assert _same(full.final_state, resumed.final_state)


def test_a_checkpoint_of_another_config_is_not_trusted(tmp_path):
    cfg = _cfg("dense", 3)
    with pytest.raises(RunInterrupted):
        run(cfg, tmp_path / "r", progress=False,
            method=_interrupt_at(build_method("dense"), 5))
    other = _cfg("dense", 3)
    other.train.lr = 0.02
    result = run(other, tmp_path / "r", progress=False)
    assert "resumes" not in result.final  # started afresh
    assert _same(result.final_state, run(other, progress=False).final_state)


def test_checkpoint_every_is_checked_and_not_part_of_the_run_name():
    a, b = _cfg("dense"), _cfg("dense")
    b.train.checkpoint_every = 7
    assert a.config_hash() == b.config_hash()
    with pytest.raises(ConfigError, match="checkpoint_every"):
        TrainConfig(checkpoint_every=0).validate()


# ----------------------------------------------------------------------------- staging


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_stale_stage_of_a_dead_process_is_reported_then_cleared_or_kept(tmp_path):
    for resumable in (False, True):
        out = tmp_path / f"out{resumable}"
        stage = atomic.stage_path(out)
        stage.mkdir(parents=True)
        (stage / atomic.OWNER_FILE).write_text(f"{_dead_pid()} {os.uname().nodename}\n")
        (stage / "left.txt").write_text("from the killed run")
        found = atomic.stale_stages(tmp_path)
        assert [s.path.name for s in found] == [stage.name] and found[0].pid is not None
        lines: list[str] = []
        with atomic.staged_directory(out, resumable=resumable, report=lines.append) as s:
            assert (s / "left.txt").exists() == resumable
            (s / "result.txt").write_text("done")
        assert len(lines) == 1 and "no longer running" in lines[0]
        assert f"pid {found[0].pid}" in lines[0]
        assert (out / "result.txt").is_file() and not stage.exists()
        assert not (out / atomic.OWNER_FILE).exists()


def test_interruption_keeps_a_resumable_stage_an_ordinary_error_removes_it(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic.staged_directory(tmp_path / "a", resumable=True) as s:
            (s / "x").write_text("1")
            raise KeyboardInterrupt
    assert (atomic.stage_path(tmp_path / "a") / "x").is_file()
    with pytest.raises(ValueError):
        with atomic.staged_directory(tmp_path / "a", resumable=True) as s:
            raise ValueError("bad input")
    assert not atomic.stage_path(tmp_path / "a").exists() and not (tmp_path / "a").exists()


HOLD = """
import sys, time
from prunelab import atomic
atomic.claim_stage(sys.argv[1], keep=True)
print("held", flush=True)
time.sleep(60)
"""


def test_a_stage_owned_by_a_live_process_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                              env=env, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code = main(["train", "--dataset", "xor", "--epochs", "1", "--out", str(out),
                     "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1
        assert f"pid {holder.pid}" in err[0] and "running prunelab process" in err[0]
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", "--dataset", "xor", "--epochs", "1", "--out", str(out),
                 "--quiet"]) == 0  # the owner died: its stage is stale, the run goes on
    assert "no longer running" in capsys.readouterr().err


# ----------------------------------------------------------------------------- subprocesses

TRAIN = ["train", "--dataset", "xor", "--data-option", "n_train=1000", "--model", "mlp",
         "--epochs", "2", "--batch-size", "8", "--lr", "0.05", "--checkpoint-every", "3"]


def _start(argv: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.Popen([sys.executable, "-m", "prunelab.cli", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.01)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_killed_train_command_resumes_to_the_same_weights(tmp_path, capsys, sig):
    out = tmp_path / "run"
    proc = _start(TRAIN + ["--out", str(out)])
    _wait_for(atomic.stage_path(out) / "resume.pt", proc)  # step 3 of 125 in epoch 1
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (143 if sig == signal.SIGTERM else -signal.SIGKILL)
    ckpt = torch.load(atomic.stage_path(out) / "resume.pt", weights_only=False)
    assert ckpt["epoch"] == 1 and not ckpt["epoch_done"]  # mid-epoch
    if sig == signal.SIGTERM:
        last = err.strip().splitlines()[-1]
        assert last.startswith("prunelab: stopped by SIGTERM at step ")
        assert f"prunelab train --resume --out {out}" in last
        assert main(["train", "--resume", "--out", str(out), "--quiet"]) == 0
    else:
        assert main(TRAIN + ["--out", str(out), "--quiet"]) == 0  # the same command
        err = capsys.readouterr().err
        assert "found the staging folder of an interrupted run" in err
        assert "no longer running" in err and f"resuming from step {ckpt['step']}" in err
    assert main(TRAIN + ["--out", str(tmp_path / "ref"), "--quiet"]) == 0
    assert _same(_outputs(tmp_path / "ref"), _outputs(out))
    assert json.loads((out / "results.json").read_text())["final"]["resumes"] == 1


def test_a_killed_imp_resumes_at_the_level_it_reached(tmp_path, capsys):
    argv = ["train", "--dataset", "xor", "--data-option", "n_train=400", "--model", "mlp",
            "--method", "imp", "-o", "rounds=1", "--epochs", "2", "--batch-size", "8",
            "--checkpoint-every", "3"]
    out = tmp_path / "imp"
    proc = _start(argv + ["--out", str(out)])
    stage = atomic.stage_path(out)
    _wait_for(stage / ".level_1.partial" / "resume.pt", proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert (stage / "level_0" / "results.json").is_file()
    assert not (stage / "level_1").exists()
    assert main(argv + ["--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "imp level 0 finished before the interruption" in err
    assert "resuming from step" in err
    assert main(argv + ["--out", str(tmp_path / "ref"), "--quiet"]) == 0
    for level in range(2):
        assert _same(_outputs(tmp_path / "ref" / f"level_{level}"),
                     _outputs(out / f"level_{level}"))


# ----------------------------------------------------------------------------- logs


def test_per_epoch_lines_off_a_terminal_csv_and_quiet(tmp_path, capsys):
    argv = ["train", "--dataset", "xor", "--epochs", "3", "--out"]
    assert main(argv + [str(tmp_path / "a")]) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("epoch ")]
    assert [x.split()[1] for x in lines] == ["1/3", "2/3", "3/3"]
    assert "test acc" in lines[-1] and "step" in lines[-1]
    assert main(argv + [str(tmp_path / "b"), "--quiet"]) == 0
    assert "epoch 1/3" not in capsys.readouterr().err
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    csv = (tmp_path / "a" / "metrics.csv").read_text().splitlines()
    assert csv[0].split(",")[:3] == ["epoch", "step", "train_loss"] and len(csv) == 4
    assert float(csv[-1].split(",")[2]) == rows[-1]["train_loss"]
    final = json.loads((tmp_path / "a" / "results.json").read_text())["final"]
    assert final["warmup_seconds"] >= 0 and final["train_seconds"] > 0


def _has_tensorboard() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


def test_tensorboard_scalars_or_one_line_without_the_package(tmp_path, capsys):
    argv = ["train", "--dataset", "xor", "--epochs", "2", "--quiet", "--tensorboard",
            str(tmp_path / "tb"), "--out", str(tmp_path / "r")]
    if not _has_tensorboard():
        err_lines = (main(argv), capsys.readouterr().err.strip().splitlines())
        assert err_lines[0] == 2 and len(err_lines[1]) == 1 and "pip install" in err_lines[1][0]
        assert not (tmp_path / "r").exists() and not (tmp_path / "tb").exists()
        return
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(argv) == 0
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    got = [(e.step, e.value) for e in events.Scalars("test_accuracy")]
    assert got == [(r["step"], pytest.approx(r["test_accuracy"])) for r in rows]


# ----------------------------------------------------------------------------- reproductions


def test_missing_data_sections_make_reproduce_fail_unless_allowed(tmp_path, capsys,
                                                                   monkeypatch):
    from prunelab.experiments import registry

    def fake(out, **kwargs):
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text("partial")
        return {"skipped_sections": [{"section": "F: MNIST outliers",
                                      "reason": "MNIST not found"}]}

    seen = []

    def fake_run(out, **kwargs):
        seen.append(os.environ.get("PRUNELAB_DATA"))
        return fake(out, **kwargs)

    monkeypatch.setattr(registry, "get", lambda name: fake_run)
    before = os.environ.get("PRUNELAB_DATA")
    argv = ["reproduce", "fake", "--out", str(tmp_path / "r"), "--data-dir", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "skipped F: MNIST outliers: MNIST not found" in err and "--allow-missing-data" in err
    assert seen == [str(tmp_path.resolve())] and os.environ.get("PRUNELAB_DATA") == before
    assert main(argv + ["--allow-missing-data"]) == 0


def test_subrun_cache_reads_finished_runs_back_with_their_rng(tmp_path):
    from prunelab.subruns import SubrunCache

    out = tmp_path / "repro"
    cache = SubrunCache.for_output(out)
    cfg = _cfg("gmp", 3, sparsity=0.5, frequency=2)
    first = cache.run(cfg, progress=False)
    after_first = torch.rand(3)
    masks = first.masks
    retrained = cache.retrain_from(cfg, masks, "original",
                                   init_states={"step0": first.initial_state}, progress=False)
    assert cache.runs == 2 and cache.hits == 0
    again = SubrunCache.for_output(out)  # a rerun of the command (same process here)
    second = again.run(cfg, progress=False)
    assert torch.equal(torch.rand(3), after_first)  # the generators as the run left them
    re2 = again.retrain_from(cfg, masks, "original",
                             init_states={"step0": first.initial_state}, progress=False)
    assert again.hits == 2 and again.runs == 0
    assert _same(first.final_state, second.final_state) and _same(first.masks, second.masks)
    assert first.metrics == second.metrics and first.final == second.final
    assert _same(retrained.final_state, re2.final_state)
    assert _same(first.checkpoints, second.checkpoints)
    with atomic.staged_directory(out) as stage:  # the reproduction writes its report
        (stage / "report.md").write_text("ok")
    assert sorted(p.name for p in out.iterdir()) == ["report.md"]  # no work folder left


def test_a_units_run_retrains_at_its_shrunk_architecture_only(tmp_path):
    from prunelab.retrain import retrain
    from prunelab.runs import load_run
    from prunelab.shrink import load_shrunk

    src = tmp_path / "units"
    run(_cfg("units", 3, rounds=2, score_steps=2), src, progress=False)
    small = load_shrunk(src / "shrunk.pt")
    for init in ("original", "rewind:1"):
        with pytest.raises(ConfigError, match="only be retrained from scratch"):
            retrain(src, init, out_dir=tmp_path / "bad")
    retrain(src, "scratch", out_dir=tmp_path / "s")
    trained = load_run(tmp_path / "s").model
    assert [p.shape for p in trained.parameters()] == [p.shape for p in small.parameters()]
    dense = load_run(src).model
    assert sum(p.numel() for p in trained.parameters()) < \
        sum(p.numel() for p in dense.parameters())


def test_data_dir_may_name_the_image_set_folder(tmp_path):
    from conftest import shared_data_dir
    from prunelab.data import load_dataset

    real = shared_data_dir() / "mnist"
    if not real.is_dir():
        pytest.skip("MNIST files not found")
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for f in real.iterdir():
        (folder / f.name).symlink_to(f)
    for where in (tmp_path, folder):
        data = load_dataset("fashion-mnist", data_dir=where, n_train=20, n_test=10)
        assert data.n_train == 20


# ----------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, port: int, out_dir: str, stop_at: int, results) -> None:
    from prunelab import dist
    from prunelab.data import load_dataset

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    platform = dist.detect("cpu")
    cfg = RunConfig(dataset="xor", data_options={"n_irrelevant": 3, "n_train": 90,
                                                 "n_test": 40},
                    model="mlp", model_options={"widths": [12]}, method="magnitude",
                    method_options={"sparsity": 0.5, "at_epoch": 1},
                    train=TrainConfig(epochs=3, batch_size=16, lr=0.1, eval_train=False,
                                      seed=3))
    method = build_method("magnitude", sparsity=0.5, at_epoch=1)
    if stop_at and rank == 1:  # the signal reaches one rank: every rank stops at that step
        method = _interrupt_at(method, stop_at)
    try:
        run(cfg, out_dir, progress=False, platform=platform, method=method,
            data=load_dataset("xor", n_irrelevant=3, n_train=90, n_test=40, seed=3))
        results[rank] = "done"
    except RunInterrupted as exc:
        results[rank] = exc.message
    finally:
        platform.shutdown()


@pytest.mark.slow  # three two-process launches: about 30 s on 2 cores
def test_a_two_process_run_resumes_every_rank_from_rank_0s_checkpoint(tmp_path):
    import torch.multiprocessing as mp

    from test_ddp import _free_port

    def launch(out: Path, stop_at: int) -> dict:
        with mp.Manager() as manager:
            results = manager.dict()
            mp.spawn(_ddp_worker, args=(_free_port(), str(out), stop_at, results), nprocs=2,
                     join=True)
            return dict(results)

    stopped = launch(tmp_path / "resumed", 8)  # batch 2 of epoch 2 (6 steps per epoch)
    assert all("stopped by SIGTERM at step 8 of 18" in stopped[r] for r in (0, 1))
    assert (atomic.stage_path(tmp_path / "resumed") / "resume.pt").is_file()
    assert launch(tmp_path / "resumed", 0) == {0: "done", 1: "done"}
    assert launch(tmp_path / "full", 0) == {0: "done", 1: "done"}
    assert _same(_outputs(tmp_path / "full"), _outputs(tmp_path / "resumed"))
