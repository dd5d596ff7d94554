"""Sweeps: grid expansion, spec errors, execution, resume after SIGKILL, executors."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from prunelab.cli import main
from prunelab.errors import ConfigError
from prunelab.store import Store
from prunelab.sweep import (
    _bar,
    load_spec,
    probe_address,
    run_sweep,
    spec_from_dict,
)

REPO = Path(__file__).resolve().parents[1]
TRAIN = {"epochs": 2, "batch_size": 50, "optimizer": "adam", "lr": 0.01, "eval_train": False,
         "checkpoint_epochs": False}
XOR = {"name": "xor", "dataset": "xor", "model": "mlp", "model_options": {"widths": [8]},
       "data_options": {"n_irrelevant": 2, "n_train": 200, "n_test": 200}}


def tiny_spec(**over) -> dict:
    spec = {"name": "t", "base": {"train": dict(TRAIN)}, "tasks": [dict(XOR)],
            "methods": ["dense", {"name": "magnitude", "options": {"at_epoch": 0}}],
            "sparsities": [0.5], "seeds": [0, 1]}
    spec.update(over)
    return spec


# ----------------------------------------------------------------------------- expansion


def test_grid_expansion_counts_labels_and_configs():
    spec = spec_from_dict({
        "base": {"train": {"epochs": 3, "lr": 0.05}},
        "tasks": [dict(XOR), {"name": "blobs", "dataset": "blobs", "model": "mlp",
                              "train": {"epochs": 4}}],
        "methods": ["dense",
                    {"name": "magnitude", "grid": {"scope": ["global", "layer"]}},
                    {"name": "gmp", "options": {"frequency": 5}, "sparsities": [0.8]},
                    {"name": "imp", "options": {"rounds": 2}}],
        "sparsities": [0.5, 0.9],
        "seeds": [0, 1, 2],
    })
    # per task: dense 3 + magnitude 2 scopes x 2 sparsities x 3 + gmp 1 x 3 + imp 2 x 3 = 24
    assert len(spec.cells) == 48 and spec.duplicates == 0
    assert len({c.config_hash for c in spec.cells}) == 48
    count = Counter((c.task, c.label) for c in spec.cells)
    assert count[("xor", "dense")] == 3 and count[("blobs", "gmp")] == 3
    assert count[("xor", "magnitude(scope=layer)")] == 6
    for c in spec.cells:
        assert c.config.train.seed == c.seed
        assert c.config.train.lr == 0.05  # base merged key by key
        assert c.config.train.epochs == (3 if c.task == "xor" else 4)
        if c.label.startswith("magnitude"):
            assert c.config.method_options["sparsity"] == c.sparsity
        if c.label == "gmp":
            assert c.sparsity == 0.8 and c.config.method_options["frequency"] == 5
        if c.label == "imp":  # rate chosen so that `rounds` rounds reach the target
            o = c.config.method_options
            assert 1 - (1 - o["rate"]) ** o["rounds"] == pytest.approx(c.sparsity)
        if c.label == "dense":
            assert c.sparsity is None and c.config.method_options == {}
    assert {c.config.dataset for c in spec.cells} == {"xor", "blobs"}


def test_datasets_cross_models_and_explicit_runs_deduplicated():
    spec = spec_from_dict({
        "datasets": [{"name": "xor", "options": {"n_irrelevant": 3}}, "blobs"],
        "models": ["mlp", {"name": "mlp", "options": {"widths": [4]}}],
        "methods": ["dense"],
        "seeds": [7],
        "runs": [{"dataset": "blobs", "model": "mlp", "method": "dense",
                  "train": {"seed": 7}},  # same as a grid cell: dropped
                 {"dataset": "xor", "method": "gmp", "method_options": {"sparsity": 0.7},
                  "task": "extra", "label": "gmp-70"}],
    })
    assert len(spec.cells) == 5 and spec.duplicates == 1
    assert {c.task for c in spec.cells} == {"xor/mlp", "blobs/mlp", "extra"}
    extra = [c for c in spec.cells if c.task == "extra"][0]
    assert extra.label == "gmp-70" and extra.sparsity == 0.7 and extra.seed == 0
    xor = [c for c in spec.cells if c.config.dataset == "xor" and c.task != "extra"]
    assert all(c.config.data_options == {"n_irrelevant": 3} for c in xor)
    assert sorted(str(c.config.model_options) for c in xor) == ["{'widths': [4]}", "{}"]


def test_shipped_specs_expand():
    smoke = load_spec(REPO / "sweeps" / "smoke.yaml")
    assert len(smoke.cells) == 4
    compare = load_spec(REPO / "sweeps" / "compare-methods.yaml")
    from prunelab.methods import list_methods

    methods = {c.config.method for c in compare.cells}
    # the methods registered when the spec was written; later ones are added as one entry each
    assert {"dense", "magnitude", "gmp", "imp"} <= methods <= set(list_methods())
    assert {c.task for c in compare.cells} == {"xor", "mnist", "xor:validation",
                                               "mnist:validation"}
    labels = {c.label for c in compare.cells}
    assert {"bernoulli(penalty_scale=1.0)", "bernoulli(penalty_scale=30.0)",
            "biobjective(weight=0.99)"} <= labels


def test_a_task_with_validation_gets_its_validation_twin():
    spec = spec_from_dict({"tasks": [dict(XOR, validation=0.25)], "methods": ["dense"],
                           "seeds": [0, 1]})
    tasks = {c.task: c for c in spec.cells}
    assert set(tasks) == {"xor", "xor:validation"} and len(spec.cells) == 4
    twin, plain = tasks["xor:validation"], tasks["xor"]
    assert twin.config.data_options == {**plain.config.data_options, "validation": 0.25}
    assert twin.config.model == plain.config.model and twin.config_hash != plain.config_hash
    for bad in (0, 1.5, "a", True):
        with pytest.raises(ConfigError, match=r"tasks\[0\].validation must be a fraction"):
            spec_from_dict({"tasks": [dict(XOR, validation=bad)], "methods": ["dense"]})


@pytest.mark.parametrize("spec, message", [
    ({"methodz": ["dense"]}, "unknown key(s) methodz in the sweep spec; valid: name,"),
    ({"methods": [{"name": "gmp", "sparsity": 0.5}]},
     "unknown key(s) sparsity in methods[0]; valid: name, label, options, grid, sparsities"),
    ({"methods": ["pruneit"]}, "unknown method 'pruneit'; valid methods: "),
    ({"methods": [{"name": "gmp", "options": {"sparsty": 0.5}}]},
     "method 'gmp' has no option sparsty; valid:"),
    ({"methods": ["gmp"], "sparsities": [1.5]}, "sparsities must be in [0, 1)"),
    ({"methods": ["dense"], "executor": "slurm"}, "executor must be one of local, ray"),
    ({"methods": ["dense"], "workers": 0}, "workers must be in [1, inf]"),
    ({"methods": ["dense"], "seeds": [0.5]}, "seeds must be integers"),
    ({"methods": ["dense"], "base": {"train": {"epochs": 0}}}, "epochs must be in [1, inf]"),
    ({"methods": ["dense"], "base": {"train": {"epoch": 3}}}, "unknown key(s) epoch in train"),
    ({"tasks": [{"name": "x", "dataset": "nope", "model": "mlp"}], "methods": ["dense"]},
     "unknown dataset 'nope'"),
    ({"tasks": [{"dataset": "xor"}]}, "has tasks but no 'methods'"),
    ({}, "has no runs"),
])
def test_spec_errors_name_the_key_and_valid_values(spec, message):
    with pytest.raises(ConfigError) as info:
        spec_from_dict(spec)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_malformed_yaml_gives_line_and_column(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmethods: [dense, gmp\nseeds: [0]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:3:\d+: invalid YAML"):
        load_spec(path)
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prunelab: error: ") and "bad.yaml:3:" in err and "\n" not in err
    path.write_text("name: x\nmethods: dense\n  seeds: [0]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:3:8: invalid YAML: mapping values"):
        load_spec(path)
    with pytest.raises(ConfigError, match="sweep spec not found"):
        load_spec(tmp_path / "missing.yaml")


def test_bad_execution_options_are_one_line(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_spec()))
    for flags, message in ((["--workers", "0"], "workers must be in [1, inf], got 0"),
                           (["--threads", "0"], "threads must be in [1, inf], got 0"),
                           (["--ray-timeout", "0"], "ray_timeout must be in (0, inf]")):
        assert main(["sweep", str(path), "--out", str(tmp_path / "o"), *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o" / "results.db").exists()


def test_dry_run_lists_cells(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_spec()))
    assert main(["sweep", str(path), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "4 run(s)" in out and "magnitude-mlp-xor-" in out
    assert not (tmp_path / "o").exists()


def test_progress_bar_only_on_a_terminal():
    assert _bar(3, 0, "x", None) is None  # pytest captures stderr: not a TTY
    bar = _bar(3, 1, "x", True)
    assert bar is not None and bar.n == 1 and bar.total == 3
    bar.close()


# ----------------------------------------------------------------------------- running


def test_sweep_runs_records_and_skips_finished(tmp_path):
    spec = spec_from_dict(tiny_spec())
    first = run_sweep(spec, tmp_path, workers=1)
    assert len(first.executed) == 4 and first.failed == [] and first.skipped == 0
    with Store(first.db) as store:
        rows = store.rows()
        assert [r["status"] for r in rows] == ["done"] * 4
        mag = [r for r in rows if r["method"] == "magnitude"]
        assert all(r["weight_sparsity"] == pytest.approx(0.5, abs=0.02) for r in mag)
        assert all(r["params_nonzero"] < r["params"] for r in mag)
        assert all(r["machine"]["torch_threads"] >= 1 and r["wall_seconds"] > 0 for r in rows)
        for r in rows:
            assert (Path(r["run_dir"]) / "results.json").is_file()
    again = run_sweep(spec, tmp_path, workers=1)
    assert again.executed == [] and again.skipped == 4
    with Store(first.db) as store:
        assert Counter(e["event"] for e in store.events()) == {"start": 4, "done": 4}


def test_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    spec = tiny_spec(methods=["dense", {"name": "magnitude", "options": {"at_epoch": 9}}],
                     seeds=[0])
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--workers", "1",
                 "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "1 failed" in out and "at_epoch (9) is after the last epoch (2)" in out
    with Store(tmp_path / "o" / "results.db") as store:
        failed = store.rows(status="failed")
        assert len(failed) == 1 and "at_epoch (9)" in failed[0]["error"]
        assert len(store.rows(status="done")) == 1
    # not retried unless asked
    result = run_sweep(load_spec(path), tmp_path / "o", workers=1)
    assert result.executed == [] and result.failed == []
    result = run_sweep(load_spec(path), tmp_path / "o", workers=1, retry_failed=True)
    assert len(result.failed) == 1


def test_finished_run_directory_is_recovered_not_rerun(tmp_path):
    spec = spec_from_dict(tiny_spec(seeds=[0]))
    run_sweep(spec, tmp_path, workers=1)
    target = spec.cells[1].config_hash
    with Store(tmp_path / "results.db") as store:  # as if killed after the run dir was renamed
        store.mark_running(target)                  # into place but before it was recorded
        before = store.get(target)["metrics"]
    (tmp_path / "runs" / ".x.partial-abc").mkdir()  # and a staging dir of a killed run
    result = run_sweep(spec, tmp_path, workers=1)
    assert result.executed == [] and result.recovered == 1
    with Store(tmp_path / "results.db") as store:
        assert store.get(target)["status"] == "done"
        assert store.get(target)["metrics"] == before
        assert [e["event"] for e in store.events(target)][-2:] == ["reset", "recovered"]
    assert not (tmp_path / "runs" / ".x.partial-abc").exists()


def test_second_sweep_on_the_same_output_is_refused(tmp_path):
    import fcntl

    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / ".sweep.lock", "w") as fh:
        fh.write("4242")
        fh.flush()
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(ConfigError, match=r"another sweep \(pid 4242\) is running"):
            run_sweep(spec_from_dict(tiny_spec()), tmp_path, workers=1)


def _counts(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return dict(conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status"))
        finally:
            conn.close()
    except sqlite3.Error:
        return {}


@pytest.mark.parametrize("workers", [1, 2])
def test_resume_after_sigkill_runs_everything_exactly_once(tmp_path, workers):
    spec = tiny_spec(methods=["dense"], seeds=list(range(6)), sparsities=[])
    spec["tasks"][0]["data_options"]["n_train"] = 1500
    spec["base"]["train"]["epochs"] = 4
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    db = out / "results.db"
    cmd = [sys.executable, "-m", "prunelab.cli", "sweep", str(path), "--out", str(out),
           "--workers", str(workers), "--threads", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            c = _counts(db)
            if c.get("done", 0) >= 2 and c.get("running", 0) >= 1:
                break
            if proc.poll() is not None:
                pytest.fail(f"sweep ended before it could be killed: "
                            f"{proc.stderr.read().decode()[-500:]}")
            time.sleep(0.05)
        else:
            pytest.fail("the sweep made no progress")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    killed = _counts(db)
    assert killed.get("running", 0) >= 1 and 2 <= killed.get("done", 0) < 6
    with Store(db) as store:
        done_before = {r["config_hash"] for r in store.rows(status="done")}
        metrics_before = {h: store.get(h)["metrics"] for h in done_before}
    time.sleep(1.0)  # orphaned workers (if any) notice the dead parent and exit
    result = run_sweep(load_spec(path), out, workers=workers, threads=1)
    assert result.skipped == len(done_before)
    assert len(result.executed) + result.recovered == 6 - len(done_before)
    with Store(db) as store:
        rows = store.rows()
        assert len(rows) == 6 and {r["status"] for r in rows} == {"done"}
        events = store.events()
        for r in rows:
            h = r["config_hash"]
            finished = [e for e in events if e["config_hash"] == h
                        and e["event"] in ("done", "recovered")]
            assert len(finished) == 1, f"{h} finished {len(finished)} times"
            if h in done_before:  # finished before the kill: kept, never re-run
                assert r["attempts"] == 1 and r["metrics"] == metrics_before[h]
        assert store.integrity_check() == "ok"
    run_dirs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(run_dirs) == 6 and not any(n.startswith(".") for n in run_dirs)
    assert sorted(d.rsplit("-", 1)[1] for d in run_dirs) == sorted(r["config_hash"]
                                                                   for r in rows)


@pytest.mark.parametrize("context", ["forkserver", pytest.param("spawn", marks=pytest.mark.slow)])
def test_process_pool_matches_in_process_results(tmp_path, context):
    spec = spec_from_dict(tiny_spec())
    serial = run_sweep(spec, tmp_path / "serial", workers=1)
    pool = run_sweep(spec, tmp_path / "pool", workers=2, threads=1, context=context)
    assert len(pool.executed) == 4
    a = {r["config_hash"]: r["test_accuracy"] for r in serial.rows}
    b = {r["config_hash"]: r["test_accuracy"] for r in pool.rows}
    assert a == b
    assert {r["machine"]["pid"] for r in pool.rows} != {os.getpid()}


# ----------------------------------------------------------------------------- ray


def test_unknown_pool_context_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="context must be one of spawn, forkserver, fork"):
        run_sweep(spec_from_dict(tiny_spec()), tmp_path, workers=2, context="threads")


def test_unreachable_ray_address_fails_fast():
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        probe_address("127.0.0.1:1", timeout=3)
    assert time.perf_counter() - start < 5
    with pytest.raises(ConfigError, match="HOST:PORT"):
        probe_address("ray://head:notaport")


def test_ray_executor_without_ray_says_how_to_get_it(tmp_path):
    try:
        import ray  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"needs the ray package"):
            run_sweep(spec_from_dict(tiny_spec()), tmp_path, executor="ray")
    else:
        pytest.skip("ray is installed; the executor itself is tested below")


def test_ray_executor_local_mode_matches_local(tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (pip install 'prunelab[ray]')")
    spec = spec_from_dict(tiny_spec())
    local = run_sweep(spec, tmp_path / "local", workers=1)
    ray_result = run_sweep(spec, tmp_path / "ray", executor="ray", workers=2, threads=1)
    assert len(ray_result.executed) == 4 and ray_result.failed == []
    a = {r["config_hash"]: (r["test_accuracy"], r["test_loss"]) for r in local.rows}
    b = {r["config_hash"]: (r["test_accuracy"], r["test_loss"]) for r in ray_result.rows}
    assert a == b
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="cannot reach the Ray cluster"):
        run_sweep(spec, tmp_path / "bad", executor="ray", address="127.0.0.1:1",
                  ray_timeout=5)
    assert time.perf_counter() - start < 30
