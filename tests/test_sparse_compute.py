"""CSR execution of masked Linear layers equals the dense masked computation (outputs and
gradients, max abs difference <= 1e-5) and stays in sync with the dense parameters."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prunelab.masks import apply_masks
from prunelab.models import build_model
from prunelab.sparse_compute import (
    SparseLinear,
    dense_compute,
    optimize_sparse_inference,
    refresh_sparse_layers,
    sparsify_linear_layers,
)

TOL = 1e-5


def _masked_layer(n_in, n_out, sparsity, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(n_in, n_out, bias=bias)
    mask = torch.rand(n_out, n_in, generator=g) >= sparsity
    mask[0] = False  # an empty row
    with torch.no_grad():
        layer.weight.mul_(mask)
    return layer, mask


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("bias", [True, False])
def test_csr_forward_and_backward_equal_dense_masked(sparsity, bias):
    layer, mask = _masked_layer(37, 23, sparsity, bias)
    sparse = SparseLinear.from_linear(layer, mask)
    assert sparse.weight is layer.weight  # shared parameter
    x = torch.randn(3, 5, 37, requires_grad=True)  # extra batch dimensions
    x2 = x.detach().clone().requires_grad_(True)
    with torch.no_grad():
        assert (sparse(x) - layer(x)).abs().max() <= TOL
    gy = torch.randn(3, 5, 23)
    ref = torch.autograd.grad(layer(x), [x, layer.weight] + ([layer.bias] if bias else []), gy)
    got = torch.autograd.grad(sparse(x2), [x2, sparse.weight] + ([sparse.bias] if bias else []),
                              gy)
    assert (got[0] - ref[0]).abs().max() <= TOL
    assert (got[1] - ref[1] * mask).abs().max() <= TOL  # the masked weight gradient
    assert torch.all(got[1][~mask] == 0)
    if bias:
        assert (got[2] - ref[2]).abs().max() <= TOL


def test_values_follow_the_dense_parameter_and_masks_refresh():
    layer, mask = _masked_layer(20, 10, 0.7)
    model = nn.Sequential(layer)
    sparsify_linear_layers(model, {"0.weight": mask}, torch.randn(4, 20), training=True,
                           choose="csr")
    sparse = model[0]
    assert isinstance(sparse, SparseLinear)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.randn(8, 20)
    model(x).pow(2).sum().backward()
    opt.step()  # the optimizer updates the dense parameter
    expected = F.linear(x, layer.weight * mask, layer.bias)
    with torch.no_grad():
        assert (model(x) - expected).abs().max() <= TOL
    new_mask = ~mask
    with torch.no_grad():
        sparse.weight.mul_(new_mask)
    refresh_sparse_layers(model, {"0.weight": new_mask})
    with torch.no_grad():
        assert (model(x) - F.linear(x, sparse.weight, sparse.bias)).abs().max() <= TOL
    with dense_compute(model), torch.enable_grad():
        g = torch.autograd.grad(model(x).sum(), sparse.weight)[0]
    assert g[mask].abs().sum() > 0  # dense gradient reaches masked entries


def test_sparse_inference_of_lenet_300_100_equals_the_masked_dense_model():
    torch.manual_seed(0)
    model = build_model("lenet-300-100", (1, 28, 28), 10)
    masks = {f"{i}.weight": torch.rand_like(model[i].weight) > 0.98 for i in (1, 3, 5)}
    apply_masks(model, masks)
    x = torch.randn(256, 1, 28, 28)
    for choose in ("csr", "measure"):
        fast, choices = optimize_sparse_inference(model, x, choose=choose, repeats=1)
        assert set(choices) == {"1", "3", "5"}
        with torch.no_grad():
            assert (fast(x) - model(x)).abs().max() <= TOL
    assert all("us" in c and c["choice"] in ("csr", "dense") for c in choices.values())
    assert not any(isinstance(m, SparseLinear) for m in model.modules())  # model untouched
    trained = build_model("lenet-300-100", (1, 28, 28), 10)
    trained.load_state_dict(model.state_dict())
    sparsify_linear_layers(trained, masks, x, training=True, choose="csr")
    y = torch.randint(0, 10, (256,))
    ref = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    got = torch.autograd.grad(F.cross_entropy(trained(x), y), list(trained.parameters()))
    for (name, _), r, g in zip(model.named_parameters(), ref, got):
        r = r * masks[name] if name in masks else r
        assert (r - g).abs().max() <= TOL, name


def test_mixed_chain_keeps_the_feature_major_layout_and_equals_dense():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 20), nn.ReLU(),
                          nn.Linear(20, 5))
    masks = {f"{i}.weight": torch.rand_like(model[i].weight) > 0.8 for i in (0, 2, 4)}
    apply_masks(model, masks)
    mixed = copy.deepcopy(model)
    sparsify_linear_layers(mixed, masks, torch.randn(8, 30), training=True, choose="csr")
    mixed[2].mode = "dense"  # csr -> dense (fed feature-major) -> csr
    x = torch.randn(16, 30, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    with torch.no_grad():
        h = mixed[1](mixed[0](x2))
        assert h.t().is_contiguous() and mixed[2](h).t().is_contiguous()
    y, y2 = model(x), mixed(x2)
    assert (y - y2).abs().max() <= TOL
    gy = torch.randn_like(y)
    ref = torch.autograd.grad(y, [x, *model.parameters()], gy)
    got = torch.autograd.grad(y2, [x2, *mixed.parameters()], gy)
    names = ["x"] + [n for n, _ in model.named_parameters()]
    for name, r, g in zip(names, ref, got):
        if name in masks and name != "2.weight":  # CSR layers return the masked gradient
            r = r * masks[name]
        assert (r - g).abs().max() <= TOL, name
