"""The test-set firewall: the test split is sealed until the selection is frozen, every hand-out
is recorded, and each reproduction runs its selection without touching test data."""

from __future__ import annotations

import json

import pytest
import torch

from prunelab.config import TrainConfig
from prunelab.data import load_dataset
from prunelab.firewall import Firewall, FirewallError, GuardedDataset
from prunelab.models import build_model
from prunelab.train import Trainer, evaluate


def _xor():
    return load_dataset("xor", n_irrelevant=2, n_train=120, n_test=60, seed=0)


def test_guarded_dataset_seals_only_the_test_split():
    fw = Firewall("toy")
    plain = _xor()
    data = fw.guard(plain)
    assert isinstance(data, GuardedDataset) and data.n_test == 60 and data.n_train == 120
    assert torch.equal(data.x_train, plain.x_train)
    assert data.summary()["n_test"] == 60 and "sealed" in repr(data)
    for name in ("x_test", "y_test"):
        with pytest.raises(FirewallError, match=f"{name} of 'xor' was read directly"):
            getattr(data, name)
    val = fw.validation(data, 0.25, seed=1)  # validation takes the test split's place
    assert not isinstance(val, GuardedDataset) and val.n_train + val.n_test == 120
    assert torch.equal(val.x_test, plain.holdout_validation(0.25, 1).x_test)
    sub = data.subset_train(50, seed=0)
    assert isinstance(sub, GuardedDataset) and sub.n_train == 50
    with pytest.raises(FirewallError):
        sub.x_test


def test_test_split_opens_after_the_freeze_and_each_access_is_recorded():
    fw = Firewall("toy")
    data = fw.load("xor", n_irrelevant=2, n_train=120, n_test=60, seed=0)
    with pytest.raises(FirewallError, match="before the selection was frozen"):
        fw.test(data, "model A")
    with pytest.raises(FirewallError):
        fw.record("census", "test accuracy")
    fw.freeze(lr=0.1, rule="best validation accuracy")
    test = fw.test(data, "model A", "test loss")
    assert torch.equal(test.x_test, _xor().x_test)
    fw.record("census restarts", "test accuracy", count=32)
    out = fw.to_results()
    assert out["selection"]["frozen"] and out["selection"]["choices"] == {
        "lr": 0.1, "rule": "best validation accuracy"}
    assert [(e["index"], e["what"], e["metric"], e["count"]) for e in out["test_evaluations"]] \
        == [(1, "model A", "test loss", 1), (2, "census restarts", "test accuracy", 32)]
    json.dumps(out)
    with pytest.raises(FirewallError, match="frozen twice"):
        fw.freeze(lr=0.2)
    with pytest.raises(FirewallError, match="another firewall"):
        Firewall("other").test(data, "x")


def test_trainer_on_guarded_data_fails_until_validation_data_is_used():
    """The Trainer evaluates the dataset's test split every epoch, so training on a guarded
    dataset during selection is caught; on the validation split it runs."""
    fw = Firewall("toy")
    data = fw.guard(_xor())
    cfg = TrainConfig(epochs=1, batch_size=32, optimizer="adam", lr=1e-2, eval_train=False)
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, data.num_classes, widths=[8])
    with pytest.raises(FirewallError, match="x_test"):
        Trainer(model, data, cfg, progress=False).fit()
    res = Trainer(model, fw.validation(data, 0.25), cfg, progress=False).fit()
    assert 0.0 <= res.final["test_accuracy"] <= 1.0
    fw.freeze(epochs=1)
    final = fw.test(data, "toy model", "test accuracy")
    assert evaluate(model, final.x_test, final.y_test)["accuracy"] >= 0.0
    assert len(fw.evaluations) == 1


# ----------------------------------------------------------------------------- reproductions
# Each reproduction runs end to end on tiny settings with every dataset it loads sealed by its
# own firewall: any read of test data before its freeze (or outside Firewall.test) raises.


