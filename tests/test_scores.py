"""Saliency scores: agreement with brute force and finite differences, no side effects."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prunelab.errors import ConfigError, UnknownNameError
from prunelab.scores import (
    dead_units,
    gradient_and_hvp,
    hessian_diagonal,
    parameter_scores,
    replacement_loss_change,
    select_units,
    unit_means,
    unit_scores,
    unit_statistics,
)
from prunelab.selection import select_masks
from prunelab.shrink import flat_modules, shrink, unit_layers


def _data(shape, n=24, classes=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=gen), torch.randint(0, classes, (n,), generator=gen)


def brute_force_mrs(model, x, y):
    """Per-sample loop: MRS_i = mean_n |sum_pos dl_n/da (a_n - a_bar)|, removal likewise."""
    flat = flat_modules(model)
    out_mrs, out_rem = {}, {}
    for L in unit_layers(model):
        prefix, suffix = flat[: L.point + 1], flat[L.point + 1 :]
        with torch.no_grad():
            a = x
            for _, m in prefix:
                a = m(a)
        dims = (0,) + tuple(range(2, a.dim()))
        a_bar = a.mean(dim=dims)
        mrs = torch.zeros(L.units)
        rem = torch.zeros(L.units)
        for n in range(x.shape[0]):
            an = a[n : n + 1].clone().requires_grad_(True)
            h = an
            for _, m in suffix:
                h = m(h)
            (g,) = torch.autograd.grad(F.cross_entropy(h, y[n : n + 1]), an)
            for i in range(L.units):
                mrs[i] += (g[0, i] * (a[n, i] - a_bar[i])).sum().abs()
                rem[i] += (g[0, i] * a[n, i]).sum().abs()
        out_mrs[L.name], out_rem[L.name] = mrs / x.shape[0], rem / x.shape[0]
    return out_mrs, out_rem


@pytest.mark.parametrize("fixture,shape", [("tiny_mlp", (6,)), ("tiny_cnn", (1, 10, 10))])
def test_mrs_matches_brute_force(fixture, shape, request):
    model = request.getfixturevalue(fixture).eval()
    x, y = _data(shape)
    mrs, rem = brute_force_mrs(model, x, y)
    stats = unit_statistics(model, (x, y))
    for name in mrs:
        torch.testing.assert_close(stats.mrs[name], mrs[name], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(stats.removal[name], rem[name], rtol=1e-4, atol=1e-7)
    assert set(stats.mrs) == {L.name for L in unit_layers(model)}  # all layers, one pass


def test_unit_scores_accumulate_over_batches(tiny_mlp):
    x, y = _data((6,), n=30)
    parts = [(x[:10], y[:10]), (x[10:], y[10:])]
    s_all = unit_scores(tiny_mlp, parts, "removal")
    s1, s2 = unit_scores(tiny_mlp, parts[0], "removal"), unit_scores(tiny_mlp, parts[1], "removal")
    for k in s_all:
        torch.testing.assert_close(s_all[k], (10 * s1[k] + 20 * s2[k]) / 30)
    means = unit_means(tiny_mlp, parts)
    with torch.no_grad():
        a = tiny_mlp[2](tiny_mlp[1](tiny_mlp[0](x)))
    torch.testing.assert_close(means["1"], a.mean(0), rtol=1e-5, atol=1e-6)


def test_unit_oracle_matches_shrunk_mean_replacement(tiny_cnn):
    model = tiny_cnn.eval()
    x, y = _data((1, 10, 10))
    means = unit_means(model, (x, y))
    oracle = unit_scores(model, (x, y), "oracle", means=means)
    with torch.no_grad():
        base = float(F.cross_entropy(model(x), y))
    for L in unit_layers(model):
        for i in (0, L.units - 1):
            um = {L.name: torch.ones(L.units, dtype=torch.bool)}
            um[L.name][i] = False
            with torch.no_grad():
                loss = float(F.cross_entropy(shrink(model, um, means=means)(x), y))
            assert oracle[L.name][i].item() == pytest.approx(loss - base, abs=1e-5)
    zeros = {k: torch.zeros_like(v) for k, v in means.items()}
    removal = replacement_loss_change(model, (x, y), zeros)
    assert all(removal[k].shape == oracle[k].shape for k in oracle)


def test_dead_units_detected_per_layer(tiny_mlp):
    model = copy.deepcopy(tiny_mlp)
    with torch.no_grad():
        model[1].bias[[2, 5]] = -100.0  # ReLU never fires: dead
        model[3].weight[1] = 0.0  # constant output relu(b) -> replaceable by its mean
    x, y = _data((6,))
    rep = dead_units(model, (x, y), tol=1e-6)
    assert rep["1"]["units"] == 8 and rep["1"]["dead_indices"] == [2, 5]
    assert 1 in rep["3"]["dead_indices"]
    assert rep["3"]["constant"] >= 1
    assert unit_statistics(model, (x, y)).mrs["1"][[2, 5]].abs().max() == 0.0


def test_taylor1_matches_loss_change_for_tiny_weights(tiny_mlp):
    model = copy.deepcopy(tiny_mlp).double()
    x, y = _data((6,))
    x = x.double()
    with torch.no_grad():
        model[1].weight.mul_(1e-3)
    names = ["1.weight"]
    t1 = parameter_scores(model, (x, y), "taylor1", names=names)["1.weight"]
    exact = parameter_scores(model, (x, y), "oracle", names=names)["1.weight"]
    assert torch.allclose(t1, exact, rtol=2e-2, atol=1e-9)
    assert (t1 - exact).abs().max() < 1e-2 * exact.abs().max()


def test_hessian_term_matches_finite_difference_hvp(tiny_cnn):
    model = copy.deepcopy(tiny_cnn).double()
    x, y = _data((1, 10, 10))
    x = x.double()
    names = ["3.weight", "6.weight"]
    params = dict(model.named_parameters())
    w = {n: params[n].detach().clone() for n in names}
    hess = parameter_scores(model, (x, y), "hessian-full", names=names)
    eps = 1e-5

    def grads_at(scale):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for n in names:
                dict(m.named_parameters())[n].add_(scale * w[n])
        return gradient_and_hvp(m, (x, y), names)[0]

    gp, gm = grads_at(eps), grads_at(-eps)
    for n in names:
        hw_fd = (gp[n] - gm[n]) / (2 * eps)
        torch.testing.assert_close(hess[n], w[n] * hw_fd, rtol=1e-5, atol=1e-9)
    # the full Hessian, not its diagonal: Hw differs from diag(H) * w
    g, hv = gradient_and_hvp(model, (x, y), names, vector=w)
    assert hv["6.weight"].abs().sum() > 0


@pytest.mark.parametrize("suffix", ["", "-full"])
def test_taylor2_combines_terms_with_scale(tiny_mlp, suffix):
    x, y = _data((6,))
    t1 = parameter_scores(tiny_mlp, (x, y), "taylor1")
    h = parameter_scores(tiny_mlp, (x, y), "hessian" + suffix)
    t2 = parameter_scores(tiny_mlp, (x, y), "taylor2" + suffix, hessian_scale=0.3)
    for k in t1:
        torch.testing.assert_close(t2[k], t1[k] + 0.3 * 0.5 * h[k], rtol=1e-5, atol=1e-7)
    ab = parameter_scores(tiny_mlp, (x, y), "taylor1-abs")
    for k in t1:
        torch.testing.assert_close(ab[k], t1[k].abs())


@pytest.mark.parametrize("fixture,shape", [("tiny_mlp", (6,)), ("tiny_cnn", (1, 10, 10))])
def test_hessian_diagonal_is_exact(fixture, shape, request):
    """Against the diagonal of torch.autograd.functional.hessian, every parameter (Linear
    layers by their pre-activation curvature, conv layers entry by entry)."""
    from torch.func import functional_call

    model = copy.deepcopy(request.getfixturevalue(fixture)).double()
    x, y = _data(shape)
    x = x.double()
    params = {n: p.detach() for n, p in model.named_parameters()}
    diag = hessian_diagonal(model, (x, y), list(params), chunk=5)
    for n, w in params.items():
        full = torch.autograd.functional.hessian(
            lambda t, n=n: F.cross_entropy(functional_call(model, {**params, n: t}, (x,)), y), w)
        ref = full.reshape(w.numel(), w.numel()).diagonal().view_as(w)
        torch.testing.assert_close(diag[n], ref, rtol=1e-9, atol=1e-12)
        assert bool(ref.ne(0).any())
    s = parameter_scores(model, (x, y), "hessian", names=list(params))
    for n, w in params.items():
        torch.testing.assert_close(s[n], w * w * diag[n], rtol=1e-12, atol=1e-15)


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def test_second_order_score_ranks_weights_like_the_exact_oracle():
    """The loss change of zeroing one weight is -w g + 1/2 w^2 H_ii + O(w^3): the default
    `taylor2` (diagonal, OBD) ranks the weights of a trained tiny net like the exact oracle;
    `taylor2-full` (w * Hw, every cross term of zeroing all weights at once) does not."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 12), nn.ReLU(),
                        nn.Linear(12, 3)).double()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=gen, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    flat = {k: torch.cat([v.flatten() for v in parameter_scores(net, (x, y), k).values()])
            for k in ("oracle", "taylor2", "taylor2-full", "taylor1")}
    rho = {k: _spearman(v, flat["oracle"]) for k, v in flat.items()}
    assert rho["taylor2"] > 0.98, rho
    assert rho["taylor2"] > rho["taylor1"] + 0.1, rho
    assert rho["taylor2-full"] < 0.6, rho


