"""The sparse-training reproduction's parts: training FLOPs on hand-computable networks, the
sub-run store, the small dense twin, the claims computed from constructed per-seed errors, and
(slow) the whole reproduction on a tiny setting, run twice to check that the second run reads
every sub-run back."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from prunelab.claims import judge_all
from prunelab.config import RunConfig, TrainConfig
from prunelab.data import load_dataset
from prunelab.errors import ConfigError
from prunelab.experiments import sparse_training as st
from prunelab.flops import (
    kept_forward_flops,
    layer_forward_flops,
    phases_from_trace,
    training_flops,
)
from prunelab.models import build_model, count_parameters
from prunelab.subruns import SubrunCache, spec_key
from prunelab.train import run as train_run

# ----------------------------------------------------------------------------- FLOPs


def _net():
    torch.manual_seed(0)
    # conv 1->2 (3x3) on 1x5x5: 18 weights at 3x3 = 9 positions; linear 18 -> 4: 72 weights
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 4))


def test_forward_flops_count_kept_weights_times_positions():
    layers = layer_forward_flops(_net(), (1, 5, 5))
    assert layers == {"0.weight": (18, 2 * 18 * 9), "3.weight": (72, 2 * 72)}
    assert kept_forward_flops(layers) == 324 + 144
    mask = torch.zeros(18, dtype=torch.bool)
    mask[:6] = True
    # a count or a mask: 6 of 18 conv weights kept -> 2 * 6 * 9; the linear layer stays dense
    assert kept_forward_flops(layers, {"0.weight": 6}) == 108 + 144
    kept = {"0.weight": mask.view(2, 1, 3, 3), "3.weight": 18}
    assert kept_forward_flops(layers, kept) == 108 + 36
    with pytest.raises(ConfigError, match="outside"):
        kept_forward_flops(layers, {"3.weight": 73})
    with pytest.raises(ConfigError, match="unknown layer"):
        kept_forward_flops(layers, {"9.weight": 1})


def test_training_flops_add_phases_and_dense_gradient_steps():
    """10 dense steps, then 20 steps at (6 of 18, 18 of 72) kept, batch 5, and 2 dense
    gradient passes: 3 x 5 x (10 x 468 + 20 x 252) + 2 x 3 x 5 x 468 = 160,740."""
    out = training_flops(_net(), (1, 5, 5), 5, [(10, None), (20, {"0.weight": 6,
                                                                   "3.weight": 18})],
                         dense_gradient_steps=2)
    assert out["forward_dense"] == 468 and out["forward_final"] == 108 + 36
    assert out["total"] == 3 * 5 * (10 * 468 + 20 * 144) + 2 * 3 * 5 * 468
    assert out["dense_total"] == 30 * 3 * 5 * 468
    assert out["ratio"] == pytest.approx(out["total"] / out["dense_total"])
    assert out["steps"] == 30 and out["dense_gradient_steps"] == 2


def test_phases_from_trace_cover_every_step_once():
    trace = [(0, {"w": 10}), (4, {"w": 6}), (9, {"w": 3})]
    assert phases_from_trace(trace, 12) == [(4, {"w": 10}), (5, {"w": 6}), (3, {"w": 3})]
    with pytest.raises(ConfigError):
        phases_from_trace([(5, {}), (2, {})], 10)


def test_traced_gmp_counts_match_its_masks_and_schedule():
    """The GMP trace starts dense, shrinks at its update steps only and ends at the run's
    final mask; its FLOPs sit between those of the final mask and dense training."""
    data = load_dataset("xor", n_irrelevant=4, n_train=256, n_test=64, seed=0)
    cfg = RunConfig("xor", {}, None, "mlp", {"widths": [16, 16]}, "gmp",
                    {"sparsity": 0.8, "begin": 4, "end": 12, "frequency": 2},
                    TrainConfig(epochs=2, batch_size=16, lr=0.05, eval_train=False))
    method = st._TracedGMP(**cfg.method_options)
    res = train_run(cfg, data=data, method=method, progress=False)
    steps = [s for s, _ in method.trace]
    assert steps[0] == 0 and all(4 <= s <= 12 and s % 2 == 0 for s in steps[1:])
    totals = [sum(c.values()) for _, c in method.trace]
    assert totals[0] == sum(m.numel() for m in res.masks.values())
    assert all(a > b for a, b in zip(totals, totals[1:]))
    assert method.trace[-1][1] == {n: int(m.sum()) for n, m in res.masks.items()}
    model = build_model("mlp", data.input_shape, 2, widths=[16, 16])
    flops = training_flops(model, data.input_shape, 16, phases_from_trace(method.trace, 32))
    final = training_flops(model, data.input_shape, 16, [(32, method.trace[-1][1])])
    assert final["total"] < flops["total"] < flops["dense_total"]


# ----------------------------------------------------------------------------- sub-runs


def test_subrun_store_reads_back_by_spec_and_misses_on_any_change(tmp_path):
    cache = SubrunCache(tmp_path / "store")
    calls = []

    def work():
        calls.append(1)
        torch.rand(5)  # a sub-run moves the global generator
        return {"w": torch.arange(3.0), "acc": 0.9}

    spec = {"config": {"lr": 0.1, "seed": 0}, "data": "mnist"}
    first = cache.get_or_run(spec, work)
    after_first = torch.rand(3)
    again = SubrunCache(tmp_path / "store").get_or_run(dict(spec), work)  # a new process
    assert len(calls) == 1 and torch.equal(again["w"], first["w"]) and again["acc"] == 0.9
    assert torch.equal(torch.rand(3), after_first)  # the generators as the sub-run left them
    cache.get_or_run({"config": {"lr": 0.1, "seed": 1}, "data": "mnist"}, work)
    assert len(calls) == 2 and cache.hits == 0 and cache.runs == 2
    assert spec_key({"b": 1, "a": 2}) == spec_key({"a": 2, "b": 1})
    # a file renamed onto another spec's key is not trusted
    other = {"config": {"lr": 0.2}}
    (tmp_path / "store" / f"{spec_key(spec)}.pt").rename(tmp_path / "store" /
                                                         f"{spec_key(other)}.pt")
    cache.get_or_run(other, work)
    assert len(calls) == 3 and cache.hits == 0
    cache.remove()
    assert not (tmp_path / "store").exists()
    assert SubrunCache(None).get_or_run(spec, work)["acc"] == 0.9 and len(calls) == 4


# ----------------------------------------------------------------------------- small dense


@pytest.mark.parametrize("model", ["lenet-300-100", "lenet5"])
def test_small_dense_twin_has_the_sparse_parameter_count(model):
    shape, classes = (1, 28, 28), 10
    full = build_model(model, shape, classes)
    target = st.sparse_param_count(full, 0.9, keep_first_last=False)
    n_weights = sum(p.numel() for n, p in full.named_parameters() if n.endswith("weight"))
    assert target == count_parameters(full) - n_weights + round(0.1 * n_weights)
    name, opts, params = st.small_dense_model(model, {}, shape, classes, target)
    assert params == count_parameters(build_model(name, shape, classes, **opts))
    assert abs(params - target) / target < 0.02
    if model == "lenet5":  # the width option scales 20-50-500
        net = build_model("lenet5", shape, classes, width=0.5)
        assert [m.out_channels for m in net if isinstance(m, nn.Conv2d)] == [10, 25]
        assert [m.out_features for m in net if isinstance(m, nn.Linear)] == [250, 10]


# ----------------------------------------------------------------------------- claims


def _rows(errors: dict[str, list[float]], model="lenet-300-100", sp=0.9):
    return [{"model": model, "sparsity": sp, "seed": k, "method": m, "test_error": e}
            for m, es in errors.items() for k, e in enumerate(es)]


def test_rigl_claim_is_rigl_below_the_midpoint_of_random_and_gmp_per_seed():
    s = st.Settings(seeds=(0, 1, 2, 3, 4))
    gmp = [2.0, 2.1, 1.9, 2.0, 2.2]
    random = [3.0, 3.1, 2.9, 3.2, 3.0]
    closes = [2.2, 2.3, 2.2, 2.3, 2.4]  # closes 0.8, 0.8, 0.7, 0.9, 0.6 of gaps 1.0 ... 0.8
    half_short = [2.8, 2.9, 2.7, 2.9, 2.8]  # closes about a fifth
    measured = st.measure(s, _rows({"gmp": gmp, "random": random, "rigl": closes}), {}, {})
    m = measured["rigl-gap:lenet-300-100:0.9"]
    expected = [(r - g) - 0.5 * (r - q) for r, g, q in zip(random, closes, gmp)]
    assert [a - b for a, b in zip(m.values, m.baseline)] == pytest.approx(expected)
    verdicts = {v.claim.name: v for v in judge_all(st.CLAIMS, measured)}
    v = verdicts["rigl-gap:lenet-300-100:0.9"]
    assert v.verdict == "held" and v.estimate == pytest.approx(sum(expected) / 5)
    assert v.ci[0] > 0 and v.wins == 5
    assert "gap random - GMP +1.000" in v.note
    assert verdicts["rigl-gap:lenet-300-100:0.95"].verdict == "not measured"
    measured = st.measure(s, _rows({"gmp": gmp, "random": random, "rigl": half_short}), {}, {})
    v = {v.claim.name: v for v in judge_all(st.CLAIMS, measured)}["rigl-gap:lenet-300-100:0.9"]
    assert v.verdict == "not held" and v.ci[1] < 0
    # a vanishing gap: the ratio form would divide by ~0; the difference form stays finite
    measured = st.measure(s, _rows({"gmp": random, "random": random, "rigl": random}), {}, {})
    v = {v.claim.name: v for v in judge_all(st.CLAIMS, measured)}["rigl-gap:lenet-300-100:0.9"]
    assert v.estimate == 0.0 and v.verdict == "not held"  # 0 > 0 fails on both ends


def test_init_mask_and_landscape_claims_from_constructed_numbers():
    s = st.Settings(seeds=(0, 1, 2, 3, 4))
    gmp = [0.9, 1.0, 0.8, 0.9, 1.0]
    rows = _rows({"gmp": gmp, "snip": [g + 0.2 for g in gmp], "grasp": [g + 0.9 for g in gmp],
                  "synflow": [g + 0.5 + d for g, d in zip(gmp, (-0.3, 0.3, -0.2, 0.2, 0.1))]},
                 model="lenet5", sp=0.9)
    lines = {"lenet-300-100": {"scratch": [{"barrier": b} for b in (0.9, 1.1, 1.0, 0.8, 1.2)],
                               "rigl": [{"barrier": b} for b in (0.3, 0.2, 0.4, 0.3, 0.1)]}}
    curves = {"sparse quadratic": {"summary": {"barrier": 0.2, "inside_mask": True}},
              "dense quadratic": {"summary": {"barrier": 0.01}}}
    got = {v.claim.name: v for v in judge_all(st.CLAIMS, st.measure(s, rows, lines, curves))}
    assert got["snip-vs-gmp:lenet5:0.9"].verdict == "held"
    assert got["grasp-vs-gmp:lenet5:0.9"].verdict == "not held"
    assert got["synflow-vs-gmp:lenet5:0.9"].verdict == "inconclusive"
    assert got["static-line-barrier"].verdict == "held"
    assert got["rigl-line-below-static"].verdict == "held"
    assert got["sparse-curve-barrier"].verdict == "held"
    assert got["dense-curve"].verdict == "held" and "line 0.9000" in got["dense-curve"].note
    three = st.Settings(seeds=(0, 1, 2))
    got = {v.claim.name: v for v in judge_all(st.CLAIMS, st.measure(three, rows, lines, {}))}
    assert got["snip-vs-gmp:lenet5:0.9"].verdict == "too few runs (n=3 < 5)"
    assert got["dense-curve"].verdict == "not measured"


# ----------------------------------------------------------------------------- end to end


def tiny_settings(**kw) -> st.Settings:
    """The smallest setting that exercises every part (used by tests/test_firewall.py too)."""
    base = dict(name="tiny", models=("lenet-300-100",), sparsities=(0.9,), seeds=(0, 1),
                n_train=600, epochs=1, lr_grid=(0.05, 0.1), update_interval=1,
                interval_grid=(1, 2), line_points=5, path_train_samples=300, curve_epochs=1,
                curve_points=5, jacobian_samples=2, landscape_sparsity=0.9)
    return st.Settings(**{**base, **kw})


@pytest.mark.slow
def test_tiny_reproduction_end_to_end_and_resumed_from_its_store(tmp_path, monkeypatch):
    from conftest import shared_data_dir

    monkeypatch.setenv("PRUNELAB_DATA", str(shared_data_dir()))
    plan = tiny_settings(keep_subruns=True)
    out = tmp_path / "out"
    res = st.run(out, quick=True, plan=plan, progress=False, log=lambda s: None)
    n_runs = 2 * (1 + len(st.METHODS))
    # the interval screen reuses the lr screen's RigL run at update_interval (one read back)
    assert len(res["runs"]) == n_runs and res["subruns"]["read_back"] == 1
    methods = {r["method"] for r in res["runs"]}
    assert methods == {*st.METHODS, "dense"}
    for r in res["runs"]:
        if r["method"] in ("dense", "small-dense"):
            continue
        # every sparse method keeps exactly the requested count of prunable weights
        assert r["params"] == st.sparse_param_count(
            build_model("lenet-300-100", (1, 28, 28), 10), 0.9, False), r["method"]
    fl = {r["method"]: r["flops_fraction"] for r in res["runs"] if r["seed"] == 0}
    assert fl["dense"] == pytest.approx(1.0) and fl["random"] == pytest.approx(0.1, abs=0.01)
    assert fl["random"] < fl["gmp"] < 1.0 and fl["rigl"] > fl["set"]
    names = [c["name"] for c in res["claims"]]
    assert names == st.CLAIMS.names
    assert {c["name"]: c["verdict"] for c in res["claims"]}["rigl-gap:lenet5:0.9"] == \
        "not measured"
    report = (out / "report.md").read_text()
    assert "TINY setting (reduced): not the full result" in report
    for f in res["figures"]:
        assert (out / f).is_file()
    saved = json.loads((out / "results.json").read_text())
    assert saved["test_evaluations"][0]["what"].startswith("every training run")
    store = tmp_path / ".out.subruns"
    assert store.is_dir() and len(list(store.glob("*.pt"))) == res["subruns"]["run"]
    again = st.run(tmp_path / "out", quick=True, plan=plan, progress=False, log=lambda s: None)
    assert again["subruns"]["run"] == 0
    assert again["subruns"]["read_back"] == res["subruns"]["run"] + 1
    assert [r["test_error"] for r in again["runs"]] == [r["test_error"] for r in res["runs"]]
    assert again["chosen"] == res["chosen"]
    st.run(tmp_path / "out", quick=True, plan=tiny_settings(), progress=False,
           log=lambda s: None)
    assert not store.exists()  # removed after a successful run unless keep_subruns


def test_a_diverged_run_is_recorded_not_fatal_and_never_chosen(tmp_path):
    data = load_dataset("xor", n_irrelevant=2, n_train=128, n_test=32, seed=0)
    plan = st.ModelPlan("mlp", {"widths": [8]}, False, 8, (1, 4, 1), 1)
    runner = st.Runner(st.Settings(), SubrunCache(tmp_path), False, lambda s: None)
    key = {"name": "xor", "split": "validation"}
    cfgs = {lr: RunConfig("xor", {}, None, "mlp", {"widths": [8]}, "dense", {},
                          TrainConfig(epochs=1, batch_size=16, lr=lr, eval_train=False))
            for lr in (0.05, 1e30)}
    bad = runner.fit(cfgs[1e30], data, key, "huge lr", plan)
    assert bad["diverged"].startswith("training diverged") and bad["final_state"] is None
    assert runner.fit(cfgs[1e30], data, key, "again", plan)["diverged"]  # stored as such
    good = runner.fit(cfgs[0.05], data, key, "fine", plan)
    assert not good.get("diverged") and good["final"]["test_accuracy"] > 0
    rows = [{"lr": 1e30, "acc": bad["final"]["test_accuracy"]},
            {"lr": 0.05, "acc": good["final"]["test_accuracy"]}]
    assert max(rows, key=lambda r: st._score(r["acc"]))["lr"] == 0.05
    assert st._mean_sd([1.0, float("nan"), 3.0]) == "2.00 ± 1.41 (1 diverged)"
    row = st._row("mlp", 0.9, 0, "rigl", bad)
    assert row["diverged"] and row["params"] == -1
