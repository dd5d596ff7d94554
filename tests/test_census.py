"""Ensemble training (equivalence with one-by-one training) and the local-optima census."""

from __future__ import annotations

import json
import math

import pytest
import torch

from prunelab.config import TrainConfig
from prunelab.data import load_dataset
from prunelab.errors import ConfigError, PrunelabError
from prunelab.landscape import census as census_mod
from prunelab.landscape.census import CensusConfig, count_optima, fit_log_count, run_census
from prunelab.landscape.ensemble import EnsembleTrainer
from prunelab.methods import build_method
from prunelab.models import build_model
from prunelab.train import Trainer


def _data():
    return load_dataset("xor", n_irrelevant=5, n_train=150, n_test=200, seed=2)


@pytest.mark.parametrize("optimizer, method, options, backend", [
    ("sgd", "dense", {}, "bmm"),
    ("adam", "annealed", {"keep": 20, "unit": "step", "length": 24}, "bmm"),
    ("sgd", "annealed", {"sparsity": 0.7, "scope": "layer", "length": 4}, "vmap"),
    ("adam", "dense", {}, "vmap"),
    ("adam", "annealed", {"keep": 14, "unit": "step", "length": 10, "min_layer_keep": 4}, "bmm"),
])
def test_ensemble_matches_one_by_one(optimizer, method, options, backend):
    data = _data()
    model_fn = lambda: build_model("mlp", data.input_shape, 2, widths=[8, 6])
    cfg = TrainConfig(epochs=4, batch_size=32, optimizer=optimizer,
                      lr=0.05 if optimizer == "sgd" else 1e-2, eval_train=False)
    seeds = [11, 12, 13]
    trainer = EnsembleTrainer(model_fn, data, cfg, seeds,
                              method=build_method(method, **options), backend=backend)
    assert trainer.backend == backend
    ens = trainer.fit()
    for r, s in enumerate(seeds):
        torch.manual_seed(s)
        one = Trainer(model_fn(), data, TrainConfig(**{**cfg.__dict__, "seed": s}),
                      build_method(method, **options), progress=False).fit()
        state = ens.member_state(r)
        for k in one.final_state:
            torch.testing.assert_close(state[k], one.final_state[k], atol=1e-5, rtol=1e-4)
        assert float(ens.final["test_accuracy"][r]) == pytest.approx(
            one.final["test_accuracy"], abs=1.5 / data.n_test)
        if method == "annealed":
            masks = ens.member_masks(r)
            assert all(torch.equal(masks[k], one.masks[k]) for k in one.masks)
    # members really differ (own init and batch order)
    assert not torch.allclose(ens.params["1.weight"][0], ens.params["1.weight"][1])


def test_ensemble_fixed_masks_and_bad_input():
    data = _data()
    model_fn = lambda: build_model("mlp", data.input_shape, 2, widths=[8])
    cfg = TrainConfig(epochs=2, batch_size=32, optimizer="adam", lr=1e-2)
    masks = {"1.weight": torch.rand(2, 8, 7) > 0.5}
    res = EnsembleTrainer(model_fn, data, cfg, [0, 1], masks=masks).fit()
    assert torch.all(res.params["1.weight"][~masks["1.weight"]] == 0)
    with pytest.raises(ConfigError, match="supports methods"):
        EnsembleTrainer(model_fn, data, cfg, [0], method=build_method("gmp"))
    with pytest.raises(ConfigError, match="backend"):
        EnsembleTrainer(model_fn, data, cfg, [0], backend="jax")


def _tiny(**kw) -> CensusConfig:
    base = dict(irrelevant=[0, 12], restarts=8, n_train=300, n_test=500, n_probe=200,
                widths=[32], epochs=40, batch_size=25, lr=0.01,
                annealed={"keep": 40, "mu": 5.0}, chunk=4)
    base.update(kw)
    return CensusConfig(**base)