@pytest.fixture
def audit(monkeypatch):
    """Collects the firewalls a reproduction creates and seals whatever a module loads with
    `load_dataset` directly (so bypassing `Firewall.load` is caught too)."""
    created: list[Firewall] = []
    real_init = Firewall.__init__

    def init(self, study):
        real_init(self, study)
        created.append(self)

    monkeypatch.setattr(Firewall, "__init__", init)

    def seal_loads_of(module) -> None:
        if not hasattr(module, "load_dataset"):
            return
        real = module.load_dataset

        def sealed(*args, **kwargs):
            if not created:
                raise FirewallError(f"{module.__name__} loaded data before creating its "
                                    "firewall")
            return created[-1].guard(real(*args, **kwargs))

        monkeypatch.setattr(module, "load_dataset", sealed)

    return created, seal_loads_of


def _check_record(res: dict, created: list[Firewall], uses_test: bool) -> None:
    assert len(created) == 1 and res["selection"] == created[0].to_results()["selection"]
    assert res["selection"]["frozen"]
    frozen = res["selection"]["frozen_after_seconds"]
    assert all(e["seconds_after_start"] >= frozen for e in res["test_evaluations"])
    assert bool(res["test_evaluations"]) == uses_test
    assert [e["index"] for e in res["test_evaluations"]] == list(
        range(1, len(res["test_evaluations"]) + 1))


def test_audit_catches_a_reproduction_that_reads_test_data_before_its_freeze(audit, tmp_path):
    """The harness below fails a reproduction that peeks: here a toy one that picks its
    learning rate by test accuracy, through the firewall or around it."""
    import types

    created, seal_loads_of = audit
    toy = types.ModuleType("toy_reproduction")
    toy.load_dataset = load_dataset

    def run_peeking(through_firewall: bool):
        fw = Firewall("toy")
        data = toy.load_dataset("xor", n_irrelevant=2, n_train=120, n_test=60, seed=0)
        if through_firewall:
            data = fw.test(data, "choosing the learning rate")  # before freeze(): refused
        torch.manual_seed(0)
        model = build_model("mlp", data.input_shape, data.num_classes, widths=[8])
        return evaluate(model, data.x_test, data.y_test)  # a test metric read to choose

    seal_loads_of(toy)
    for through in (False, True):
        with pytest.raises(FirewallError):
            run_peeking(through)


class _Frozen(Exception):
    """Raised in place of the freeze: the selection stage ended without touching test data."""


def _tiny_deep_optima(tmp_path, monkeypatch):
    from prunelab.experiments import deep_optima as do
    from prunelab.landscape.census import CensusConfig

    monkeypatch.setenv("PRUNELAB_DATA", str(tmp_path / "none"))  # real sets: skipped
    monkeypatch.setenv("HOME", str(tmp_path))
    census = CensusConfig(irrelevant=[0, 4], restarts=4, n_train=200, n_test=300, n_probe=100,
                          epochs=8, chunk=4, annealed={"keep": 40, "mu": 5.0,
                                                       "min_layer_keep": 4})
    tiny = do.Settings(census, 4, [0], {"madelon-like": [0], "colon": [0]},
                       real_epochs={"madelon-like": 2, "colon": 2}, forest_trees=5)
    monkeypatch.setattr(do, "settings", lambda quick: tiny)
    return do, lambda: do.run(tmp_path / "out", quick=True, progress=False, log=lambda s: None)


def _tiny_hessian(tmp_path, monkeypatch):
    from prunelab.experiments import hessian_spectrum as hs

    monkeypatch.setenv("PRUNELAB_DATA", str(tmp_path / "none"))  # MNIST part: skipped
    monkeypatch.setenv("HOME", str(tmp_path))
    real_fits, real_lb_sb = hs._Fits, hs.part_lb_sb
    monkeypatch.setattr(hs, "_Fits", lambda gd, finish, seed, log: real_fits(30, 5, seed, log))
    monkeypatch.setattr(hs, "part_lb_sb", lambda steps_lb, steps_sb, seed, log: real_lb_sb(
        60, 60, seed, log))
    return hs, lambda: hs.run(tmp_path / "out", quick=True, log=lambda s: None)


def _mnist(monkeypatch) -> None:
    from conftest import shared_data_dir

    monkeypatch.setenv("PRUNELAB_DATA", str(shared_data_dir()))


