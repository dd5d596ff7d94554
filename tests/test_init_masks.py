"""Pruning at initialisation (snip, grasp, synflow, random) and the ERK/ER/uniform layer
budgets: exact densities, scores against hand-computed cases, BatchNorm handling, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import tiny_images
from prunelab.cli import main
from prunelab.config import TrainConfig
from prunelab.data import load_dataset
from prunelab.errors import ConfigError
from prunelab.init_scores import grasp_scores, snip_scores, synflow_masks, synflow_scores
from prunelab.masks import prunable_parameters
from prunelab.methods import build_method
from prunelab.models import build_model
from prunelab.selection import layer_densities, layer_keep_counts, select_by_counts, select_masks
from prunelab.train import Trainer

INIT_METHODS = {"snip": {}, "grasp": {}, "synflow": {"iterations": 5}, "random": {}}


# ----------------------------------------------------------------------------- budgets


def test_erk_budget_matches_a_hand_solved_case_and_makes_layers_dense_when_needed():
    shapes = {"a": (10, 4), "b": (2, 10)}  # raw densities 14/40 = 0.35 and 12/20 = 0.6
    # density 0.5: 30 = eps (0.35 * 40 + 0.6 * 20) -> eps = 30 / 26, no layer over 1
    d = layer_densities(shapes, 0.5, "erk")
    assert d["a"] == pytest.approx(0.35 * 30 / 26) and d["b"] == pytest.approx(0.6 * 30 / 26)
    assert layer_keep_counts(shapes, 0.5, "erk") == {"a": 16, "b": 14}
    # density 0.8: eps = 48 / 26 puts b over 1 -> b dense, a gets the remaining 28 of 40
    d = layer_densities(shapes, 0.8, "erk")
    assert d == {"a": pytest.approx(0.7), "b": 1.0}
    assert layer_keep_counts(shapes, 0.8, "erk") == {"a": 28, "b": 20}


def test_er_ignores_kernel_dimensions_and_erk_counts_them():
    shapes = {"conv": (6, 1, 5, 5), "fc": (10, 96)}
    erk = layer_densities(shapes, 0.05, "erk")
    er = layer_densities(shapes, 0.05, "er")
    # ratio of densities = ratio of raw scales
    assert erk["conv"] / erk["fc"] == pytest.approx((6 + 1 + 5 + 5) / 150 / (106 / 960))
    assert er["conv"] / er["fc"] == pytest.approx((6 + 1) / 6 / (106 / 960))


@pytest.mark.parametrize("model_name,options,shape", [
    ("lenet-300-100", {}, (1, 28, 28)), ("lenet5", {}, (1, 28, 28)),
    ("resnet20", {"width": 0.25}, (3, 32, 32)),
])
@pytest.mark.parametrize("budget", ["uniform", "erk", "er"])
@pytest.mark.parametrize("density", [0.02, 0.1, 0.5])
def test_budgets_sum_exactly_to_the_requested_density(model_name, options, shape, budget,
                                                      density):
    model = build_model(model_name, shape, 10, **options)
    shapes = {n: tuple(p.shape) for n, p in prunable_parameters(model).items()}
    total = sum(math.prod(s) for s in shapes.values())
    counts = layer_keep_counts(shapes, density, budget)
    assert sum(counts.values()) == round(density * total)
    dens = layer_densities(shapes, density, budget)
    assert sum(dens[n] * math.prod(s) for n, s in shapes.items()) == pytest.approx(
        density * total)
    for n, s in shapes.items():
        assert 1 <= counts[n] <= math.prod(s)
        assert abs(counts[n] - dens[n] * math.prod(s)) < 1.0 + 1e-9  # rounding only
        assert dens[n] <= 1.0
    if budget != "uniform":  # non-dense layers are proportional to their raw scale
        raw = {n: (sum(s) if budget == "erk" else s[0] + s[1])
               / (math.prod(s) if budget == "erk" else s[0] * s[1]) for n, s in shapes.items()}
        free = [n for n in shapes if dens[n] < 1.0]
        ratios = [dens[n] / raw[n] for n in free]
        assert max(ratios) == pytest.approx(min(ratios))
        dense = [n for n in shapes if dens[n] == 1.0]
        assert all(raw[d] >= max(raw[n] for n in free) for d in dense)  # largest raw first


def test_unknown_budget_and_impossible_density_are_refused():
    with pytest.raises(ConfigError, match="unknown budget 'erdos'; valid budgets: uniform, erk"):
        layer_keep_counts({"a": (4, 4)}, 0.5, "erdos")
    with pytest.raises(ConfigError, match="leaves no weight in layer 'b'"):
        layer_keep_counts({"a": (100, 100), "b": (2, 2)}, 0.01, "uniform")


def test_selection_under_ties_keeps_exactly_k():
    scores = {"a": torch.zeros(10, 10), "b": torch.ones(5, 4)}
    for k in (1, 37, 119):
        m = select_masks(scores, keep=k, scope="global", min_keep_per_layer=0)
        assert sum(int(v.sum()) for v in m.values()) == k
    m = select_by_counts({"a": torch.zeros(10, 10)}, {"a": 33})
    assert int(m["a"].sum()) == 33
    cur = {"a": torch.arange(100).reshape(10, 10) < 50}
    m = select_by_counts({"a": torch.zeros(10, 10)}, {"a": 20}, current=cur)
    assert int(m["a"].sum()) == 20 and not (m["a"] & ~cur["a"]).any()  # pruned stay pruned


# ----------------------------------------------------------------------------- scores


def _squared(out, y):
    return 0.5 * ((out - y) ** 2).sum()


def test_snip_and_grasp_scores_on_a_linear_model_match_hand_computation():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2, bias=False)
    x, y = torch.randn(1, 3), torch.randn(1, 2)
    w = layer.weight.detach()
    g = (x @ w.t() - y).t() @ x  # dL/dW of 0.5 |Wx - y|^2
    snip = snip_scores(layer, (x, y), ["weight"], loss_fn=_squared)
    assert torch.allclose(snip["weight"], (g * w).abs(), atol=1e-6)
    # the Hessian of the quadratic acts as V -> V x x^T, so H g = g x^T x
    grasp = grasp_scores(layer, (x, y), ["weight"], loss_fn=_squared, temperature=1.0)
    assert torch.allclose(grasp["weight"], w * (g @ x.t() @ x), atol=1e-6)
    assert layer.weight.grad is None  # the model is untouched


def test_synflow_scores_of_a_two_layer_net_are_the_path_products():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    w1, w2 = model[0].weight.detach().abs(), model[2].weight.detach().abs()
    s = synflow_scores(model, (4,), ["0.weight", "2.weight"])
    # R = 1^T |W2| |W1| 1 (biases off): dR/dW1[i, j] = sum_k |W2|[k, i]
    expected1 = w1 * w2.sum(0).unsqueeze(1)
    expected2 = w2 * w1.sum(1).unsqueeze(0)
    assert torch.allclose(s["0.weight"].float(), expected1, atol=1e-6)
    assert torch.allclose(s["2.weight"].float(), expected2, atol=1e-6)
    masks = {"0.weight": torch.ones(3, 4, dtype=torch.bool),
             "2.weight": torch.ones(2, 3, dtype=torch.bool)}
    masks["2.weight"][:, 0] = False  # unit 0 no longer reaches the output
    s = synflow_scores(model, (4,), ["0.weight", "2.weight"], masks=masks)
    assert torch.all(s["0.weight"][0] == 0) and torch.all(s["2.weight"][:, 0] == 0)


def test_iterative_synflow_keeps_exact_counts_and_never_revives():
    torch.manual_seed(0)
    model = build_model("lenet5", (1, 28, 28), 10)
    names = list(prunable_parameters(model))
    total = sum(p.numel() for p in prunable_parameters(model).values())
    masks = synflow_masks(model, (1, 28, 28), names, 0.98, iterations=10)
    assert sum(int(m.sum()) for m in masks.values()) == round(0.02 * total)
    per_layer = synflow_masks(model, (1, 28, 28), names, 0.9, iterations=4, budget="erk")
    counts = layer_keep_counts({n: tuple(m.shape) for n, m in per_layer.items()}, 0.1, "erk")
    assert {n: int(m.sum()) for n, m in per_layer.items()} == counts


def test_synflow_batchnorm_handling_and_refusal():
    model = build_model("resnet20", (3, 28, 28), 4, width=0.125)
    names = list(prunable_parameters(model))
    assert model.training
    with pytest.raises(ConfigError, match="BatchNorm in training mode"):
        synflow_scores(model, (3, 28, 28), names, bn="none")
    with pytest.raises(ConfigError, match="bn must be one of"):
        synflow_scores(model, (3, 28, 28), names, bn="batch")
    for bn in ("identity", "eval"):
        s = synflow_scores(model, (3, 28, 28), names, bn=bn)
        assert all(torch.isfinite(v).all() and (v > 0).any() for v in s.values())
    model.eval()  # BatchNorm with running statistics is accepted as it is
    s = synflow_scores(model, (3, 28, 28), names, bn="none")
    assert all((v > 0).any() for v in s.values())
    with pytest.raises(ConfigError, match="training mode"):
        build_method("synflow", bn="none").attach(_ctx(model.train(), tiny_images()))


def _ctx(model, data):
    from prunelab.methods import TrainContext

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return TrainContext(model, opt, 4, 8, 2, torch.device("cpu"), data)


# ----------------------------------------------------------------------------- methods


@pytest.mark.parametrize("name", sorted(INIT_METHODS))
@pytest.mark.parametrize("selection", [{"scope": "global", "budget": None},
                                       {"scope": "layer", "budget": None},
                                       {"budget": "erk"}])
def test_each_method_keeps_exactly_the_requested_density(name, selection):
    data = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    model = build_model("lenet-300-100", data.input_shape, 10)
    method = build_method(name, sparsity=0.9, **INIT_METHODS[name], **selection)
    method.attach(_ctx(model, data))
    masks = method.masks
    shapes = {n: tuple(m.shape) for n, m in masks.items()}
    kept = {n: int(m.sum()) for n, m in masks.items()}
    total = sum(math.prod(s) for s in shapes.values())
    if selection.get("budget"):
        assert kept == layer_keep_counts(shapes, 0.1, "erk")
    elif selection["scope"] == "layer":
        assert kept == {n: round(0.1 * math.prod(s)) for n, s in shapes.items()}
    else:
        assert sum(kept.values()) == round(0.1 * total)
    params = dict(model.named_parameters())
    assert all(torch.all(params[n].detach()[~m] == 0) for n, m in masks.items())


def test_keep_first_last_leaves_the_outer_layers_dense_and_seed_fixes_the_mask():
    data = load_dataset("digits", seed=0)
    masks = []
    for seed in (3, 3, 4):
        torch.manual_seed(0)
        model = build_model("lenet-300-100", data.input_shape, 10)
        method = build_method("random", sparsity=0.8, keep_first_last=True, seed=seed)
        method.attach(_ctx(model, data))
        masks.append(method.masks)
    assert set(masks[0]) == {"3.weight"}
    assert torch.equal(masks[0]["3.weight"], masks[1]["3.weight"])
    assert not torch.equal(masks[0]["3.weight"], masks[2]["3.weight"])


@pytest.mark.parametrize("name", sorted(INIT_METHODS))
def test_each_method_trains_an_mlp_on_digits_and_a_resnet_with_the_mask_fixed(name, tmp_path):
    data = load_dataset("digits", seed=0, flatten=True)
    options = dict(sparsity=0.9, seed=0, **INIT_METHODS[name])
    torch.manual_seed(0)
    probe = build_model("mlp", data.input_shape, 10, widths=[300, 100])
    at_init = build_method(name, **options)
    at_init.attach(_ctx(probe, data))  # the mask the method picks before training
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, 10, widths=[300, 100])
    method = build_method(name, **options)
    result = Trainer(model, data, TrainConfig(epochs=2, batch_size=64, lr=0.1,
                                              eval_train=False), method,
                     out_dir=tmp_path / "mlp", progress=False).fit()
    assert result.final["test_accuracy"] > 0.3  # it learns (chance is 0.1)
    assert all(torch.equal(result.masks[n], m) for n, m in at_init.masks.items())  # fixed
    params = dict(model.named_parameters())
    assert all(torch.all(params[n].detach()[~m] == 0) for n, m in result.masks.items())
    assert (tmp_path / "mlp" / "init_mask.json").is_file()
    images = tiny_images()
    torch.manual_seed(0)
    net = build_model("resnet20", images.input_shape, images.num_classes, width=0.125)
    extra = {"batch_size": 16} if name in ("snip", "grasp") else {}
    method = build_method(name, sparsity=0.8, **INIT_METHODS[name], **extra)
    res = Trainer(net, images, TrainConfig(steps=4, batch_size=16, lr=0.05, eval_train=False),
                  method, progress=False).fit()
    params = dict(net.named_parameters())
    assert all(torch.all(params[n].detach()[~m] == 0) for n, m in res.masks.items())
    kept = sum(int(m.sum()) for m in res.masks.values())
    total = sum(m.numel() for m in res.masks.values())
    assert kept == round(0.2 * total)


def test_bad_budget_is_one_line_exit_2(capsys):
    assert main(["train", "--model", "mlp", "--dataset", "xor", "--method", "random",
                 "-o", "budget=bogus", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown budget 'bogus'" in err
    assert main(["train", "--model", "mlp", "--dataset", "xor", "--method", "synflow",
                 "-o", "bn=batch", "--quiet"]) == 2
    assert "bn must be one of" in capsys.readouterr().err
