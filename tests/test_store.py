"""The SQLite results store: round trips, atomic writes, locked and corrupt databases."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from prunelab.config import RunConfig, TrainConfig
from prunelab.errors import ConfigError, PrunelabError
from prunelab.store import STATUSES, Store, StoreError, metrics_from_run_dir


def _cell(seed: int, method: str = "dense") -> dict:
    cfg = RunConfig(method=method, train=TrainConfig(seed=seed))
    return {"config_hash": cfg.config_hash(), "config": cfg.to_dict(), "method": method,
            "dataset": cfg.dataset, "model": cfg.model, "sweep": "s", "task": "xor",
            "label": method, "sparsity": None, "seed": seed, "run_dir": f"runs/{seed}"}


def test_round_trip_and_status_history(tmp_path):
    db = tmp_path / "r.db"
    cells = [_cell(s) for s in range(3)]
    with Store(db) as store:
        assert store.add_runs(cells) == 3
        assert store.add_runs(cells) == 0  # already present: left as they are
        h = cells[1]["config_hash"]
        store.mark_running(h, {"host": "here"})
        metrics = {"test_accuracy": 0.875, "weight_sparsity": 0.9, "params": 1234,
                   "level_accuracies": [0.5, 0.75]}
        store.mark_done(h, metrics, wall_seconds=1.5)
        store.mark_failed(cells[2]["config_hash"], "ConfigError: lr must be > 0")
    with Store(db, create=False) as store:  # reopened: everything persisted
        run = store.get(h)
        assert run["status"] == "done" and run["attempts"] == 1
        assert run["metrics"] == metrics
        assert run["config"] == cells[1]["config"]
        assert run["machine"] == {"host": "here"}
        assert run["wall_seconds"] == 1.5 and run["finished_at"] >= run["started_at"]
        assert store.status_counts() == {"pending": 1, "running": 0, "done": 1, "failed": 1}
        assert [e["event"] for e in store.events(h)] == ["start", "done"]
        flat = store.rows(status="done")
        assert len(flat) == 1 and flat[0]["test_accuracy"] == 0.875
        assert flat[0]["seed"] == 1 and flat[0]["task"] == "xor"
        assert store.rows(status="failed")[0]["error"] == "ConfigError: lr must be > 0"
        assert store.integrity_check() == "ok"
        assert store.get("nope") is None


def test_query_returns_rows_without_pandas(tmp_path):
    with Store(tmp_path / "r.db") as store:
        store.add_runs([_cell(0), _cell(1)])
        result = store.query(seed=1)
    try:
        import pandas  # noqa: F401
    except ImportError:
        assert isinstance(result, list) and [r["seed"] for r in result] == [1]
    else:
        assert list(result["seed"]) == [1]


def test_query_dataframe_when_pandas_is_installed(tmp_path):
    pd = pytest.importorskip("pandas", reason="pandas is not installed (rows path tested)")
    with Store(tmp_path / "r.db") as store:
        store.add_runs([_cell(0), _cell(1)])
        store.mark_done(_cell(0)["config_hash"], {"test_accuracy": 0.5})
        df = store.query()
    assert isinstance(df, pd.DataFrame) and len(df) == 2
    assert df.set_index("seed").loc[0, "test_accuracy"] == 0.5


def test_reset_puts_killed_runs_back_to_pending(tmp_path):
    with Store(tmp_path / "r.db") as store:
        store.add_runs([_cell(0), _cell(1)])
        h0, h1 = _cell(0)["config_hash"], _cell(1)["config_hash"]
        store.mark_running(h0)
        store.mark_running(h1)
        store.mark_done(h1, {"test_accuracy": 1.0})
        assert store.reset(("running",)) == [h0]
        assert store.get(h0)["status"] == "pending" and store.get(h1)["status"] == "done"
        store.mark_running(h0)
        assert store.get(h0)["attempts"] == 2
        with pytest.raises(ConfigError, match="status must be one of"):
            store.reset(("halted",))


def test_bad_writes_are_rejected_whole(tmp_path):
    with Store(tmp_path / "r.db") as store:
        bad = dict(_cell(1))
        del bad["method"]
        with pytest.raises(KeyError):
            store.add_runs([_cell(0), bad])  # the first cell must not be half-added
        assert store.rows() == []
        with pytest.raises(StoreError, match="no run with config hash"):
            store.mark_done("0123456789", {})
        with pytest.raises(ConfigError, match="valid: sweep, task"):
            store.rows(colour="red")


def test_locked_database_gives_one_clear_line(tmp_path):
    db = tmp_path / "r.db"
    with Store(db) as store:
        store.add_runs([_cell(0)])
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process in the middle of a write
    try:
        store = Store(db, timeout=0.2)
        with pytest.raises(StoreError) as info:
            store.mark_running(_cell(0)["config_hash"])
        msg = str(info.value)
        assert "locked by another process" in msg and str(db) in msg and "\n" not in msg
        assert isinstance(info.value, PrunelabError)
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.mark_running(_cell(0)["config_hash"])  # works once the lock is gone
    assert store.get(_cell(0)["config_hash"])["status"] == "running"
    store.close()


@pytest.mark.parametrize("content", [b"this is not a database at all" * 100,
                                     b"SQLite format 3\x00" + b"\xff" * 3000])
def test_corrupt_database_gives_one_clear_line(tmp_path, content):
    db = tmp_path / "r.db"
    db.write_bytes(content)
    with pytest.raises(StoreError, match="corrupt or not a prunelab store") as info:
        Store(db)
    assert "\n" not in str(info.value)


def test_missing_database_when_not_creating(tmp_path):
    with pytest.raises(StoreError, match="not found"):
        Store(tmp_path / "none.db", create=False)


def test_killed_writer_never_leaves_the_store_corrupt(tmp_path):
    """SIGKILL in the middle of a write transaction: the committed state survives intact."""
    db = tmp_path / "r.db"
    with Store(db) as store:
        store.add_runs([_cell(0)])
    script = textwrap.dedent(f"""
        import sys, time
        from prunelab.store import Store
        from prunelab.config import RunConfig, TrainConfig
        store = Store({str(db)!r})
        with store.write() as conn:
            for i in range(1, 500):
                cfg = RunConfig(train=TrainConfig(seed=i))
                conn.execute("INSERT INTO runs (config_hash, method, dataset, model, config, "
                             "status, created_at) VALUES (?, 'dense', 'xor', 'mlp', '{{}}', "
                             "'pending', 0)", (cfg.config_hash(),))
            print("inside", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "inside"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with Store(db, timeout=5) as store:
        assert store.integrity_check() == "ok"
        assert len(store.rows()) == 1  # none of the uncommitted rows
        store.mark_running(_cell(0)["config_hash"])  # and it is writable again at once
        assert set(store.status_counts()) == set(STATUSES)


def test_metrics_from_run_dirs(tmp_path):
    from prunelab.methods.lottery import run_imp
    from prunelab.train import run

    train = TrainConfig(epochs=2, batch_size=50, optimizer="adam", lr=0.01, eval_train=False)
    data_opts = {"n_irrelevant": 2, "n_train": 200, "n_test": 200}
    cfg = RunConfig("xor", data_opts, None, "mlp", {"widths": [8]}, "magnitude",
                    {"sparsity": 0.5, "at_epoch": 0}, train)
    result = run(cfg, tmp_path / "mag")
    m = metrics_from_run_dir(tmp_path / "mag")
    assert m["test_accuracy"] == result.final["test_accuracy"]
    assert m["weight_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert m["params"] == 8 * 4 + 8 + 8 * 2 + 2
    assert 0 < m["params_nonzero"] < m["params"]
    assert 0 < m["flops_sparse"] < m["flops_dense"]
    imp = RunConfig("xor", data_opts, None, "mlp", {"widths": [8]}, "imp",
                    {"rounds": 2, "rate": 0.5}, train)
    levels = run_imp(imp, tmp_path / "imp")
    m = metrics_from_run_dir(tmp_path / "imp")
    assert m["levels"] == 2
    assert m["test_accuracy"] == levels[-1].final["test_accuracy"]
    assert m["weight_sparsity"] == pytest.approx(0.75, abs=0.02)
    assert m["train_seconds"] == pytest.approx(sum(r.final["train_seconds"] for r in levels))
    assert m["weights_at_start"] == m["weights"] and m["num_classes"] == 2
    assert m["weights_removed_vs_start"] == pytest.approx(m["weight_sparsity"])
    with pytest.raises(PrunelabError, match="file not found"):
        metrics_from_run_dir(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{ not json")
    with pytest.raises(PrunelabError, match="malformed JSON"):
        metrics_from_run_dir(tmp_path / "bad")
    assert time.time() > 0


def test_a_shrunk_run_is_measured_against_the_network_it_started_from(tmp_path):
    """Bernoulli gates remove units physically, so the final sparsity report describes a small
    dense network (weight sparsity 0); the fraction removed is taken against init.pt."""
    from prunelab.train import run

    train = TrainConfig(epochs=3, batch_size=50, optimizer="adam", lr=0.01, eval_train=False)
    cfg = RunConfig("xor", {"n_irrelevant": 2, "n_train": 200, "n_test": 200}, None, "mlp",
                    {"widths": [16, 16]}, "bernoulli",
                    {"pi": 0.05, "penalty_scale": 20.0, "theta_init": 0.6}, train)
    run(cfg, tmp_path / "b")
    m = metrics_from_run_dir(tmp_path / "b")
    dense_weights = 4 * 16 + 16 * 16 + 16 * 2
    assert m["weights_at_start"] == dense_weights
    assert m["params_at_start"] == dense_weights + 16 + 16 + 2
    assert m["weights"] < dense_weights  # the shrunk network
    assert m["weights_removed_vs_start"] == pytest.approx(1 - m["weights_nonzero"] / dense_weights)
    assert m["weights_removed_vs_start"] > m["weight_sparsity"] + 0.3
    assert m["params_removed_vs_start"] == pytest.approx(
        1 - m["params_nonzero"] / m["params_at_start"])