def _tiny_dead_units(tmp_path, monkeypatch):
    from prunelab.experiments import dead_units

    _mnist(monkeypatch)
    tiny = dead_units.Settings(n_train=1000, n_test=300, n_val=200, dense_epochs=1,
                               finetune_epochs=1, max_rounds=1, round_fraction=0.5,
                               score_samples=100, fractions=(0.5,), sparsities=(0.5,))
    monkeypatch.setattr(dead_units, "settings", lambda quick: tiny)
    return dead_units, lambda: dead_units.run(tmp_path / "out", quick=True, log=lambda s: None)


def _tiny_landscape(tmp_path, monkeypatch):
    from prunelab.experiments import sparse_landscape as sl

    _mnist(monkeypatch)
    tiny = sl.Settings(n_train=1500, epochs=2, curve_epochs=1, line_points=3, curve_points=3,
                       lr_grid=(0.02, 0.05), sparsity=0.9)
    monkeypatch.setattr(sl, "settings", lambda quick: tiny)
    return sl, lambda: sl.run(tmp_path / "out", quick=True, log=lambda s: None)


def _tiny_landscape_resnet(tmp_path, monkeypatch):
    from prunelab.experiments import sparse_landscape_resnet as slr

    _mnist(monkeypatch)
    tiny = slr.Settings(dataset="mnist", width=0.125, n_train=200, epochs=1, frequency=2,
                        curve_epochs=1, line_points=3, curve_points=3, eval_train=100,
                        eval_test=100, bn_samples=100, batch_size=50)
    monkeypatch.setattr(slr, "settings", lambda quick: tiny)
    return slr, lambda: slr.run(tmp_path / "out", quick=True, log=lambda s: None)


def _tiny_bernoulli(tmp_path, monkeypatch):
    from prunelab.experiments import bernoulli

    _mnist(monkeypatch)
    plan = {"models": ["lenet-300-100"], "n_train": 400, "epochs": {"lenet-300-100": 1},
            "runs": [(1, 0)], "dense_seeds": [0], "scratch": True}
    return bernoulli, lambda: bernoulli.run(tmp_path / "out", quick=True, plan=plan,
                                            log=lambda s: None)


def _tiny_pareto(tmp_path, monkeypatch):
    from prunelab.experiments import pareto

    _mnist(monkeypatch)
    tiny = pareto.ParetoSettings(n_train=600, n_val=200, short_epochs=1, full_epochs=2,
                                 budget=3, grid=[1.0, 0.999], finetune_epochs=1)
    monkeypatch.setattr(pareto, "settings", lambda quick: tiny)
    return pareto, lambda: pareto.run(tmp_path / "out", quick=True, log=lambda s: None)


def _tiny_sparse_training(tmp_path, monkeypatch):
    from prunelab.experiments import sparse_training as st
    from test_sparse_training import tiny_settings

    _mnist(monkeypatch)
    monkeypatch.setattr(st, "settings", lambda quick: tiny_settings())
    return st, lambda: st.run(tmp_path / "out", quick=True, progress=False, log=lambda s: None)


def _tiny_layer_pruning(tmp_path, monkeypatch):
    from prunelab.experiments import layer_pruning

    _mnist(monkeypatch)
    plan = {"n_train": 600, "epochs": 1, "depths": [2], "seeds": [0], "combined_seeds": [0],
            "strengths": [1.0], "selection_seeds": [0], "resnet": True,
            "resnet_n_train": 120, "resnet_epochs": 1, "resnet_strengths": [1.0],
            "resnet_seeds": [0]}
    return layer_pruning, lambda: layer_pruning.run(tmp_path / "out", quick=True, plan=plan,
                                                    log=lambda s: None)


TINY = {"deep-optima": _tiny_deep_optima, "hessian-spectrum": _tiny_hessian,
        "dead-units": _tiny_dead_units, "sparse-landscape": _tiny_landscape,
        "sparse-landscape-resnet": _tiny_landscape_resnet,
        "bernoulli": _tiny_bernoulli, "pareto": _tiny_pareto,
        "sparse-training": _tiny_sparse_training, "layer-pruning": _tiny_layer_pruning}


def test_every_reproduction_is_covered():
    """A new reproduction needs its tiny setting here, so the firewall tests run it."""
    from prunelab.experiments.registry import REPRODUCTIONS

    assert set(REPRODUCTIONS) == set(TINY)


