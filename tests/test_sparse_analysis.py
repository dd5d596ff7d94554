"""The sparse-training analyses on constructed cases with known answers: Jaccard overlap of
known masks, Frankle's barrier of known 1-d losses and of identical copies, gradient norms of
a linear model by hand, Jacobian singular values of a linear network; and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from prunelab.cli import main
from prunelab.config import RunConfig, TrainConfig
from prunelab.errors import ConfigError, MaskError
from prunelab.landscape.gradflow import gradient_flow, gradient_norms, jacobian_singular_values
from prunelab.landscape.lmc import (
    ContinuedSchedule,
    frankle_barrier,
    instability,
    linear_mode_connectivity,
)
from prunelab.landscape.mask_overlap import (
    collect_masks,
    jaccard,
    overlap_matrix,
    random_jaccard,
)
from prunelab.masks import save_masks
from prunelab.methods import PruningMethod
from prunelab.train import load_data, lr_factor, run


def _b(*values):
    return torch.tensor(values, dtype=torch.bool)


# ----------------------------------------------------------------------------- Jaccard


def test_jaccard_of_known_masks():
    a = {"x": _b(1, 1, 0, 0), "y": _b(1, 1, 1, 1, 0, 0)}
    b = {"x": _b(1, 0, 1, 0), "y": _b(1, 1, 1, 1, 0, 0)}
    res = jaccard(a, b)
    assert res["layers"] == {"x": pytest.approx(1 / 3), "y": 1.0}
    assert res["global"] == pytest.approx((1 + 4) / (3 + 4))
    assert (res["intersection"], res["union"], res["kept_a"], res["kept_b"]) == (5, 7, 6, 6)
    assert jaccard({"x": _b(0, 0)}, {"x": _b(0, 0)})["global"] == 1.0
    assert jaccard({"x": _b(1, 0)}, {"x": _b(0, 1)})["global"] == 0.0
    with pytest.raises(MaskError, match="shape"):
        jaccard({"x": _b(1, 0)}, {"x": _b(1, 0, 1)})
    with pytest.raises(MaskError, match="no common parameter"):
        jaccard({"x": _b(1)}, {"z": _b(1)})


def test_random_jaccard_is_the_chance_level_of_independent_masks():
    assert random_jaccard(0.5, 0.5) == pytest.approx(1 / 3)
    assert random_jaccard(1.0, 0.2) == pytest.approx(0.2)
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.rand(200_000, generator=g) < 0.1}
    b = {"w": torch.rand(200_000, generator=g) < 0.3}
    assert jaccard(a, b)["global"] == pytest.approx(random_jaccard(0.1, 0.3), abs=0.005)


def test_overlap_matrix_and_collecting_masks_from_runs_and_imp_levels(tmp_path):
    m1 = {"w": _b(1, 1, 0, 0)}
    m2 = {"w": _b(1, 0, 1, 0)}
    m3 = {"w": _b(0, 0, 1, 1)}
    save_masks(tmp_path / "a.pt", m1)
    (tmp_path / "run").mkdir()
    save_masks(tmp_path / "run" / "masks.pt", m2)
    for level, m in ((1, m2), (2, m3)):
        (tmp_path / "imp" / f"level_{level}").mkdir(parents=True)
        save_masks(tmp_path / "imp" / f"level_{level}" / "masks.pt", m)
    (tmp_path / "imp" / "level_0").mkdir()  # dense level: no masks, skipped
    found = collect_masks([tmp_path / "a.pt", tmp_path / "run", tmp_path / "imp"])
    assert list(found) == [str(tmp_path / "a.pt"), str(tmp_path / "run"),
                           f"{tmp_path / 'imp'}/level_1", f"{tmp_path / 'imp'}/level_2"]
    res = overlap_matrix(found)
    g = res["global"]
    assert [g[i][i] for i in range(4)] == [1.0] * 4
    assert g[0][1] == g[1][0] == pytest.approx(1 / 3) and g[1][2] == 1.0 and g[0][3] == 0.0
    assert res["layers"]["w"] == g and res["density"][str(tmp_path / "a.pt")] == 0.5
    with pytest.raises(ConfigError, match="at least two"):
        overlap_matrix({"a": m1})


# ----------------------------------------------------------------------------- LMC


def test_frankle_barrier_of_known_lines():
    ts = [i / 10 for i in range(11)]
    assert frankle_barrier(ts, [(t - 0.5) ** 2 for t in ts]) == pytest.approx(0.0)
    assert frankle_barrier(ts, [4 * t * (1 - t) for t in ts]) == pytest.approx(1.0)
    # a monotone line: Frankle's barrier is half the endpoint gap (the chord-based one is 0)
    assert frankle_barrier(ts, ts) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="t=0 and t=1"):
        frankle_barrier([0.0, 0.5], [1.0, 2.0])


def _cfg(schedule="constant"):
    return RunConfig(dataset="xor", data_options={"n_train": 200, "n_test": 200},
                     model="mlp", model_options={"widths": [16]},
                     train=TrainConfig(epochs=2, batch_size=50, lr=0.1, lr_schedule=schedule,
                                       eval_train=False))


def test_identical_copies_have_zero_barrier_and_different_orders_do_not_crash():
    cfg = _cfg()
    data = load_data(cfg)
    torch.manual_seed(0)
    state = run(cfg, None, data=data, progress=False).initial_state
    same = linear_mode_connectivity(cfg, state, 0, data=data, seeds=(5, 5), points=5)
    assert same.barriers() == {"train": {"error": 0.0, "loss": 0.0},
                               "test": {"error": 0.0, "loss": 0.0}}
    curve = instability(cfg, [0, 4], data=data, points=3)
    assert [r.start_step for r in curve] == [0, 4] and curve[0].seeds == (1, 2)
    assert all(r.barrier("test", "loss") >= 0.0 for r in curve)
    assert len(curve[1].path.t) == 3
    with pytest.raises(ConfigError, match=r"start step 8 must be in \[0, 8\)"):
        linear_mode_connectivity(cfg, state, 8, data=data)


def test_copies_continue_the_learning_rate_schedule_from_the_rewind_point():
    class Probe(PruningMethod):
        def after_step(self, step):
            self.lrs.append(self.ctx.optimizer.param_groups[0]["lr"])

    cfg = _cfg("cosine")
    data = load_data(cfg)
    copy_cfg = _cfg("cosine")
    copy_cfg.train.steps = 5
    probe = Probe()
    probe.lrs = []
    run(copy_cfg, None, data=data, progress=False,
        method=ContinuedSchedule(probe, cfg.train, 3, 8))
    assert probe.lrs == pytest.approx([0.1 * lr_factor(cfg.train, 3 + s, 8) for s in range(5)])
    assert probe.lrs[0] < 0.1  # not restarted at the peak


# ----------------------------------------------------------------------------- gradient flow


def _squared(out, y):
    return 0.5 * ((out - y) ** 2).sum()


def test_gradient_norms_of_a_linear_model_by_hand():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2, bias=False)
    x, y = torch.randn(1, 3), torch.randn(1, 2)
    w = layer.weight.detach().clone()
    g = (x @ w.t() - y).t() @ x
    res = gradient_norms(layer, (x, y), loss_fn=_squared)
    assert res["layers"]["weight"] == pytest.approx(float(g.norm()), rel=1e-5)
    mask = {"weight": torch.tensor([[True, False, True], [False, True, True]])}
    wm = w * mask["weight"]
    gm = ((x @ wm.t() - y).t() @ x) * mask["weight"]
    res = gradient_norms(layer, (x, y), mask, loss_fn=_squared)
    assert res["layers"]["weight"] == pytest.approx(float(gm.norm()), rel=1e-5)
    assert res["global"] == pytest.approx(float(gm.norm()), rel=1e-5)
    assert torch.equal(layer.weight.detach(), w)  # the model is untouched


def test_jacobian_singular_values_of_a_linear_network_are_those_of_its_product():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Linear(5, 4))
    x = torch.randn(3, 2, 3)
    w1, w2 = model[1].weight.detach(), model[2].weight.detach()
    sv = jacobian_singular_values(model, x)
    expected = torch.linalg.svdvals(w2 @ w1)
    assert sv.shape == (3, 4)
    assert torch.allclose(sv, expected.expand(3, 4), atol=1e-5)
    masks = {"1.weight": torch.rand(5, 6) > 0.5, "2.weight": torch.rand(4, 5) > 0.3}
    sv = jacobian_singular_values(model, x, masks, max_samples=2)
    expected = torch.linalg.svdvals((w2 * masks["2.weight"]) @ (w1 * masks["1.weight"]))
    assert sv.shape == (2, 4) and torch.allclose(sv[0], expected, atol=1e-5)
    res = gradient_flow(model, (x, torch.tensor([0, 1, 2])), masks)
    assert res["jacobian"]["summary"]["max"] == pytest.approx(float(expected.max()), rel=1e-5)


# ----------------------------------------------------------------------------- CLI


def test_analyze_commands(tmp_path, capsys):
    runs = []
    for i, method in enumerate(("random", "snip")):
        cfg = _cfg()
        cfg.method, cfg.method_options = method, {"sparsity": 0.7}
        run(cfg, tmp_path / f"r{i}", progress=False)
        runs.append(str(tmp_path / f"r{i}"))
    assert main(["analyze", "masks", *runs, "--labels", "random", "snip",
                 "--out", str(tmp_path / "m")]) == 0
    res = json.loads((tmp_path / "m" / "results.json").read_text())
    assert res["labels"] == ["random", "snip"] and 0.0 <= res["global"][0][1] <= 1.0
    assert main(["analyze", "gradflow", *runs, "--samples", "2",
                 "--out", str(tmp_path / "g")]) == 0
    res = json.loads((tmp_path / "g" / "results.json").read_text())
    assert set(res["runs"]) == set(runs)
    assert main(["analyze", "lmc", runs[0], "--rewind", "0", "1", "--masks", runs[0],
                 "--points", "3", "--quiet", "--out", str(tmp_path / "l")]) == 0
    res = json.loads((tmp_path / "l" / "results.json").read_text())
    assert [r["start_step"] for r in res["results"]] == [0, 4]
    capsys.readouterr()
    for argv, message in ((["analyze", "masks", runs[0]], "at least two"),
                          (["analyze", "masks", runs[0], str(tmp_path / "nope")], "no masks at"),
                          (["analyze", "lmc", runs[0], "--rewind", "9"], "checkpoint"),
                          (["analyze"], "needs a kind")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, err