def test_census_counts_more_optima_with_irrelevant_variables(tmp_path):
    res = run_census(_tiny(), tmp_path / "c")
    by = {(s["method"], s["irrelevant"]): s for s in res["settings"]}
    assert by[("dense", 12)]["count"] > 1
    assert by[("dense", 12)]["count"] > by[("dense", 0)]["count"]
    assert by[("dense", 0)]["success_rate"] >= 0.75
    assert by[("annealed", 12)]["success_rate"] > by[("dense", 12)]["success_rate"]
    q = by[("dense", 12)]["train_loss_quantiles"]
    assert q["min"] <= q["median"] <= q["max"]
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["settings"] == res["settings"]


def test_census_resumes_after_interruption(tmp_path):
    cfg = _tiny(irrelevant=[4], restarts=8, chunk=2, methods=["dense"], epochs=5)
    calls = []

    def flaky(cfg, method, data, probe, restarts):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(list(restarts))
        return census_mod.train_chunk(cfg, method, data, probe, restarts)

    with pytest.raises(KeyboardInterrupt):
        run_census(cfg, tmp_path / "c", trainer=flaky)
    done = sorted((tmp_path / "c" / "dense-irr4").glob("chunk-*.json"))
    assert len(done) == 2 and not list((tmp_path / "c").rglob("*.tmp"))
    calls.clear()
    seen = []
    res = run_census(cfg, tmp_path / "c", trainer=lambda *a: seen.append(a[-1]) or
                     census_mod.train_chunk(*a))
    assert seen == [[4, 5], [6, 7]]  # only the missing chunks were trained
    assert res["chunks_reused"] == 2 and res["settings"][0]["restarts"] == 8
    assert [r["restart"] for r in res["records"]["dense-irr4"]] == list(range(8))
    with pytest.raises(ConfigError, match="other settings"):
        run_census(_tiny(irrelevant=[4], methods=["dense"], epochs=6), tmp_path / "c")


def test_census_data_draws_reuse_draw_zero_and_average_log_counts(tmp_path):
    cfg = _tiny(irrelevant=[4], restarts=4, chunk=4, methods=["dense"], epochs=5)
    one = run_census(cfg, tmp_path / "c")
    seen = []
    two = run_census(_tiny(irrelevant=[4], restarts=4, chunk=4, methods=["dense"], epochs=5,
                           data_draws=2), tmp_path / "c",
                     trainer=lambda *a: seen.append(a[2]) or census_mod.train_chunk(*a))
    assert len(seen) == 1  # draw 0 reused, only draw 1 trained
    d0, d1 = census_mod.census_data(cfg, 4, 0), census_mod.census_data(cfg, 4, 1)
    assert torch.equal(seen[0].x_train, d1[0].x_train)
    assert not torch.equal(d0[0].x_train, d1[0].x_train) and not torch.equal(d0[1], d1[1])
    s = two["settings"][0]
    assert s["counts"][0] == one["settings"][0]["count"] and len(s["counts"]) == 2
    assert s["count"] == pytest.approx(math.sqrt(s["counts"][0] * s["counts"][1]))
    assert s["restarts"] == 8 and len(two["records"]["dense-irr4"]) == 8
    assert (tmp_path / "c" / "dense-irr4-data1" / "chunk-0000.json").is_file()
    with pytest.raises(PrunelabError, match="data_draws"):
        run_census(_tiny(data_draws=0), tmp_path / "bad")


def test_count_rule_and_fit():
    losses = [0.10, 0.101, 0.30, 0.10, 0.10]
    patterns = ["0000", "0000", "0000", "1111", "0001"]
    n, labels = count_optima(losses, patterns, loss_tol=0.01, probe_tol=0.25)
    assert n == 3 and labels[0] == labels[1] == labels[4] and labels[2] != labels[3]
    assert count_optima(losses, patterns, loss_tol=1.0, probe_tol=1.0)[0] == 1
    fit = fit_log_count([0, 1, 2, 3], [1, math.e, math.e**2, 50], restarts=50)
    assert fit["points"] == 3 and fit["slope"] == pytest.approx(1.0) and fit["r2"] == 1.0


