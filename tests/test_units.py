"""The `units` method: rounds of unit pruning with fine-tuning, mean replacement at prune time,
a physically smaller model at the end, and clear errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.nn import functional as F

from prunelab.cli import main
from prunelab.config import RunConfig, TrainConfig
from prunelab.data import load_dataset
from prunelab.errors import ConfigError, UnknownNameError
from prunelab.methods import build_method
from prunelab.methods.base import TrainContext
from prunelab.methods.units import UnitPruning
from prunelab.models import build_model, count_parameters
from prunelab.runs import load_run
from prunelab.scores import unit_statistics
from prunelab.shrink import flat_modules, load_shrunk, unit_layers
from prunelab.train import Trainer, evaluate, run


def mean_replaced_output(model, um, means, x):
    """Reference: the model with each removed unit's post-activation output set to its mean."""
    flat = dict(flat_modules(model))
    handles = []
    for L in unit_layers(model):
        removed = ~um[L.name]

        def hook(mod, inp, out, removed=removed, mu=means[L.name]):
            shape = (1, -1) + (1,) * (out.dim() - 2)
            return out * (~removed).view(shape).to(out) + (mu * removed).view(shape).to(out)

        handles.append(flat[L.point_name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in handles:
            h.remove()


def _cfg(epochs=4, **opts) -> RunConfig:
    return RunConfig(
        dataset="xor", data_options={"n_irrelevant": 4, "n_train": 400, "n_test": 400},
        model="mlp", model_options={"widths": [16, 16]}, method="units", method_options=opts,
        train=TrainConfig(epochs=epochs, batch_size=32, optimizer="adam", lr=1e-2, seed=3,
                          eval_train=False),
    )


def _attached(model, **opts) -> UnitPruning:
    method = UnitPruning(**opts)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    method.attach(TrainContext(model, opt, steps_per_epoch=4, total_steps=40, epochs=10))
    return method


@pytest.mark.parametrize("mean_replacement", [True, False])
def test_rounds_prune_and_shrunk_model_matches(mean_replacement):
    cfg = _cfg(epochs=4, fraction=0.5, rounds=2, mean_replacement=mean_replacement)
    data = load_dataset(cfg.dataset, seed=3, **cfg.data_options)
    method = build_method("units", **cfg.method_options)
    res = run(cfg, data=data, method=method, progress=False)
    assert [h["epoch"] for h in method.history] == [1, 2]
    assert [h["alive"] for h in method.history] == [{"1": 8, "3": 8}, {"1": 4, "3": 4}]
    model = method.ctx.model
    small = method.shrunk_model()
    assert [L.units for L in unit_layers(small)] == [4, 4]
    x = data.x_test[:64]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)
    assert evaluate(small, data.x_test, data.y_test)["accuracy"] == pytest.approx(
        res.final["test_accuracy"])
    assert res.final["params_after_shrink"] == count_parameters(small)
    assert res.sparsity["global"]["params_after_shrink"] == count_parameters(small)
    summary = method.summary()
    assert summary["param_ratio"] > 2 and summary["widths_shrunk"] == {"1": 4, "3": 4, "5": 2}


def test_prune_round_with_mean_replacement_preserves_mean_replaced_function(tiny_cnn):
    model = tiny_cnn
    method = _attached(model, fraction=0.5, rounds=1, score_steps=3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 10, 10, generator=gen)
    y = torch.randint(0, 3, (16,), generator=gen)
    for step in range(4):  # window: the last 3 steps before the round (end of epoch 1)
        method.ctx.optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        method.ctx.optimizer.step()
        method.after_step(step + 1)
    assert method.collector.ready
    means = method.collector.means()
    snapshot = copy.deepcopy(model).eval()
    method.after_epoch(1)
    new = {k: v.clone() for k, v in method.unit_masks.items()}
    assert all(int(v.sum()) == (v.numel() + 1) // 2 for v in new.values())
    ref = mean_replaced_output(snapshot, new, means, x)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(method.shrunk_model()(x), ref, rtol=1e-5, atol=1e-5)


def test_collector_scores_equal_one_pass_statistics(tiny_mlp):
    model = tiny_mlp
    method = _attached(model, fraction=0.5, rounds=1, score_steps=4)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 6, generator=gen), torch.randint(0, 3, (20,), generator=gen)
    stats = unit_statistics(model, (x, y))
    assert method.collector.active
    F.cross_entropy(model(x), y).backward()
    for name in stats.mrs:
        torch.testing.assert_close(method.collector.scores("mrs")[name], stats.mrs[name])
        torch.testing.assert_close(method.collector.scores("removal")[name],
                                   stats.removal[name])
        torch.testing.assert_close(method.collector.means()[name], stats.means[name])


@pytest.mark.parametrize("score", ["norm", "random", "oracle", "removal"])
def test_other_scores_and_count(score):
    cfg = _cfg(epochs=3, count=6, rounds=2, score=score, scope="global")
    data = load_dataset(cfg.dataset, seed=3, **cfg.data_options)
    method = UnitPruning(count=6, rounds=2, score=score, scope="global", data_in=data,
                         score_samples=128)
    run(cfg, data=data, method=method, progress=False)
    assert sum(method.history[-1]["alive"].values()) == 32 - 12


def test_bad_input():
    for frac in (1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match=r"fraction must be in \[0, 1\)"):
            build_method("units", fraction=frac)
    with pytest.raises(UnknownNameError, match="valid unit scores: mrs"):
        build_method("units", score="taylor")
    with pytest.raises(ConfigError, match="need at least 5 epochs"):
        run(_cfg(epochs=3, rounds=5), progress=False)
    with pytest.raises(ConfigError, match=r"count must be in \[0, 30\]"):
        run(_cfg(epochs=2, count=31, rounds=1, scope="global"), progress=False)
    # The oracle scores on the training data, which the Trainer hands to the method.
    res = run(_cfg(epochs=2, score="oracle", rounds=1), progress=False)
    assert res.sparsity["global"]["weight_sparsity"] > 0


def test_cli_train_units_and_load_shrunk(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--model", "mlp", "--dataset", "xor", "--method", "units",
               "--option", "fraction=0.5", "--option", "rounds=2", "--model-option",
               "widths=[16,16]", "--data-option", "n_train=200", "--data-option", "n_test=200",
               "--epochs", "3", "--optimizer", "adam", "--lr", "0.01", "--quiet",
               "--out", str(out)])
    assert rc == 0
    small = load_shrunk(out / "method_state.pt")
    assert [L.units for L in unit_layers(small)] == [4, 4]
    assert [L.units for L in unit_layers(load_shrunk(out / "shrunk.pt"))] == [4, 4]
    loaded = load_run(out)  # the registry model with the unit masks as weight masks
    assert loaded.masks is not None and loaded.masks["1.weight"].sum() == 4 * 12
    rc = main(["train", "--model", "mlp", "--dataset", "xor", "--method", "units",
               "--option", "fraction=1.0", "--quiet", "--out", str(tmp_path / "bad")])
    assert rc == 2
    assert "fraction must be in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_trainer_on_conv_small_shape():
    """The method runs on the MNIST CNN shape (random data, one short epoch per round)."""
    torch.manual_seed(0)
    model = build_model("conv-small", (1, 28, 28), 10)
    data = load_dataset("xor", n_irrelevant=2, n_train=64, n_test=32)
    data.x_train = torch.randn(64, 1, 28, 28)
    data.x_test = torch.randn(32, 1, 28, 28)
    data.y_train = torch.randint(0, 10, (64,))
    data.y_test = torch.randint(0, 10, (32,))
    data.num_classes = 10
    method = UnitPruning(fraction=0.5, rounds=2, score_steps=2)
    Trainer(model, data, TrainConfig(epochs=2, batch_size=32, optimizer="adam", lr=1e-3,
                                     eval_train=False), method, progress=False).fit()
    assert method.summary()["widths_shrunk"] == {"0": 2, "3": 4, "7": 16, "9": 10}
    # the shrunk conv net computes what the trained, masked one computes (through both
    # pooling layers and the flatten), and is as small as its widths say
    masked, small = method.ctx.model.eval(), method.shrunk_model().eval()
    with torch.no_grad():
        torch.testing.assert_close(small(data.x_test), masked(data.x_test), rtol=1e-5,
                                   atol=1e-5)
    assert count_parameters(small) == (2 * 25 + 2) + (4 * 2 * 25 + 4) + (16 * 4 * 16 + 16) \
        + (10 * 16 + 10)


