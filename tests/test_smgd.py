"""Stochastic multi-gradient descent: the min-norm coefficient, the update rules, logging."""

from __future__ import annotations

import pytest
import torch

from prunelab.data import Dataset
from prunelab.errors import ConfigError
from prunelab.multiobjective.smgd import (
    SMGDConfig,
    SMGDStepper,
    min_norm_coefficient,
    train_smgd,
)


def _brute_force(g1: torch.Tensor, g2: torch.Tensor, n: int = 20001) -> tuple[float, float]:
    cs = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    norms = ((cs[:, None] * g1[None] + (1 - cs[:, None]) * g2[None]) ** 2).sum(dim=1)
    i = int(norms.argmin())
    return float(cs[i]), float(norms[i])


def _norm2(c: float, g1: torch.Tensor, g2: torch.Tensor) -> float:
    return float(((c * g1 + (1 - c) * g2) ** 2).sum())


def test_min_norm_matches_brute_force_on_random_pairs():
    gen = torch.Generator().manual_seed(0)
    interior = clipped = 0
    for trial in range(200):
        dim = 2 + trial % 7
        g1 = torch.randn(dim, generator=gen, dtype=torch.float64)
        g2 = torch.randn(dim, generator=gen, dtype=torch.float64) * (0.1 + 3 * (trial % 3))
        c = min_norm_coefficient(g1, g2)
        c_bf, n_bf = _brute_force(g1, g2)
        assert 0.0 <= c <= 1.0
        # Never worse than the grid optimum, and the same minimiser (strictly convex problem).
        assert _norm2(c, g1, g2) <= n_bf + 1e-12
        assert abs(c - c_bf) <= 1e-4
        if 0.0 < c < 1.0:
            interior += 1
        else:
            clipped += 1
    assert interior > 20 and clipped > 20  # both regimes were exercised


@pytest.mark.parametrize(
    ("g1", "g2", "expected"),
    [
        ([2.0, 0.0], [1.0, 0.0], 0.0),  # g2 is the min-norm point: clipped at 0
        ([1.0, 0.0], [2.0, 0.0], 1.0),  # g1 is the min-norm point: clipped at 1
        ([1.0, 0.0], [0.0, 1.0], 0.5),  # orthogonal, equal norms
        ([1.0, 0.0], [-1.0, 0.0], 0.5),  # opposite: the zero vector is in the hull
        ([3.0, 0.0], [0.0, 1.0], 0.1),  # 1 / (9 + 1)
    ],
)
def test_min_norm_known_cases(g1, g2, expected):
    assert min_norm_coefficient(torch.tensor(g1), torch.tensor(g2)) == pytest.approx(expected)


def test_min_norm_accepts_lists_of_tensors_and_equal_gradients():
    gen = torch.Generator().manual_seed(1)
    a = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    b = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    flat = min_norm_coefficient(torch.cat([t.flatten() for t in a]),
                                torch.cat([t.flatten() for t in b]))
    assert min_norm_coefficient(a, b) == pytest.approx(flat, abs=1e-6)
    assert min_norm_coefficient(a, a) == 0.5


def _tiny():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(2 * 4 * 4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3),
    )


def _data(n=48):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 6, 6, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 1).long()
    return Dataset("tiny", x, y, x[:16], y[:16], 3)


def test_sgd_step_follows_the_min_norm_direction_then_prunes():
    model = _tiny()
    cfg = SMGDConfig(optimizer="sgd", lr=0.05, momentum=0.9, tau=1e-3, conv_l2=1e-3)
    stepper = SMGDStepper(model, cfg)
    data = _data()
    xb, yb = data.x_train[:8], data.y_train[:8]
    before = [p.detach().clone() for p in stepper.params]
    _, g1, g2 = stepper.gradients(xb, yb)
    c = min_norm_coefficient(g1, g2)
    _, c1 = stepper.step(xb, yb)
    assert c1 == pytest.approx(c, abs=1e-6)
    l1_names = set(stepper.l1)
    for name, p0, p, a, b in zip(stepper.names, before, stepper.params, g1, g2):
        expected = p0 - 0.05 * (c * a + (1 - c) * b)  # momentum buffer starts at d
        if name in l1_names:
            expected = torch.where(expected.abs() <= 1e-3, torch.zeros_like(expected), expected)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)
        if name not in l1_names:
            assert torch.all(b == 0)  # the l1 gradient lives only on the l1 set


