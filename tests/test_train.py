"""Trainer, methods, run directories, retraining baselines and IMP on tiny problems."""

from __future__ import annotations

import json

import pytest
import torch

from prunelab.config import RunConfig, TrainConfig, load_config
from prunelab.data import load_dataset
from prunelab.errors import ConfigError
from prunelab.methods.lottery import run_imp
from prunelab.models import build_model
from prunelab.retrain import parse_init, retrain, retrain_from
from prunelab.runs import load_run
from prunelab.train import evaluate, lr_factor, run


def _cfg(method="dense", epochs=4, **method_options) -> RunConfig:
    return RunConfig(
        dataset="xor", data_options={"n_irrelevant": 4, "n_train": 400, "n_test": 400},
        model="mlp", model_options={"widths": [16, 16]}, method=method,
        method_options=method_options,
        train=TrainConfig(epochs=epochs, batch_size=32, optimizer="adam", lr=1e-2, seed=7),
    )


def test_same_config_same_numbers():
    a = run(_cfg("gmp", sparsity=0.8, frequency=5), progress=False)
    b = run(_cfg("gmp", sparsity=0.8, frequency=5), progress=False)
    assert [m["test_loss"] for m in a.metrics] == [m["test_loss"] for m in b.metrics]
    assert all(torch.equal(a.final_state[k], b.final_state[k]) for k in a.final_state)
    c = run(RunConfig(**{**_cfg().__dict__, "train": TrainConfig(
        epochs=4, batch_size=32, optimizer="adam", lr=1e-2, seed=8)}), progress=False)
    assert c.metrics[-1]["test_loss"] != a.metrics[-1]["test_loss"]


def test_gmp_reaches_target_and_masked_weights_are_zero():
    res = run(_cfg("gmp", sparsity=0.9, begin=0.1, end=0.5, frequency=3), progress=False)
    assert res.sparsity["global"]["weight_sparsity"] == pytest.approx(0.9, abs=2e-3)
    for name, mask in res.masks.items():
        assert torch.all(res.final_state[name][~mask] == 0)
    sparsities = [m["mask_sparsity"] for m in res.metrics]
    assert sparsities == sorted(sparsities) and sparsities[0] < 0.9


def test_one_shot_magnitude_prunes_at_the_chosen_epoch():
    res = run(_cfg("magnitude", epochs=4, sparsity=0.75, at_epoch=2), progress=False)
    s = [m["mask_sparsity"] for m in res.metrics]
    assert s[0] == 0.0 and s[1] == pytest.approx(0.75, abs=1e-3) and s[3] == s[1]
    layer = run(_cfg("magnitude", epochs=2, sparsity=0.5, at_epoch=0, scope="layer"),
                progress=False)
    for e in layer.sparsity["layers"]:
        assert e["weight_sparsity"] == pytest.approx(0.5, abs=0.02)


def test_run_directory_reloads_to_the_same_accuracy(tmp_path):
    out = tmp_path / "run"
    res = run(_cfg("gmp", sparsity=0.8, frequency=5), out, progress=False)
    for f in ("config.yaml", "metrics.jsonl", "weights.pt", "masks.pt", "init.pt",
              "sparsity.json", "results.json", "checkpoints/epoch2.pt"):
        assert (out / f).is_file(), f
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    loaded = load_run(out)
    data = load_dataset("xor", n_irrelevant=4, n_train=400, n_test=400, seed=7)
    ev = evaluate(loaded.model, data.x_test, data.y_test)
    results = json.loads((out / "results.json").read_text())
    assert ev["accuracy"] == results["final"]["test_accuracy"] == res.final["test_accuracy"]
    # The pruned checkpoint is plain weights: it loads into a fresh, unpruned model.
    fresh = build_model("mlp", (6,), 2, widths=[16, 16])
    fresh.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    assert evaluate(fresh, data.x_test, data.y_test)["accuracy"] == ev["accuracy"]
    assert load_config(out / "config.yaml") == _cfg("gmp", sparsity=0.8, frequency=5)