def test_oracle_matches_zeroing_each_weight(tiny_mlp):
    x, y = _data((6,))
    oracle = parameter_scores(tiny_mlp, (x, y), "oracle", oracle_chunk=7)["3.weight"]
    with torch.no_grad():
        base = float(F.cross_entropy(tiny_mlp(x), y))
        for idx in [(0, 0), (2, 5), (4, 7)]:
            m = copy.deepcopy(tiny_mlp)
            m[3].weight[idx] = 0.0
            assert oracle[idx].item() == pytest.approx(float(F.cross_entropy(m(x), y)) - base,
                                                       abs=1e-6)


def test_scores_do_not_mutate_model(tiny_cnn):
    model = tiny_cnn.train()
    before = copy.deepcopy(model.state_dict())
    x, y = _data((1, 10, 10))
    for s in ("taylor1", "taylor2", "oracle"):
        parameter_scores(model, (x, y), s)
    for s in ("mrs", "removal", "oracle", "norm", "random"):
        unit_scores(model, (x, y), s)
    dead_units(model, (x, y))
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_scores_feed_selection(tiny_mlp):
    x, y = _data((6,))
    scores = parameter_scores(tiny_mlp, (x, y), "taylor1-abs")
    masks = select_masks(scores, sparsity=0.5, scope="layer")
    assert set(masks) == set(scores)
    r1 = parameter_scores(tiny_mlp, None, "random", seed=3)
    r2 = parameter_scores(tiny_mlp, None, "random", seed=3)
    assert all(torch.equal(r1[k], r2[k]) for k in r1)
    norm = unit_scores(tiny_mlp, None, "norm")
    torch.testing.assert_close(norm["1"], tiny_mlp[1].weight.detach().norm(dim=1))