def test_adam_default_combines_raw_gradients_then_takes_an_adam_step():
    """The authors' rule: min-norm combination of the raw stochastic gradients, then the
    optimizer's step on that direction (one set of Adam moments, of d)."""
    model = _tiny()
    cfg = SMGDConfig(optimizer="adam", lr=1e-3, tau=0.0, conv_l2=0.0)
    stepper = SMGDStepper(model, cfg)
    data = _data()
    xb, yb = data.x_train[:8], data.y_train[:8]
    before = [p.detach().clone() for p in stepper.params]
    _, g1, g2 = stepper.gradients(xb, yb)
    _, c1 = stepper.step(xb, yb)
    assert c1 == pytest.approx(min_norm_coefficient(g1, g2), abs=1e-6)
    d = [c1 * a + (1 - c1) * b for a, b in zip(g1, g2)]
    for p0, p, di in zip(before, stepper.params, d):  # first step: m = d, v = d^2
        torch.testing.assert_close(p.detach(), p0 - 1e-3 * di / (di.abs() + cfg.eps),
                                   rtol=1e-5, atol=1e-7)
    assert set(stepper.state) == {"m", "v"}
    for m, di in zip(stepper.state["m"], d):
        torch.testing.assert_close(m, 0.1 * di)


def test_combining_gradients_or_normalised_directions_differ_on_a_constructed_case():
    """Where the CE gradient is small next to the l1 gradient (sign(w) on every dense weight),
    the min-norm combination of the raw gradients leans on the CE gradient (c1 near 1) while
    that of the Adam-normalised directions (each entry ~ +-1 at the first step) does not:
    the two rules step in different directions."""
    model = _tiny()
    data = _data()
    xb, yb = data.x_train[:8], data.y_train[:8]
    steps = {}
    for combination in ("gradients", "directions"):
        m = _tiny()
        m.load_state_dict(model.state_dict())
        stepper = SMGDStepper(m, SMGDConfig(optimizer="adam", lr=1e-3, tau=0.0, conv_l2=0.0,
                                            adam_combination=combination))
        before = torch.cat([p.detach().flatten() for p in stepper.params])
        _, c1 = stepper.step(xb, yb)
        after = torch.cat([p.detach().flatten() for p in stepper.params])
        steps[combination] = (c1, after - before)
    (c_g, d_g), (c_d, d_d) = steps["gradients"], steps["directions"]
    assert c_g > 0.9 and c_d < 0.7, (c_g, c_d)
    cos = float(d_g @ d_d / (d_g.norm() * d_d.norm()))
    assert cos < 0.9, cos


def test_adam_directions_variant_keeps_separate_moments_and_combines_directions():
    model = _tiny()
    cfg = SMGDConfig(optimizer="adam", lr=1e-3, tau=0.0, conv_l2=0.0,
                     adam_combination="directions")
    stepper = SMGDStepper(model, cfg)
    data = _data()
    xb, yb = data.x_train[:8], data.y_train[:8]
    before = [p.detach().clone() for p in stepper.params]
    _, g1, g2 = stepper.gradients(xb, yb)
    _, c1 = stepper.step(xb, yb)
    # First Adam step: bias-corrected m = g, v = g^2, so the directions are g / (|g| + eps).
    u1 = [g / (g.abs() + cfg.eps) for g in g1]
    u2 = [g / (g.abs() + cfg.eps) for g in g2]
    assert c1 == pytest.approx(min_norm_coefficient(u1, u2), abs=1e-5)
    for p0, p, a, b in zip(before, stepper.params, u1, u2):
        torch.testing.assert_close(p.detach(), p0 - 1e-3 * (c1 * a + (1 - c1) * b),
                                   rtol=1e-5, atol=1e-7)
    assert set(stepper.state) == {"m1", "v1", "m2", "v2"}
    for a, b in zip(stepper.state["m1"], stepper.state["m2"]):
        assert a.shape == b.shape


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_train_smgd_logs_one_coefficient_per_step(optimizer):
    data = _data()
    model = _tiny()
    res = train_smgd(model, data, SMGDConfig(epochs=2, batch_size=10, optimizer=optimizer,
                                             lr=0.01))
    assert len(res.coefficients) == 2 * 5
    assert all(0.0 <= c <= 1.0 for c in res.coefficients)
    assert [m["epoch"] for m in res.metrics] == [1, 2]
    for name in ("3.weight", "5.weight"):  # no surviving weight at or below tau
        w = dict(model.named_parameters())[name].detach()
        assert not torch.any((w != 0) & (w.abs() <= 1e-3))


def test_train_smgd_is_seeded():
    a = train_smgd(_tiny(), _data(), SMGDConfig(epochs=1, batch_size=8))
    b = train_smgd(_tiny(), _data(), SMGDConfig(epochs=1, batch_size=8))
    assert a.coefficients == b.coefficients


@pytest.mark.parametrize(
    ("options", "needle"),
    [({"optimizer": "rmsprop"}, "optimizer"), ({"lr": 0.0}, "lr"), ({"tau": -1.0}, "tau"),
     ({"momentum": 1.0}, "momentum"), ({"l1_params": ["Conv3d"]}, "l1_params"),
     ({"adam_combination": "mean"}, "adam_combination"),
     ({"adam_combination": "directions"}, "adam_combination")],
)
def test_bad_smgd_options_are_one_line_errors(options, needle):
    with pytest.raises(ConfigError, match=needle) as exc:
        SMGDStepper(_tiny(), SMGDConfig(**options))
    assert "\n" not in str(exc.value)