def test_reproduce_dead_units_without_data_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PRUNELAB_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    rc = main(["reproduce", "dead-units", "--quick", "--out", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prunelab: error:") and "not found" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.realdata
def test_reproduce_dead_units_tiny(tmp_path, monkeypatch):
    """End to end on a sliver of real MNIST: report, results and figures, claims measured."""
    from conftest import shared_data_dir
    from prunelab.experiments import dead_units

    monkeypatch.setenv("PRUNELAB_DATA", str(shared_data_dir()))
    tiny = dead_units.Settings(n_train=1500, n_test=500, n_val=300, dense_epochs=1,
                               finetune_epochs=1, max_rounds=2, round_fraction=0.25,
                               score_samples=200, fractions=(0.25, 0.5), sparsities=(0.5,))
    monkeypatch.setattr(dead_units, "settings", lambda quick: tiny)
    res = dead_units.run(tmp_path / "out", quick=True, log=lambda s: None)
    report = (tmp_path / "out" / "report.md").read_text()
    assert len(list((tmp_path / "out" / "figures").glob("*.png"))) == 6
    assert all(f"![{f[8:-4]}]({f})" in report for f in res["figures"])
    assert [c["name"] for c in res["claims"]] == dead_units.CLAIMS.names
    claims = {c["name"]: c for c in res["claims"]}
    for name, e in res["models"].items():
        it = e["iterative"]
        size = claims[f"{name}:size"]  # measured from the chosen network, judged against 5x
        assert size["estimate"] == it["dense_params"] / it["chosen"]["params"]
        assert size["held"] == (size["estimate"] >= 5.0)
        acc = claims[f"{name}:accuracy"]  # paired over the 500 test images, in points
        assert acc["n_measured"] == 500
        assert acc["estimate"] == pytest.approx(it["test_drop_points"])
        assert acc["ci_low"] <= acc["estimate"] <= acc["ci_high"]
        assert acc["verdict"] in ("held", "not held", "inconclusive")
        assert it["rounds"][0]["params"] == it["dense_params"]
        assert all(r["params"] < it["dense_params"] for r in it["rounds"][1:])
        for r in it["rounds"][1:]:  # accepted iff the validation drop + 1 se is within 0.5 pt
            assert r["within_band"] == (it["dense_val_accuracy"] - r["val_accuracy"]
                                        + r["val_se"] <= dead_units.BAND)
        assert it["rounds"][0]["test_accuracy"] == it["dense_test_accuracy"]
        assert it["test_drop_points"] == pytest.approx(
            100 * (it["dense_test_accuracy"] - it["chosen"]["test_accuracy"]))
    # the test split was read only after the choice was frozen, and every read is recorded
    assert res["selection"]["frozen"] and res["selection"]["choices"]["chosen"]["conv-small"][
        "round"] == res["models"]["conv-small"]["iterative"]["chosen"]["round"]
    assert [e["metric"] for e in res["test_evaluations"]] == ["test accuracy", "test loss"] * 2


def test_paired_se_counts_only_disagreements():
    from prunelab.experiments.dead_units import paired_se

    a = torch.tensor([True, True, False, False])
    b = torch.tensor([True, False, True, False])
    assert paired_se(a, b) == pytest.approx((0.5 / 4) ** 0.5)  # d = 0, 1, -1, 0
    assert paired_se(a, a) == 0.0
    same = torch.ones(1000, dtype=torch.bool)
    worse = same.clone()
    worse[:10] = False  # 1% disagreement, all one way: var = 0.01 - 0.01**2
    assert paired_se(same, worse) == pytest.approx((0.0099 / 1000) ** 0.5)


def test_final_finetune_decays_lr_and_leaves_inputs_alone():
    from prunelab.experiments import dead_units

    data = load_dataset("xor", seed=0, n_irrelevant=2, n_train=200, n_test=100)
    torch.manual_seed(0)  # the same init whatever ran before
    model = build_model("mlp", data.input_shape, data.num_classes, widths=[8])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = copy.deepcopy(model.state_dict())
    s = dead_units.Settings(n_train=None, n_test=None, n_val=50, dense_epochs=1,
                            finetune_epochs=1, max_rounds=1, round_fraction=0.5,
                            score_samples=50, fractions=(0.5,), sparsities=(0.5,),
                            final_epochs=2, batch_size=32, lr=1e-2)
    sel = dead_units._split(data, s.n_val, 0)
    assert sel.n_train == 150 and sel.n_test == 50  # validation in the test split's place
    assert not any(torch.equal(sel.x_test[i], data.x_test[i]) for i in range(50))
    out = dead_units.final_finetune(model, opt, sel, s)
    assert set(out) == {"val_correct", "val_accuracy", "val_before_final", "net"}
    assert out["val_correct"].shape == (50,)
    assert out["val_accuracy"] == pytest.approx(float(out["val_correct"].double().mean()))
    assert out["val_before_final"] == evaluate(model, sel.x_test, sel.y_test)["accuracy"]
    assert out["val_accuracy"] != out["val_before_final"]  # 2 epochs at lr 1e-2 move a fresh net
    assert out["val_accuracy"] == evaluate(out["net"], sel.x_test, sel.y_test)["accuracy"]
    for k, v in model.state_dict().items():  # a trained copy, not the input
        torch.testing.assert_close(v, before[k])
    assert opt.param_groups[0]["lr"] == 1e-2 and not opt.state
    again = dead_units.final_finetune(model, opt, sel, s)  # same data order
    assert torch.equal(again["val_correct"], out["val_correct"])
    net, o = copy.deepcopy((model, opt))
    dead_units._fit(net, o, sel, 2, s, torch.Generator().manual_seed(0), decay=True)
    steps = 2 * -(-sel.n_train // s.batch_size)
    last = s.lr * 0.5 * (1 + math.cos(math.pi * (steps - 1) / steps))  # cosine, last step
    assert o.param_groups[0]["lr"] == pytest.approx(last) and last < 0.05 * s.lr


@pytest.mark.parametrize("extra_wrong, verdict", [(20, "held"), (50, "inconclusive"),
                                                  (80, "not held")])
def test_accuracy_claim_is_judged_on_the_test_images(extra_wrong, verdict):
    """The chosen network misses `extra_wrong` of 10,000 test images the dense one gets right:
    a drop of exactly 0.5 points (50 images, the old boundary verdict "held") now reads
    inconclusive, since the paired interval over the images straddles 0.5."""
    from prunelab.claims import judge_all
    from prunelab.experiments.dead_units import CLAIMS, measure

    units = [{"fraction": 0.5, "score": sc, "mean_replacement": 0.1, "removal": 0.2}
             for sc in ("mrs", "norm", "random")]
    params = [{"sparsity": 0.5, "score": sc, "loss_increase": v}
              for sc, v in (("taylor1", 0.3), ("taylor1-abs", 0.1))]
    dense = torch.ones(10000, dtype=torch.bool)
    dense[:88] = False
    chosen = dense.clone()
    chosen[100:100 + extra_wrong] = False
    it = {"param_ratio": 6.5, "dense_params": 20522, "chosen": {"params": 3158, "round": 7,
          "test_accuracy": float(chosen.double().mean())},
          "dense_test_accuracy": 0.9912, "test_drop_vs_dense_points": 0.2}
    models = {"conv-small": {"units": {"rows": units}, "params": {"rows": params},
                             "iterative": it}}
    verdicts = {v.claim.name: v for v in judge_all(
        CLAIMS, measure(models, {"conv-small": (dense, chosen)}))}
    acc = verdicts["conv-small:accuracy"]
    assert acc.estimate == pytest.approx(extra_wrong / 100) and acc.n == 10000
    assert acc.verdict == verdict
    assert verdicts["conv-small:size"].verdict == "held"  # 6.5x >= 5x
    assert verdicts["conv-small:mean-replacement"].estimate == 1.0
    assert verdicts["lenet-300-100:size"].verdict == "not measured"
