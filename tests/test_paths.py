"""Interpolation paths: exact endpoints, barrier and monotonicity, batching, BatchNorm policy,
no mutation of the model, and clear errors for mismatched endpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunelab.config import RunConfig, TrainConfig
from prunelab.data import load_dataset
from prunelab.errors import ConfigError
from prunelab.landscape.paths import (
    PathEvaluator,
    barrier_height,
    interpolate,
    is_monotone,
    line_points,
    max_rise,
)
from prunelab.runs import load_run
from prunelab.train import evaluate, run


def _mlp(seed: int, hidden: int = 8) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, 5),
                         nn.ReLU(), nn.Linear(5, 3))


@pytest.fixture
def toy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    xt = torch.randn(100, 6, generator=g)
    yt = (xt[:, 0] > 0).long() + (xt[:, 1] > 0.5).long()
    return {"train": (x, y), "test": (xt, yt)}


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_line_points_default_grid():
    ts = line_points()
    assert len(ts) == 29 and ts[0] == pytest.approx(-0.2) and ts[-1] == pytest.approx(1.2)
    assert 0.0 in ts and 1.0 in ts
    assert line_points(4, 0.0, 1.0) == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert 1.0 in line_points(4, -0.5, 1.05)  # 1 added when the grid misses it
    with pytest.raises(ConfigError, match="contain"):
        line_points(10, 0.2, 1.0)


@pytest.mark.parametrize("fast", [True, False])
def test_endpoints_equal_evaluate_exactly(toy, fast):
    a, b = _mlp(0), _mlp(1)
    res = interpolate(_state(a), _state(b), toy, model=a, fast_first_layer=fast,
                      batch_size=64, points_per_batch=3)
    assert res.info["fast_first_layer"] is fast
    for split, (x, y) in toy.items():
        ea, eb = evaluate(a, x, y, batch_size=64), evaluate(b, x, y, batch_size=64)
        assert res.at(0.0, split) == ea  # bit for bit: loss and accuracy
        assert res.at(1.0, split) == eb
    assert len(res.t) == 29


@pytest.mark.parametrize("fast", [True, False])
def test_float64_models_are_evaluated_in_float64(toy, fast):
    """Paths keep the models' dtype (they cast to float32 before issue 20.6e): the endpoints of
    a float64 line are the float64 models' losses to float64 rounding, also with float32
    data (cast to the model's dtype per batch)."""
    a, b = _mlp(0).double(), _mlp(1).double()
    data = {k: (x.double(), y) for k, (x, y) in toy.items()}
    for given in (data, toy):
        res = interpolate(a, b, given, model=a, fast_first_layer=fast, batch_size=64,
                          points_per_batch=3)
        for split, (x, y) in data.items():
            for t, m in ((0.0, a), (1.0, b)):
                ref = evaluate(m, x, y, batch_size=64)
                assert res.at(t, split)["loss"] == pytest.approx(ref["loss"], rel=1e-13, abs=0)
                assert res.at(t, split)["accuracy"] == ref["accuracy"]


def test_interior_points_match_an_explicit_model(toy):
    a, b = _mlp(0), _mlp(1)
    res = interpolate(a, b, toy, ts=[0.0, 0.3, 1.0, 1.2], splits=["train"])
    for t in (0.3, 1.2):
        m = copy.deepcopy(a)
        with torch.no_grad():
            for p, pb in zip(m.parameters(), b.parameters()):
                p.copy_((1 - t) * p + t * pb)
        ev = evaluate(m, *toy["train"])
        assert res.at(t)["loss"] == pytest.approx(ev["loss"], rel=1e-5)
        assert res.at(t)["accuracy"] == pytest.approx(ev["accuracy"], abs=1 / 300 + 1e-9)


def test_fast_and_plain_paths_agree(toy):
    a, b = _mlp(0), _mlp(1)
    fast = interpolate(a, b, toy, points=15)
    plain = interpolate(a, b, toy, points=15, fast_first_layer=False, points_per_batch=1)
    assert fast.loss("test") == pytest.approx(plain.loss("test"), rel=1e-5)


def test_model_is_not_mutated(toy):
    a, b = _mlp(0), _mlp(1)
    a.train()
    before = _state(a)
    grads = [p.requires_grad for p in a.parameters()]
    interpolate(a, b, toy, points=5)
    interpolate(_state(b), _state(a), toy, model=a, points=5, fast_first_layer=False)
    after = _state(a)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert a.training and [p.requires_grad for p in a.parameters()] == grads


def test_barrier_and_monotonicity_formulas():
    ts = [-0.2, 0.0, 0.25, 0.5, 0.75, 1.0, 1.2]
    losses = [9.0, 1.0, 1.5, 2.0, 0.8, 0.5, 9.0]
    # chord at 0.5 is 0.75 -> barrier 1.25; extrapolated points are ignored
    assert barrier_height(ts, losses) == pytest.approx(1.25)
    assert max_rise(ts, losses) == pytest.approx(1.0)
    assert not is_monotone(ts, losses)
    down = [3.0, 2.0, 1.5, 1.0, 0.9, 0.6, 0.1]
    assert barrier_height(ts, down) <= 0.0 + 1e-12 or barrier_height(ts, down) < 0.2
    assert is_monotone(ts, down)
    # a rise of 0.5% of L(0) passes the default 1% tolerance, 2% does not
    assert is_monotone([0, 0.5, 1], [1.0, 1.005, 0.9])
    assert not is_monotone([0, 0.5, 1], [1.0, 1.02, 0.9])
    assert is_monotone([0, 0.5, 1], [1.0, 1.02, 0.9], tolerance=0.05)
    with pytest.raises(ConfigError, match="t=0 and t=1"):
        barrier_height([0.1, 0.9], [1.0, 2.0])


def test_mismatched_architectures_are_named(toy):
    a, b = _mlp(0), _mlp(1, hidden=7)
    with pytest.raises(ConfigError, match=r"'1.weight' has shape \(7, 6\) in endpoint B"):
        interpolate(a, b, toy, model=a)
    state = _state(_mlp(1))
    del state["5.bias"]
    with pytest.raises(ConfigError, match="endpoint B has no parameter '5.bias'"):
        interpolate(a, state, toy)
    state = _state(_mlp(1))
    state["9.weight"] = torch.zeros(2)
    with pytest.raises(ConfigError, match="'9.weight' that the model lacks"):
        interpolate(a, state, toy)
    with pytest.raises(ConfigError, match="a model is needed"):
        interpolate(_state(a), _state(b), toy)


def test_bad_options(toy):
    a, b = _mlp(0), _mlp(1)
    with pytest.raises(ConfigError, match="bn must be one of keep, recompute"):
        interpolate(a, b, toy, bn="fresh")
    with pytest.raises(ConfigError, match="split 'val'"):
        interpolate(a, b, toy, splits=["val"])
    with pytest.raises(ConfigError, match="points_per_batch"):
        interpolate(a, b, toy, points_per_batch=0)


def _bn_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_batchnorm_keep_and_recompute(toy):
    a, b = _bn_net(0), _bn_net(1)
    x = toy["train"][0]
    for m, shift in ((a, 0.0), (b, 3.0)):  # give each endpoint its own running statistics
        m.train()
        with torch.no_grad():
            m(x + shift)
        m.eval()
    before = _state(a)
    keep = interpolate(a, b, toy, ts=[0.0, 0.5, 1.0], bn="keep")
    rec = interpolate(a, b, toy, ts=[0.0, 0.5, 1.0], bn="recompute")
    assert all(torch.equal(before[k], v) for k, v in _state(a).items())
    # keep: the endpoints are evaluated with their own stored statistics
    assert keep.at(0.0, "test") == evaluate(a, *toy["test"])
    assert keep.at(1.0, "test") == evaluate(b, *toy["test"])
    # recompute: statistics re-estimated on the training inputs (no shift) at every point
    ref = copy.deepcopy(b)
    ref.train()
    ref[1].reset_running_stats()
    ref[1].momentum = None
    with torch.no_grad():
        ref(x)
    assert rec.at(1.0, "test")["loss"] == pytest.approx(evaluate(ref, *toy["test"])["loss"],
                                                        rel=1e-6)
    assert rec.at(1.0, "test")["loss"] != pytest.approx(keep.at(1.0, "test")["loss"], rel=1e-3)


def test_evaluator_checks_coefficients(toy):
    ev = PathEvaluator(_mlp(0), [_state(_mlp(0)), _state(_mlp(1))])
    with pytest.raises(ConfigError, match="coefficients"):
        ev.evaluate(torch.ones(3, 3), toy)


def test_run_directories_as_endpoints(tmp_path):
    cfg = RunConfig("blobs", {"n_train": 200, "n_test": 100}, None, "mlp", {"widths": [8]},
                    "dense", {}, TrainConfig(epochs=1, batch_size=50, lr=0.05))
    run(cfg, tmp_path / "a", progress=False)
    cfg.train.seed = 1
    run(cfg, tmp_path / "b", progress=False)
    data = load_dataset("blobs", n_train=200, n_test=100)
    res = interpolate(tmp_path / "a", str(tmp_path / "b"), data, points=5, t_range=(0.0, 1.0))
    assert res.info["a"].endswith("a") and len(res.t) == 5
    assert res.at(0.0, "test") == evaluate(load_run(tmp_path / "a").model, data.x_test,
                                           data.y_test)