@pytest.mark.parametrize("name", list(TINY))
def test_reproduction_makes_its_choices_without_test_data(name, audit, tmp_path, monkeypatch):
    """Runs a reproduction's selection stage on tiny settings, every dataset sealed, up to its
    freeze (which stops the run here): reading test data on the way fails the test."""
    created, seal_loads_of = audit
    module, run = TINY[name](tmp_path, monkeypatch)
    seal_loads_of(module)
    seen = {}

    def stop(self, **choices):
        seen.update(choices)
        raise _Frozen

    monkeypatch.setattr(Firewall, "freeze", stop)
    with pytest.raises(_Frozen):
        run()
    assert len(created) == 1 and not created[0].evaluations
    if name == "sparse-landscape":
        assert seen["lr"] in (0.02, 0.05) and seen["curve_lr"] == seen["lr"]
    if name == "pareto":
        assert 0 < seen["knee_weight"] <= 1
    if name == "sparse-training":
        assert seen["lenet-300-100"]["lr"] in (0.05, 0.1)
        assert seen["lenet-300-100"]["update_interval"] in (1, 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TINY))
def test_reproduction_records_each_test_evaluation_after_its_freeze(name, audit, tmp_path,
                                                                      monkeypatch):
    created, seal_loads_of = audit
    module, run = TINY[name](tmp_path, monkeypatch)
    seal_loads_of(module)
    res = run()
    assert len(created) == 1 and res["selection"] == created[0].to_results()["selection"]
    assert res["selection"]["frozen"]
    frozen = res["selection"]["frozen_after_seconds"]
    evaluations = res["test_evaluations"]
    assert all(e["seconds_after_start"] >= frozen for e in evaluations)
    assert [e["index"] for e in evaluations] == list(range(1, len(evaluations) + 1))
    assert bool(evaluations) == (name != "hessian-spectrum")
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["test_evaluations"] == evaluations
    choices = res["selection"]["choices"]
    if name == "deep-optima":
        assert [e["count"] for e in evaluations] == [16, 4, 6]  # census, XOR, madelon-like
        note = res["real"]["notes"][0]
        assert note.startswith("colon skipped") and len(res["real"]["notes"]) == 1
        assert {c["name"]: c for c in res["claims"]}["colon:annealed-vs-dense-mlp"][
            "note"] == note
    elif name == "dead-units":
        assert {m: c["round"] for m, c in choices["chosen"].items()} == {
            m: e["iterative"]["chosen"]["round"] for m, e in res["models"].items()}
    elif name == "sparse-landscape":
        best = max(res["lr_screen"], key=lambda r: r["val_accuracy"])["lr"]
        assert res["lr"] == res["curve_lr"] == best == choices["lr"]
    elif name == "bernoulli":
        assert [e["what"] for e in evaluations] == [
            "lenet-300-100 dense x1 seed 0",
            "lenet-300-100 bernoulli x1 seed 0 and its scratch twin",
            "lenet-300-100 bernoulli x1 inputs gated seed 0"]
    elif name == "layer-pruning":
        assert choices["strength"] == 1.0 and [e["what"] for e in evaluations] == [
            "MLP depth 2 seed 0: dense, gated, combined",
            "ResNet-20 seed 0: dense, params- and FLOPs-weighted"]
    elif name == "pareto":
        assert choices["knee_weight"] == res["knee"]["weight"]
        assert [e["what"] for e in evaluations] == [
            "the knee, paper protocol",
            "variant: knee + 1-epoch frozen-mask fine-tune (not in the paper)", "SMGD (sgd)",
            "SMGD (adam)"]
        assert choices["protocol"].startswith("paper: 2 epochs")
    elif name == "sparse-training":
        assert choices["lenet-300-100"] == {k: res["chosen"]["lenet-300-100"][k]
                                            for k in ("lr", "update_interval")}
        assert [e["what"] for e in evaluations] == [
            "every training run (22)",
            "lenet-300-100 90% seed 0: lines to the pruned solution",
            "lenet-300-100 90% seed 0: Bezier curves",
            "lenet-300-100 90% seed 1: lines to the pruned solution"]
        assert evaluations[0]["count"] == 22  # 22 runs x 1 epoch