def test_failed_run_leaves_nothing_half_written(tmp_path):
    cfg = _cfg()
    cfg.train.lr = 1e12  # diverges
    cfg.train.optimizer = "sgd"
    with pytest.raises(ConfigError, match="diverged"):
        run(cfg, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "pruned"
    cfg = _cfg("gmp", sparsity=0.8, frequency=5)
    cfg.train.checkpoint_steps = [10]
    run(cfg, out, progress=False)
    return out


@pytest.mark.parametrize("init", ["scratch", "original", "rewind:1", "rewind:10it"])
def test_retrain_keeps_the_mask_and_starts_where_asked(pruned_run, tmp_path, init):
    res = retrain(pruned_run, init, out_dir=tmp_path / "re")
    src = load_run(pruned_run)
    for name, mask in src.masks.items():
        assert torch.equal(res.masks[name], mask)
        assert torch.all(res.final_state[name][~mask] == 0)
    state0 = res.initial_state
    run_init = torch.load(pruned_run / "init.pt", weights_only=True)
    expected = {
        "original": run_init,
        "rewind:1": torch.load(pruned_run / "checkpoints/epoch1.pt", weights_only=True),
        "rewind:10it": torch.load(pruned_run / "checkpoints/step10.pt", weights_only=True),
    }.get(init)
    if expected is None:  # scratch: a new init
        assert not torch.equal(state0["1.weight"], run_init["1.weight"])
    else:
        assert all(torch.equal(state0[k], expected[k]) for k in expected)
    assert (tmp_path / "re" / "results.json").is_file()
    assert json.loads((tmp_path / "re" / "results.json").read_text())["retrain"]["init"] == init


def test_retrain_errors(pruned_run, tmp_path):
    with pytest.raises(ConfigError, match="--init"):
        parse_init("rewind:abc")
    with pytest.raises(Exception, match="no checkpoint 'step999'"):
        retrain(pruned_run, "rewind:999it", out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    dense = tmp_path / "dense"
    run(_cfg(epochs=1), dense, progress=False)
    with pytest.raises(ConfigError, match="not pruned"):
        retrain(dense, "scratch")


def test_retrain_a_shrunk_run_from_scratch_at_its_final_architecture(tmp_path):
    # a Bernoulli run with gated inputs: units removed physically, input columns zeroed
    src = tmp_path / "gated"
    cfg = _cfg("bernoulli", epochs=3, gate_inputs=True, pi=0.05, penalty_scale=20.0,
               theta_init=0.6, threshold=0.05)
    run(cfg, src, progress=False)
    assert (src / "shrunk.pt").is_file()
    before = load_run(src).model
    widths = [m.out_features for m in before if isinstance(m, torch.nn.Linear)]
    dropped = (before[1].weight == 0).all(dim=0)
    assert widths[:2] != [16, 16] and 0 < int(dropped.sum()) < 6  # the test needs both
    res = retrain(src, "scratch", out_dir=tmp_path / "re")
    after = load_run(tmp_path / "re").model
    assert [m.out_features for m in after if isinstance(m, torch.nn.Linear)] == widths
    assert torch.equal((after[1].weight == 0).all(dim=0), dropped)  # same inputs kept
    assert after[1].weight[:, ~dropped].ne(0).all()
    fresh = res.initial_state["1.weight"]
    assert not torch.equal(fresh[:, ~dropped], before[1].weight.detach()[:, ~dropped])
    data = load_dataset("xor", n_irrelevant=4, n_train=400, n_test=400, seed=7)
    results = json.loads((tmp_path / "re" / "results.json").read_text())
    assert evaluate(after, data.x_test, data.y_test)["accuracy"] == \
        results["final"]["test_accuracy"]
    assert results["retrain"] == {"init": "scratch", "from": str(src)}
    with pytest.raises(ConfigError, match="only be retrained from scratch"):
        retrain(src, "original", out_dir=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_retrain_from_memory_matches_mask():
    cfg = _cfg("gmp", sparsity=0.5, frequency=5)
    res = run(cfg, progress=False)
    r = retrain_from(cfg, res.masks, "original", init_states={"step0": res.initial_state})
    assert r.sparsity["global"]["weight_sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_imp_levels_nest_and_follow_the_rate(tmp_path):
    cfg = _cfg("imp", epochs=2, rounds=3, rate=0.5, rewind="1")
    results = run_imp(cfg, tmp_path / "imp", progress=False)
    sparsities = [r.sparsity["global"]["weight_sparsity"] for r in results]
    assert sparsities == pytest.approx([0.0, 0.5, 0.75, 0.875], abs=2e-3)
    for prev, nxt in zip(results[1:], results[2:]):
        for n in prev.masks:
            assert not (nxt.masks[n] & ~prev.masks[n]).any()
    summary = json.loads((tmp_path / "imp" / "results.json").read_text())
    assert [lv["level"] for lv in summary["levels"]] == [0, 1, 2, 3]
    assert (tmp_path / "imp" / "level_3" / "masks.pt").is_file()
    epoch1 = torch.load(tmp_path / "imp" / "level_0" / "checkpoints" / "epoch1.pt",
                        weights_only=True)
    lvl2_init = torch.load(tmp_path / "imp" / "level_2" / "init.pt", weights_only=True)
    assert torch.equal(lvl2_init["1.bias"], epoch1["1.bias"])  # rewound to epoch 1


def test_lr_schedules():
    cfg = TrainConfig(lr_schedule="cosine")
    assert lr_factor(cfg, 0, 100) == 1.0 and lr_factor(cfg, 50, 100) == pytest.approx(0.5)
    cfg = TrainConfig(lr_schedule="multistep", lr_milestones=[0.5, 0.75], lr_gamma=0.1)
    assert [lr_factor(cfg, s, 100) for s in (0, 50, 80)] == pytest.approx([1, 0.1, 0.01])


def test_config_validation_names_the_option():
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=-1).validate()
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig(optimizer="lbfgs").validate()
    with pytest.raises(ConfigError, match="sparsity"):
        run(_cfg("gmp", sparsity=1.2), progress=False)
    with pytest.raises(ConfigError, match="no option speed"):
        run(_cfg("gmp", speed=3), progress=False)


def test_trainer_on_a_users_own_model():
    from prunelab import GradualMagnitude, Trainer

    data = load_dataset("blobs", n_clusters=3, n_train=150, seed=0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    method = GradualMagnitude(sparsity=0.5, begin=0, end=0.5, frequency=2)
    result = Trainer(model, data, TrainConfig(epochs=5, batch_size=16, optimizer="adam",
                                              lr=1e-2), method, progress=False).fit()
    assert result.final["test_accuracy"] > 0.8
    assert result.sparsity["global"]["weight_sparsity"] == pytest.approx(0.5, abs=0.01)


def test_a_method_may_replace_model_and_optimizer_mid_training():
    """Protocol: the Trainer reads ctx.model / ctx.optimizer back after each hook."""
    from dataclasses import dataclass

    from prunelab import PruningMethod, Trainer

    @dataclass
    class Swap(PruningMethod):
        calls: int = 0
        stale_forwards: int = 0  # forward passes through a model that is no longer ctx.model

        def batch_loss(self, model, x, y, loss_fn):
            self.calls += 1
            self.stale_forwards += model is not self.ctx.model
            return loss_fn(model(x), y)

        def after_epoch(self, epoch):
            if epoch == 1:
                new = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 2))
                self.ctx.model = new
                self.ctx.optimizer = torch.optim.SGD(new.parameters(), lr=0.1)

    data = load_dataset("xor", n_irrelevant=4, n_train=64, n_test=32, seed=0)
    model = build_model("mlp", (6,), 2, widths=[8])
    method = Swap()
    trainer = Trainer(model, data, TrainConfig(epochs=2, batch_size=16), method, progress=False)
    result = trainer.fit()
    assert method.calls == 8
    assert method.stale_forwards == 0  # the forward follows the replacement at once
    assert trainer.model is method.ctx.model and trainer.model is not model
    assert set(result.final_state) == {"1.weight", "1.bias"}


def test_a_physically_shrunk_run_reloads(tmp_path):
    """A method that removes units changes the architecture: the run carries shrunk.pt and
    load_run rebuilds the smaller model, evaluating to the recorded accuracy."""
    cfg = RunConfig(
        dataset="xor", data_options={"n_irrelevant": 4, "n_train": 400, "n_test": 400},
        model="mlp", model_options={"widths": [32, 32]}, method="bernoulli",
        method_options={"penalty_scale": 200.0, "lr_theta": 0.5},
        train=TrainConfig(epochs=6, batch_size=32, optimizer="adam", lr=1e-2, seed=3),
    )
    out = tmp_path / "gated"
    res = run(cfg, out, progress=False)
    loaded = load_run(out)
    widths = [m.out_features for m in loaded.model.modules() if isinstance(m, torch.nn.Linear)]
    assert (out / "shrunk.pt").is_file() and sum(widths[:-1]) < 64
    data = load_dataset("xor", n_irrelevant=4, n_train=400, n_test=400, seed=3)
    assert evaluate(loaded.model, data.x_test, data.y_test)["accuracy"] == \
        res.final["test_accuracy"]


def test_torch_threads_is_restored_even_on_error():
    from prunelab.threads import torch_threads

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with torch_threads(before + 1):
            assert torch.get_num_threads() == before + 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