def test_select_units_fraction_count_and_scope():
    scores = {"a": torch.tensor([5.0, 1.0, 3.0, 4.0]), "b": torch.tensor([0.5, 9.0])}
    m = select_units(scores, fraction=0.5)
    assert m["a"].tolist() == [True, False, False, True] and m["b"].tolist() == [False, True]
    g = select_units(scores, count=2, scope="global")
    assert g["a"].tolist() == [True, False, True, True] and g["b"].tolist() == [False, True]
    again = select_units(scores, fraction=0.5, current=m)  # pruned stay pruned
    assert again["a"].tolist() == [True, False, False, False] and again["b"].sum() == 1


def test_bad_input_errors(tiny_mlp):
    x, y = _data((6,))
    with pytest.raises(UnknownNameError, match="valid unit scores"):
        unit_scores(tiny_mlp, (x, y), "bogus")
    with pytest.raises(UnknownNameError, match="magnitude"):
        parameter_scores(tiny_mlp, (x, y), "bogus")
    with pytest.raises(ConfigError, match="needs data"):
        parameter_scores(tiny_mlp, None, "taylor1")
    with pytest.raises(ConfigError, match=r"fraction must be in \[0, 1\)"):
        select_units({"a": torch.ones(3)}, fraction=1.0)
    with pytest.raises(ConfigError, match=r"count must be in \[0, 2\]"):
        select_units({"a": torch.ones(3), "b": torch.ones(1)}, count=3)
    with pytest.raises(ConfigError, match="every unit of layer 'b'"):
        select_units({"a": torch.ones(3) * 5, "b": torch.ones(1)}, count=1, scope="global")
    big = nn.Sequential(nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 3))
    with pytest.raises(ConfigError, match="max_oracle_weights"):
        parameter_scores(big, (torch.randn(4, 200), torch.zeros(4, dtype=torch.long)), "oracle")
