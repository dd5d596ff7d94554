"""Hessian operator and spectra: products against autograd references, mask restriction,
Gauss-Newton rank, exact vs iterative eigenvalues, density, trace, bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian
from torch.nn import functional as F

from prunelab.data import load_dataset
from prunelab.errors import ConfigError, MaskError
from prunelab.landscape.hessian import HessianOperator, exact_hessian
from prunelab.landscape.spectrum import (
    bottom_eigenvalues,
    count_outliers,
    exact_eigenvalues,
    hutchinson_trace,
    hutchpp_trace,
    near_zero_fraction,
    spectral_density,
    top_eigenvalues,
)


def _mlp(d_in: int, k: int, widths=(10, 5), act=nn.ReLU, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Linear(d_in, w), act()]
        d_in = w
    layers.append(nn.Linear(d_in, k))
    return nn.Sequential(*layers)


def _reference_hessian(op: HessianOperator, model: nn.Module, x, y) -> torch.Tensor:
    def f(t):
        return F.cross_entropy(functional_call(model, op.unflatten(t), (x.double(),)), y)

    return hessian(f)(op.theta.clone())


@pytest.fixture(scope="module")
def blob_net():
    """MLP [10, 5] on 3 blobs, full-batch GD lr 0.1 for 1500 steps (near a minimum)."""
    torch.manual_seed(0)
    data = load_dataset("blobs", n_clusters=3, n_train=60, seed=0)
    model = _mlp(2, 3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(1500):
        opt.zero_grad()
        F.cross_entropy(model(data.x_train), data.y_train).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model, data.x_train, data.y_train


def test_hvp_matches_torch_func_hessian_mlp_and_cnn(tiny_mlp, tiny_cnn):
    torch.manual_seed(1)
    for model, x in ((tiny_mlp, torch.randn(13, 6)), (tiny_cnn, torch.randn(9, 1, 10, 10))):
        y = torch.randint(0, 3, (x.shape[0],))
        op = HessianOperator(model, x, y, dtype="float64", batch_size=4)  # chunked
        ref = _reference_hessian(op, model, x, y)
        v = torch.randn(op.dim, 3, dtype=torch.float64)
        got = op @ v
        assert torch.allclose(got, ref @ v, rtol=1e-9, atol=1e-12)
        assert op.n_products == 3
        # several vectors at once equal one at a time
        one = torch.stack([op.matvec(v[:, i]) for i in range(3)], 1)
        assert torch.allclose(one, got, rtol=1e-12, atol=1e-14)


def test_hvp_matches_finite_differences_of_the_gradient():
    torch.manual_seed(2)
    model = _mlp(4, 3, widths=(7,), act=nn.Tanh)
    x, y = torch.randn(25, 4), torch.randint(0, 3, (25,))
    op = HessianOperator(model, x, y, dtype="float64")
    v = torch.randn(op.dim, dtype=torch.float64)
    eps = 1e-5

    def grad_at(theta):
        return HessianOperator(model, x, y, dtype="float64", params=theta).gradient()

    fd = (grad_at(op.theta + eps * v) - grad_at(op.theta - eps * v)) / (2 * eps)
    hv = op.matvec(v)
    assert torch.allclose(hv, fd, rtol=1e-6, atol=1e-8)
    # float32 products agree with float64 to single precision
    op32 = HessianOperator(model, x, y)
    assert torch.allclose(op32.matvec(v.float()).double(), hv, rtol=1e-3, atol=1e-5)


def test_operator_leaves_the_model_unchanged(tiny_mlp):
    model = tiny_mlp.train()
    before = copy.deepcopy(model.state_dict())
    flags = [p.requires_grad for p in model.parameters()]
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    masks = {"1.weight": torch.rand(8, 6) > 0.5}
    for kind in ("hessian", "gauss-newton", "residual"):
        op = HessianOperator(model, x, y, masks=masks, subspace="sparse", kind=kind,
                             dtype="float64")
        op.dense()
        op.gradient()
    for name, t in model.state_dict().items():
        assert torch.equal(t, before[name]), name
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    assert next(model.parameters()).dtype == torch.float32


def test_sparse_spectrum_is_the_masked_submatrix(tiny_mlp):
    torch.manual_seed(3)
    x, y = torch.randn(12, 6), torch.randint(0, 3, (12,))
    masks = {"1.weight": torch.rand(8, 6) > 0.4, "3.weight": torch.rand(5, 8) > 0.4}
    dense_op = HessianOperator(tiny_mlp, x, y, masks=masks, dtype="float64")
    sparse_op = HessianOperator(tiny_mlp, x, y, masks=masks, subspace="sparse", dtype="float64")
    full = dense_op.dense()
    free = sparse_op.free_index
    n_pruned = sum(int((~m).sum()) for m in masks.values())
    assert sparse_op.dim == dense_op.dim - n_pruned
    sub = full[free][:, free]
    assert torch.allclose(sparse_op.dense(), sub, atol=1e-13)
    ev_sub = torch.linalg.eigvalsh(sub).numpy()
    assert np.allclose(exact_eigenvalues(sparse_op).values, ev_sub, atol=1e-12)
    top = top_eigenvalues(sparse_op, 3, tol=1e-12).values
    assert np.allclose(top, ev_sub[::-1][:3], rtol=1e-9)
    # the point is the masked point: pruned weights are zero there
    w = sparse_op.unflatten(sparse_op.theta)["1.weight"]
    assert bool((w[~masks["1.weight"]] == 0).all())


def test_gauss_newton_rank_bound_and_split():
    torch.manual_seed(4)
    n, k = 4, 3
    model = _mlp(5, k, widths=(6, 4))
    x, y = torch.randn(n, 5), torch.randint(0, k, (n,))
    op = HessianOperator(model, x, y, dtype="float64")
    h = op.dense()
    g = op.with_kind("gauss-newton").dense()
    r = op.with_kind("residual").dense()
    assert torch.allclose(h, g + r, atol=1e-13)
    rank_g = int(torch.linalg.matrix_rank(g, rtol=1e-10))
    assert rank_g <= n * (k - 1) < op.dim
    assert int(torch.linalg.matrix_rank(h, rtol=1e-10)) > rank_g  # H is not just G here
    # G against the explicit formula (1/N) sum J_i^T (diag p - p p^T) J_i
    theta = op.theta.clone()
    jac = torch.func.jacrev(lambda t: functional_call(model, op.unflatten(t), (x.double(),)))(
        theta)
    p = functional_call(model, op.unflatten(theta), (x.double(),)).softmax(1)
    ref = sum(jac[i].T @ (torch.diag(p[i]) - torch.outer(p[i], p[i])) @ jac[i]
              for i in range(n)) / n
    assert torch.allclose(g, ref, atol=1e-13)
    assert float(torch.linalg.eigvalsh(g).min()) > -1e-12  # G is positive semidefinite


def test_exact_and_iterative_top5_agree(blob_net):
    model, x, y = blob_net
    op = HessianOperator(model, x, y, dtype="float64")
    exact = np.sort(exact_eigenvalues(op).values)[::-1]
    it = top_eigenvalues(op, 5, tol=1e-10)
    rel = np.abs(it.values - exact[:5]) / np.abs(exact[:5])
    assert rel.max() <= 1e-6, rel
    assert it.n_products > 0
    bottom = bottom_eigenvalues(op, 2, tol=1e-10).values
    assert np.allclose(bottom, np.sort(exact)[:2], rtol=1e-6, atol=1e-9)


def test_trained_net_has_a_bulk_and_few_outliers(blob_net):
    model, x, y = blob_net
    ev = exact_eigenvalues(HessianOperator(model, x, y, dtype="float64")).values
    out = count_outliers(ev)
    # a few eigenvalues (under 10% of them) stand beyond a bulk edge that is near zero
    assert 1 <= out.n_outliers <= 0.1 * ev.size
    assert out.bulk_edge < 0.1 * ev.max() and min(out.top) > out.bulk_edge
    # most of the spectrum is a bulk at ~0: its median magnitude is tiny next to the top
    assert np.median(np.abs(ev)) < 0.01 * ev.max()
    assert near_zero_fraction(ev, rel=0.02) > 0.5


def test_lanczos_density_and_trace_match_exact(blob_net):
    model, x, y = blob_net
    op = HessianOperator(model, x, y, dtype="float64")
    ev = exact_eigenvalues(op).values
    dens = spectral_density(op, n_steps=op.dim, n_vectors=2, seed=0)
    for nodes, weights in zip(dens.nodes, dens.weights):
        assert abs(weights.sum() - 1) < 1e-10
        assert abs(nodes.max() - ev.max()) <= 1e-8 * abs(ev.max())
        assert abs(nodes.min() - ev.min()) <= 1e-8 * max(abs(ev.min()), 1e-3)
    area = np.trapezoid(dens.density, dens.grid)
    assert abs(area - 1) < 1e-3
    # a short SLQ run: its mean node (weighted) estimates tr(H)/dim
    short = spectral_density(op, n_steps=20, n_vectors=6, seed=1)
    est = np.mean([float((n * w).sum()) for n, w in zip(short.nodes, short.weights)]) * op.dim
    trace = float(ev.sum())
    assert abs(est - trace) < 0.5 * abs(trace)
    hpp = hutchpp_trace(op, n_products=3 * op.dim)  # sketch spans everything: exact
    assert abs(hpp.estimate - trace) < 1e-8 * abs(trace)
    hut = hutchinson_trace(op, 64, seed=0)
    assert abs(hut.estimate - trace) < 5 * hut.stderr + 1e-12
    assert hut.n_products == 64


def test_count_outliers_on_known_spectra():
    bulk = list(np.linspace(-1e-4, 1e-3, 50))
    assert count_outliers([10.0, 5.0] + bulk).n_outliers == 2
    # 0.1 and 0.09 are 100x beyond this bulk: outliers by its edge; the earlier rule cuts at
    # the widest gap (8 -> 0.1) instead
    assert count_outliers([10.0, 9.0, 8.0, 0.1, 0.09] + bulk).n_outliers == 5
    assert count_outliers([10.0, 9.0, 8.0, 0.1, 0.09] + bulk,
                          rule="largest-gap").n_outliers == 3
    assert count_outliers([-1.0] * 20).n_outliers == 0
    assert count_outliers([-1.0, -2.0], rule="largest-gap").n_outliers == 0


def test_bad_input_errors(tiny_mlp):
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    none_free = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in tiny_mlp.named_parameters()}
    with pytest.raises(MaskError, match="no free coordinate"):
        HessianOperator(tiny_mlp, x, y, masks=none_free, subspace="sparse")
    with pytest.raises(MaskError, match="needs masks"):
        HessianOperator(tiny_mlp, x, y, subspace="sparse")
    with pytest.raises(MaskError, match="shape"):
        HessianOperator(tiny_mlp, x, y, masks={"1.weight": torch.ones(3, 3, dtype=torch.bool)})
    op = HessianOperator(tiny_mlp, x, y)
    with pytest.raises(ConfigError, match=r"k \(number of eigenvalues\) must be in \[1, 119\]"):
        top_eigenvalues(op, op.dim + 1)
    with pytest.raises(ConfigError, match="subspace must be one of dense, sparse"):
        HessianOperator(tiny_mlp, x, y, subspace="diagonal")
    with pytest.raises(ConfigError, match="kind must be one of"):
        HessianOperator(tiny_mlp, x, y, kind="fisher")
    big = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100),
                        nn.ReLU(), nn.Linear(100, 10))
    xb, yb = torch.randn(2, 1, 28, 28), torch.randint(0, 10, (2,))
    with pytest.raises(ConfigError, match=r"exact mode on 266,610 parameters needs about .*TiB"):
        exact_hessian(big, xb, yb)


def test_top_k_equal_to_dimension_uses_exact(tiny_mlp):
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    op = HessianOperator(tiny_mlp, x, y, dtype="float64")
    res = top_eigenvalues(op, op.dim)
    assert res.method == "exact" and len(res.values) == op.dim
    assert np.all(np.diff(res.values) <= 0)


def test_cli_hessian_writes_results_and_refuses_bad_input(tmp_path, capsys):
    import json

    from prunelab.cli import main
    from prunelab.config import RunConfig, TrainConfig
    from prunelab.train import run

    cfg = RunConfig(dataset="blobs", data_options={"n_clusters": 3, "n_train": 40,
                                                   "n_test": 20},
                    model="mlp", model_options={"widths": [4]},
                    train=TrainConfig(epochs=2, batch_size=20, eval_train=False))
    run(cfg, tmp_path / "run", progress=False)
    out = tmp_path / "h"
    rc = main(["hessian", str(tmp_path / "run"), "--exact", "--top-k", "3", "--density",
               "--gauss-newton", "--float64", "--lanczos-steps", "10", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    dim = 2 * 4 + 4 + 4 * 3 + 3
    assert res["dim"] == dim and len(res["H"]["exact"]["eigenvalues"]) == dim
    top_exact = sorted(res["H"]["exact"]["eigenvalues"], reverse=True)[:3]
    assert np.allclose(res["H"]["top_k"]["eigenvalues"], top_exact, rtol=1e-5)
    assert len(res["G_vs_H_top_relative_difference"]) == 3
    # outliers by the bulk edge of the exact spectrum, for the exact and the top-k modes
    exact_out = res["H"]["exact"]["outliers"]
    assert exact_out["rule"] == "bulk-edge"
    assert exact_out["n_outliers"] == count_outliers(res["H"]["exact"]["eigenvalues"]).n_outliers
    assert res["H"]["top_k"]["outliers"]["n_outliers"] == exact_out["n_outliers"]
    # top-k alone has no bulk: no count unless asked for the earlier rule
    for argv, key in ((["--top-k", "3"], None), (["--top-k", "3", "--outlier-rule",
                                                   "largest-gap"], "largest-gap")):
        assert main(["hessian", str(tmp_path / "run"), *argv, "--out", str(tmp_path / "t")]) == 0
        top = json.loads((tmp_path / "t" / "results.json").read_text())["H"]["top_k"]
        if key is None:
            assert top["outliers"] is None and "--density" in top["outliers_note"]
        else:
            assert top["outliers"]["rule"] == key and top["outliers"]["n_outliers"] >= 1
    assert (out / "figures" / "exact.png").is_file() and (out / "figures" / "density.png").is_file()
    capsys.readouterr()
    bad = tmp_path / "bad"
    for argv, message in ((["--top-k", "1000"], f"--top-k must be in [1, {dim}]"),
                          (["--subspace", "sparse"], "--subspace sparse needs a pruned run"),
                          (["--exact", "--samples", "0"], "--samples must be in"),
                          (["--outlier-rule", "gap"], "--outlier-rule must be one of")):
        assert main(["hessian", str(tmp_path / "run"), *argv, "--out", str(bad)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
        assert not bad.exists()


@pytest.mark.slow
def test_reproduce_hessian_spectrum_quick_writes_a_report(tmp_path):
    import json

    from prunelab.experiments.hessian_spectrum import run

    res = run(tmp_path / "hs", quick=True, log=lambda s: None)
    report = (tmp_path / "hs" / "report.md").read_text()
    assert "## Claims" in report and "G and H within 5%" in report
    saved = json.loads((tmp_path / "hs" / "results.json").read_text())
    claims = {c["name"]: c for c in saved["claims"]}  # measured from the tables, judged once
    gn = claims["gauss-newton"]
    if all(r["converged"] for r in res["clusters"]):
        assert gn["estimate"] == max(r["G_vs_H_fro"] for r in res["clusters"])
        assert gn["held"] == (gn["estimate"] <= 0.05)
    else:  # a claim about minima is not measured at points that are not minima
        assert gn["verdict"] == "not measured" and "not at convergence" in gn["note"]
    assert saved["test_evaluations"] == []  # the spectra are of the training loss only
    assert saved["settings"]["finish"] == "newton" and saved["settings"]["grad_tol"] == 1e-4
    assert all((tmp_path / "hs" / f).is_file() for f in res["figures"])
    for r in res["clusters"] + res["clusters_softplus"]:
        assert r["converged"] == (r["grad_norm"] <= 1e-4)  # converged means ||g|| <= tol
        assert r["G_vs_H_fro"] < 0.05
    # the smooth variant reaches a vanishing gradient; a ReLU run that does not sits on a kink
    assert all(r["converged"] for r in res["clusters_softplus"])
    assert all(r["kink_distance"] < 1e-3 for r in res["clusters"] if not r["converged"])