@pytest.mark.parametrize("kw, message", [
    ({"restarts": 1}, "restarts"),
    ({"irrelevant": [-1]}, "irrelevant"),
    ({"methods": ["sgd"]}, "census method"),
    ({"loss_tol": -1.0}, "loss_tol"),
    ({"annealed": {"mu": 0}}, "mu"),
])
def test_census_bad_input(tmp_path, kw, message):
    with pytest.raises(PrunelabError, match=message):
        run_census(_tiny(**kw), tmp_path / "c")


@pytest.mark.slow
def test_quick_reproduction(tmp_path):
    from prunelab.experiments.deep_optima import run

    res = run(tmp_path / "do", quick=True, progress=False, log=lambda s: None)
    assert (tmp_path / "do" / "report.md").is_file()
    assert (tmp_path / "do" / "figures" / "census.png").is_file()
    assert not (tmp_path / ".do.census-work").exists()
    claims = {c["name"]: c for c in res["claims"]}
    # the success claim is the census's own rates at the largest irrelevant count, judged
    # against its declared threshold
    top = max(x["irrelevant"] for x in res["census"]["settings"])
    rate = {x["method"]: x["success_rate"] for x in res["census"]["settings"]
            if x["irrelevant"] == top}
    success = claims["census-success"]
    assert success["estimate"] == pytest.approx(rate["annealed"] - 2 * rate["dense"])
    assert success["held"] == (success["estimate"] > 0)
    # three retrain seeds at quick scale: the paired XOR claims cannot be held (they need 10)
    for name in ("xor-vs-original", "xor-vs-scratch"):
        assert claims[name]["verdict"] == "too few runs (n=3 < 10)"
        mean = {r["net"]: r["test_accuracy"] for r in res["retrain"]["summary"]}
        a, b = name.split("-vs-")
        assert claims[name]["estimate"] == pytest.approx(
            mean["annealed"] - mean[f"retrain-{b}"])
    # every census restart was evaluated on test data after the (empty) selection was frozen
    cfg = res["settings"]["census"]
    assert res["test_evaluations"][0]["count"] == len(cfg["irrelevant"]) * 2 * cfg["restarts"]


def test_ensemble_of_batchnorm_resnets_matches_one_by_one():
    """vmap ensembles of non-chain models with buffers: each member's BatchNorm keeps its own
    running statistics and follows its lone Trainer run."""
    from conftest import tiny_images

    data = tiny_images(n_train=48, n_test=24, shape=(1, 28, 28), classes=3)
    model_fn = lambda: build_model("resnet20", data.input_shape, 3, width=0.125)
    cfg = TrainConfig(epochs=2, batch_size=16, optimizer="sgd", lr=0.05, eval_train=False)
    seeds = [3, 4]
    ens = EnsembleTrainer(model_fn, data, cfg, seeds,
                          method=build_method("annealed", sparsity=0.5, unit="step",
                                              length=4)).fit()
    assert ens.buffers["bn1.running_mean"].shape[0] == 2
    for r, s in enumerate(seeds):
        torch.manual_seed(s)
        one = Trainer(model_fn(), data, TrainConfig(**{**cfg.__dict__, "seed": s}),
                      build_method("annealed", sparsity=0.5, unit="step", length=4),
                      progress=False).fit()
        state = ens.member_state(r)
        assert set(state) == set(one.final_state)
        for k in one.final_state:
            torch.testing.assert_close(state[k], one.final_state[k], atol=1e-4, rtol=1e-3)
        assert float(ens.final["test_loss"][r]) == pytest.approx(one.final["test_loss"],
                                                                 rel=1e-3)
