"""`converge`: the stable descent step from the measured top eigenvalue, the L-BFGS and Newton
finishes reaching a true minimum, an honest verdict when they do not, masks, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prunelab.errors import ConfigError, MaskError
from prunelab.landscape.minimize import converge


def _logistic_problem(seed: int = 0):
    """Multinomial logistic regression on overlapping classes: strictly convex with a
    finite minimiser (the classes are not separable)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(120, 4, generator=gen, dtype=torch.float64)
    y = (x[:, 0] + 0.8 * torch.randn(120, generator=gen, dtype=torch.float64) > 0).long()
    y = y + (x[:, 1] > 0.7).long()
    torch.manual_seed(seed)
    return nn.Linear(4, 3).double(), x, y


def _grad_norm(model, x, y) -> float:
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    return float(g.norm())


def test_descent_step_is_one_over_the_measured_top_eigenvalue():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(50, 6, generator=gen, dtype=torch.float64) * torch.tensor(
        [4.0, 1, 1, 1, 1, 0.2], dtype=torch.float64)
    y = torch.randn(50, generator=gen, dtype=torch.float64)
    model = nn.Linear(6, 1, bias=False).double()

    def half_mse(out, target):  # Hessian = X^T X / n exactly
        return 0.5 * ((out.squeeze(-1) - target) ** 2).mean()

    lam_max = float(torch.linalg.eigvalsh(x.T @ x / 50).max())
    res = converge(model, x, y, half_mse, tol=1e-9, gd_steps=30, finish="none", lr_max=10.0)
    assert res.sharpness[0] == pytest.approx(lam_max, rel=1e-3)
    assert res.lr == pytest.approx(1 / lam_max, rel=1e-3)
    assert res.gd_loss_rises == 0  # below 2 / lambda_max a quadratic descends monotonically
    losses = [h["loss"] for h in res.history]
    assert all(b < a for a, b in zip(losses, losses[1:]))
    # the cap: never above lr_max, however flat the start
    capped = converge(nn.Linear(6, 1, bias=False).double(), x, y, half_mse, tol=1e-9,
                      gd_steps=5, finish="none", lr_max=1e-3)
    assert capped.lr == 1e-3
    # a fixed step above 2 / lambda_max diverges: what the measured step avoids
    bad = converge(nn.Linear(6, 1, bias=False).double(), x, y, half_mse, tol=1e-9,
                   gd_steps=30, finish="none", lr=2.5 / lam_max)
    assert bad.loss > res.history[0]["loss"] and bad.gd_loss_rises > 20


@pytest.mark.parametrize("finish", ["lbfgs", "newton"])
def test_finishes_reach_the_minimum_and_report_it(finish):
    model, x, y = _logistic_problem()
    res = converge(model, x, y, tol=1e-8, gd_steps=100, finish=finish,
                   finish_iterations=500)
    assert res.converged and res.stop_reason == "tolerance reached"
    assert res.grad_norm <= 1e-8
    # the reported numbers are the model's own at the end, measured independently
    assert _grad_norm(model, x, y) == pytest.approx(res.grad_norm, rel=1e-6, abs=1e-13)
    with torch.no_grad():
        assert float(F.cross_entropy(model(x), y)) == pytest.approx(res.loss, rel=1e-12)
    assert res.gd_steps == 100 and res.finish_iterations > 0
    assert res.history[-1]["phase"] == finish and res.history[0]["phase"] == "start"
    assert all(p.grad is None for p in model.parameters())
    # both finishes find the same (unique) minimiser
    other, _, _ = _logistic_problem()
    converge(other, x, y, tol=1e-8, gd_steps=100,
             finish="newton" if finish == "lbfgs" else "lbfgs", finish_iterations=500)
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.allclose(a, b, atol=1e-7)


def test_not_converged_is_reported_as_such():
    model, x, y = _logistic_problem()
    res = converge(model, x, y, tol=1e-10, gd_steps=5, finish="lbfgs", finish_iterations=2,
                   lbfgs_block=1)
    assert not res.converged and res.grad_norm > 1e-10
    assert res.stop_reason == "iteration budget spent"
    assert res.steps == 5 + res.finish_iterations
    assert _grad_norm(model, x, y) == pytest.approx(res.grad_norm, rel=1e-6)
    # a kink at the minimum (least absolute deviations): no gradient vanishes, so neither
    # finish may claim convergence
    gen = torch.Generator().manual_seed(5)
    xs = torch.randn(31, 2, generator=gen, dtype=torch.float64)
    ys = xs @ torch.tensor([1.0, -2.0], dtype=torch.float64) + torch.randn(
        31, generator=gen, dtype=torch.float64)

    def l1(out, target):
        return (out.squeeze(-1) - target).abs().mean()

    for finish in ("newton", "lbfgs"):
        torch.manual_seed(0)
        res = converge(nn.Linear(2, 1).double(), xs, ys, l1, tol=1e-6, gd_steps=200,
                       finish=finish, finish_iterations=100)
        assert not res.converged and res.grad_norm > 1e-3, finish
        assert res.stop_reason != "tolerance reached"


def test_masked_entries_stay_zero():
    model, x, y = _logistic_problem(2)
    mask = torch.rand(3, 4, generator=torch.Generator().manual_seed(0)) > 0.4
    for finish in ("lbfgs", "newton"):
        res = converge(model, x, y, tol=1e-8, gd_steps=50, finish=finish,
                       finish_iterations=300, masks={"weight": mask})
        assert res.converged
        assert bool((model.weight[~mask] == 0).all())
        # the gradient reported is the free coordinates' one
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        free = torch.cat([model.weight.grad[mask], model.bias.grad])
        assert float(free.norm()) == pytest.approx(res.grad_norm, rel=1e-5, abs=1e-12)
        assert float(model.weight.grad[~mask].abs().max()) > 1e-6  # fixed, not optimal
        model.zero_grad(set_to_none=True)


def test_bad_input():
    model, x, y = _logistic_problem()
    with pytest.raises(ConfigError, match="finish must be one of lbfgs, newton, none"):
        converge(model, x, y, finish="adam")
    with pytest.raises(ConfigError, match="tol must be in"):
        converge(model, x, y, tol=0)
    with pytest.raises(ConfigError, match="lr_fraction must be in"):
        converge(model, x, y, lr_fraction=2.0)
    with pytest.raises(MaskError, match="mask for 'nope' matches no parameter"):
        converge(model, x, y, masks={"nope": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="same positive number of samples"):
        converge(model, x, y[:5])
    assert np.isfinite(converge(model, x, y, gd_steps=1, finish="none").loss)
