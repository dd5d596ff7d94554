"""Bezier curves: Bernstein basis, endpoints fixed, sparse curves inside the mask at every t,
training lowers the loss along the curve where the line has a barrier, save/load, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prunelab.errors import ConfigError, DataError, MaskError
from prunelab.landscape.curves import (
    BezierCurve,
    bernstein,
    combine_masks,
    evaluate_curve,
    sparse_support_ok,
    train_curve,
)
from prunelab.landscape.paths import interpolate
from prunelab.train import evaluate


def toy_data(n: int = 400, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = ((x[:, 0] * x[:, 1]) > 0).long()  # XOR of the signs: needs the hidden layer
    xt = torch.randn(200, 2, generator=g)
    yt = ((xt[:, 0] * xt[:, 1]) > 0).long()
    return {"train": (x, y), "test": (xt, yt)}


def tiny_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 12), nn.ReLU(), nn.Linear(12, 2))


def trained_toy(steps: int = 400) -> tuple[nn.Sequential, dict]:
    """A tiny MLP trained to near zero loss on the XOR-of-signs task."""
    data = toy_data()
    model = tiny_net()
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    x, y = data["train"]
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, data


def permuted(model: nn.Sequential, seed: int = 1) -> dict[str, torch.Tensor]:
    """The same function with its hidden units reversed: a second solution, far on the line."""
    perm = torch.arange(model[0].out_features).flip(0)
    s = {k: v.detach().clone() for k, v in model.state_dict().items()}
    s["0.weight"], s["0.bias"] = s["0.weight"][perm], s["0.bias"][perm]
    s["2.weight"] = s["2.weight"][:, perm]
    return s


def _masked(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    s = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for k, m in masks.items():
        s[k] = s[k] * m
    return s


def _random_masks(model: nn.Module, keep: float, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) < keep
            for n, p in model.named_parameters() if n.endswith("weight")}


def test_bernstein_basis():
    c = bernstein(3, [0.0, 0.5, 1.0])
    assert c[0].tolist() == [1.0, 0.0, 0.0, 0.0] and c[2].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert c[1].tolist() == pytest.approx([1 / 8, 3 / 8, 3 / 8, 1 / 8])
    assert torch.allclose(bernstein(5, torch.rand(20)).sum(1), torch.ones(20, dtype=torch.float64))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="degree must be an integer >= 1"):
            bernstein(bad, [0.5])


def test_curve_construction_endpoints_and_line_init():
    a, b = tiny_net(0), tiny_net(1)
    curve = BezierCurve.between(a, b, degree=3)
    assert curve.degree == 3 and len(curve.inner) == 2
    for name, p in a.named_parameters():
        assert torch.equal(curve.params_at(0.0)[name], p.detach())
    for name, p in b.named_parameters():
        assert torch.equal(curve.params_at(1.0)[name], p.detach())
    # inner points start on the line: phi(t) equals the line at any t
    for t in (0.2, 0.7):
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            line = (1 - t) * pa.detach() + t * pb.detach()
            assert torch.allclose(curve.params_at(t)[name], line, atol=1e-6)
    with pytest.raises(ConfigError, match="degree"):
        BezierCurve.between(a, b, degree=0)
    with pytest.raises(ConfigError, match="subspace must be one of dense, sparse"):
        BezierCurve.between(a, b, subspace="diagonal")


def test_curve_training_lowers_loss_where_the_line_has_a_barrier():
    model, data = trained_toy()
    other = permuted(model)
    line = interpolate(model, other, data, points=21, t_range=(0.0, 1.0), splits=["train"])
    assert line.barrier() > 0.1  # the toy problem has a barrier on the line
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    curve = BezierCurve.between(model, other, degree=2)
    before = evaluate_curve(curve, model, data, points=21, splits=["train"])
    assert before.loss() == pytest.approx(line.loss(), rel=1e-4)  # starts as the line
    history = train_curve(curve, model, data, epochs=25, lr=0.05, batch_size=50,
                          weight_decay=0.0, progress=False)
    after = evaluate_curve(curve, model, data, points=21, splits=["train"])
    mean_before = sum(before.loss()) / 21
    mean_after = sum(after.loss()) / 21
    assert mean_after < 0.5 * mean_before
    assert after.barrier() < 0.5 * before.barrier()
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # endpoints unchanged by training, and the model passed in untouched
    assert after.loss()[0] == before.loss()[0] and after.loss()[-1] == before.loss()[-1]
    assert all(torch.equal(before_state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("degree", [2, 3])
def test_sparse_curve_stays_inside_the_mask(degree):
    model, data = trained_toy(steps=50)
    masks = _random_masks(model, 0.5, seed=3)
    a = _masked(model, masks)
    b = _masked(tiny_net(5), masks)
    curve = BezierCurve.between(a, b, model=model, degree=degree, subspace="sparse",
                                mask="intersection")
    train_curve(curve, model, data, epochs=3, lr=0.1, batch_size=50, progress=False)
    ts = torch.linspace(0, 1, 61).tolist()
    assert sparse_support_ok(curve, ts, masks)
    for cp in curve.control_points():
        for name, m in masks.items():
            assert not bool(cp[name][~m].any())
    # a dense curve trained the same way leaves the mask
    dense = BezierCurve.between(a, b, model=model, degree=degree, subspace="dense")
    train_curve(dense, model, data, epochs=3, lr=0.1, batch_size=50, progress=False)
    assert not sparse_support_ok(dense, ts, masks)


def test_intersection_and_union_of_different_masks():
    model = tiny_net()
    ma, mb = _random_masks(model, 0.6, 1), _random_masks(model, 0.6, 2)
    a, b = _masked(tiny_net(3), ma), _masked(tiny_net(4), mb)
    data = toy_data(100)
    union = combine_masks(ma, mb, "union")
    inter = combine_masks(ma, mb, "intersection")
    for mode, inner_mask in (("intersection", inter), ("union", union)):
        curve = BezierCurve.between(a, b, model=model, degree=2, subspace="sparse", mask=mode)
        # masks read off the endpoints' nonzero weights
        assert all(torch.equal(curve.masks[k], inner_mask[k]) for k in inner_mask)
        train_curve(curve, model, data, epochs=2, lr=0.1, batch_size=25, progress=False)
        inner = curve.control_points()[1]
        assert all(not bool(inner[k][~m].any()) for k, m in inner_mask.items())
        assert sparse_support_ok(curve, [0.0, 0.3, 0.5, 0.9, 1.0], union)
    with pytest.raises(ConfigError, match="mask must be one of intersection, union"):
        BezierCurve.between(a, b, model=model, subspace="sparse", mask="both")


def test_save_and_load_roundtrip(tmp_path):
    model, data = trained_toy(steps=30)
    masks = _random_masks(model, 0.5, 7)
    curve = BezierCurve.between(_masked(model, masks), _masked(tiny_net(2), masks), model=model,
                                degree=3, subspace="sparse")
    train_curve(curve, model, data, epochs=1, batch_size=100, progress=False)
    curve.save(tmp_path / "curve.pt")
    back = BezierCurve.load(tmp_path / "curve.pt")
    assert (back.degree, back.subspace, back.mask_mode) == (3, "sparse", "intersection")
    for t in (0.0, 0.4, 1.0):
        p, q = curve.params_at(t), back.params_at(t)
        assert all(torch.equal(p[k], q[k]) for k in p)
    assert all(torch.equal(curve.masks[k], back.masks[k]) for k in masks)
    r1 = evaluate_curve(curve, model, data, points=7)
    r2 = evaluate_curve(back, model, data, points=7)
    assert r1.metrics == r2.metrics and len(evaluate_curve(curve, model, data).t) == 61
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="cannot read curve file"):
        BezierCurve.load(tmp_path / "junk.pt")
    with pytest.raises(DataError, match="not found"):
        BezierCurve.load(tmp_path / "missing.pt")


def test_curve_endpoints_match_evaluate_exactly():
    model, data = trained_toy(steps=30)
    other = tiny_net(9)
    curve = BezierCurve.between(model, other, degree=2)
    res = evaluate_curve(curve, model, data, points=61)
    assert res.at(0.0, "test") == evaluate(model, *data["test"])
    assert res.at(1.0, "test") == evaluate(other, *data["test"])


def test_float64_curves_train_and_evaluate_in_float64(tmp_path):
    """Curves keep the models' dtype (float32 before issue 20.6e)."""
    model, data = trained_toy(steps=30)
    model, other = model.double(), tiny_net(9).double()
    data64 = {k: (x.double(), y) for k, (x, y) in data.items()}
    curve = BezierCurve.between(model, other, degree=2)
    assert curve.start.dtype == torch.float64 and curve.inner[0].dtype == torch.float64
    train_curve(curve, model, data, epochs=1, batch_size=100, progress=False)  # float32 data
    curve.save(tmp_path / "c.pt")
    back = BezierCurve.load(tmp_path / "c.pt")
    assert back.inner[0].dtype == torch.float64 and torch.equal(back.stacked(), curve.stacked())
    res = evaluate_curve(curve, model, data64, points=5)
    for t, m in ((0.0, model), (1.0, other)):
        ref = evaluate(m, *data64["test"])
        assert res.at(t, "test")["loss"] == pytest.approx(ref["loss"], rel=1e-13, abs=0)


def test_bad_masks_and_architectures():
    model = tiny_net()
    a, b = tiny_net(1), tiny_net(2)
    wrong = {"0.weight": torch.ones(3, 3, dtype=torch.bool)}
    with pytest.raises(MaskError, match=r"mask for '0.weight' has shape \(3, 3\)"):
        BezierCurve.between(a, b, model=model, subspace="sparse", mask=wrong)
    with pytest.raises(MaskError, match="matches no parameter"):
        BezierCurve.between(a, b, model=model, subspace="sparse",
                            mask={"7.weight": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(MaskError, match=r"has shape \(3, 3\)"):
        BezierCurve.between(a, b, model=model, subspace="sparse", masks_a=wrong)
    bigger = nn.Sequential(nn.Linear(2, 13), nn.ReLU(), nn.Linear(13, 2))
    with pytest.raises(ConfigError, match="different architectures"):
        BezierCurve.between(a, bigger, model=model, degree=2)


def test_landscape_cli_line_and_curve(tmp_path, capsys):
    import json

    from prunelab.cli import main
    from prunelab.config import RunConfig, TrainConfig
    from prunelab.train import run

    def make(name: str, seed: int, widths: list[int]) -> str:
        cfg = RunConfig("blobs", {"n_train": 150, "n_test": 60}, None, "mlp",
                        {"widths": widths}, "gmp", {"sparsity": 0.5, "begin": 0, "end": 4,
                                                    "frequency": 2},
                        TrainConfig(epochs=2, batch_size=50, lr=0.05, seed=seed))
        run(cfg, tmp_path / name, progress=False)
        return str(tmp_path / name)

    a, b, c = make("a", 0, [8]), make("b", 1, [8]), make("c", 0, [6])
    out = tmp_path / "line"
    assert main(["landscape", "line", a, b, "--points", "8", "--range", "-0.5", "1.5",
                 "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert len(res["line"]["t"]) == 10 and (out / "line.png").is_file()  # 0 and 1 added
    assert 0.0 in res["line"]["t"] and 1.0 in res["line"]["t"]
    out = tmp_path / "curve"
    assert main(["landscape", "curve", a, b, "--degree", "2", "--subspace", "sparse",
                 "--epochs", "1", "--points", "11", "--quiet", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["subspace"] == "sparse" and len(res["curve"]["t"]) == 11
    curve = BezierCurve.load(out / "curve.pt")
    assert curve.degree == 2 and curve.subspace == "sparse"
    capsys.readouterr()
    assert main(["landscape", "line", a, c, "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "differ in model_options" in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()
    assert main(["landscape", "curve", a, b, "--degree", "0"]) == 2
    assert "degree must be an integer >= 1" in capsys.readouterr().err


def test_reproduction_without_mnist_fails_with_one_line(tmp_path, monkeypatch):
    from prunelab.experiments import sparse_landscape

    monkeypatch.setenv("PRUNELAB_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DataError, match="sparse-landscape needs MNIST.*prunelab data download "
                                        "mnist") as info:
        sparse_landscape.run(tmp_path / "out", quick=True, log=lambda s: None)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.realdata
def test_quick_reproduction_end_to_end(tmp_path, monkeypatch):
    import json

    from conftest import shared_data_dir
    from prunelab.experiments import sparse_landscape

    monkeypatch.setenv("PRUNELAB_DATA", str(shared_data_dir()))
    res = sparse_landscape.run(tmp_path / "out", quick=True, progress=False, log=lambda s: None)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (tmp_path / "out" / "figures" / "paths.png").is_file()
    report = (tmp_path / "out" / "report.md").read_text()
    assert [c["name"] for c in saved["claims"]] == sparse_landscape.CLAIMS.names
    assert "| scratch ends with a higher training loss than pruned | scratch - pruned > 0 |" \
        in report and "![paths](figures/paths.png)" in report
    assert abs(saved["mask_sparsity"] - 0.98) < 1e-3
    # each reported barrier is max_t [L(t) - chord] over t in [0, 1] of its own saved path
    for row in res["barriers"]:
        path = saved["paths"][row["path"]]
        pts = [(t, v) for t, v in zip(path["t"], path["metrics"]["train"]["loss"])
               if 0.0 <= t <= 1.0]
        (_, la), (_, lb) = pts[0], pts[-1]
        assert row["barrier"] == pytest.approx(max(v - ((1 - t) * la + t * lb) for t, v in pts))
    barrier = {row["path"]: row["barrier"] for row in res["barriers"]}
    # the lottery retrain shares the pruned run's init and mask: no barrier on its line, unlike
    # scratch's (full run 0.000 vs 1.073)
    assert barrier["lottery->pruned"] < 0.1 * barrier["scratch->pruned"]
    line = {c["name"]: c for c in saved["claims"]}["line-barrier"]
    assert line["estimate"] == pytest.approx(barrier["scratch->pruned"])
    sparse = [v for k, v in res["paths"].items() if "sparse" in k]
    assert all(p["info"]["inside_mask"] for p in sparse)
