"""CPU inference fast path: the faster layer implementations give the same outputs as torch's,
fall back while autograd records, and leave the original model untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prunelab.inference import BackendConv2d, StridedMaxPool2d, optimize_for_inference
from prunelab.masks import apply_masks, unit_masks_to_weight_masks
from prunelab.models import build_model
from prunelab.shrink import shrink, unit_layers


def _strided(pool: nn.MaxPool2d) -> StridedMaxPool2d:
    return StridedMaxPool2d.from_pool(pool)


@pytest.mark.parametrize("kernel,size", [(2, 24), (2, 7), (3, 12), ((2, 3), 9)])
def test_strided_pool_equals_max_pool2d(kernel, size):
    x = torch.randn(3, 4, size, size + 1)
    pool = _strided(nn.MaxPool2d(kernel))
    assert pool.fast_path_applies()
    with torch.no_grad():
        assert torch.equal(pool(x), F.max_pool2d(x, kernel))
        relu = F.relu(x)  # ties at zero, as after a ReLU
        assert torch.equal(pool(relu), F.max_pool2d(relu, kernel))


def test_strided_pool_falls_back_for_overlap_padding_and_autograd():
    x = torch.randn(2, 3, 10, 10, requires_grad=True)
    for pool in (nn.MaxPool2d(3, stride=2), nn.MaxPool2d(2, padding=1),
                 nn.MaxPool2d(2, ceil_mode=True)):
        fast = _strided(pool)
        assert not fast.fast_path_applies()
        with torch.no_grad():
            assert torch.equal(fast(x), pool(x))
    fast, pool = _strided(nn.MaxPool2d(2)), nn.MaxPool2d(2)
    g_fast, = torch.autograd.grad(fast(x).sum(), x)
    g_ref, = torch.autograd.grad(pool(x).sum(), x)
    assert torch.equal(g_fast, g_ref)  # training path is max_pool2d itself


def test_strided_pool_forward_mode_under_no_grad_matches():
    x, t = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        out, tangent = torch.func.jvp(_strided(nn.MaxPool2d(2)), (x,), (t,))
        ref_out, ref_tangent = torch.func.jvp(nn.MaxPool2d(2), (x,), (t,))
    assert torch.equal(out, ref_out)
    assert torch.allclose(tangent, ref_tangent)


@pytest.mark.parametrize("use_onednn", [True, False])
def test_backend_conv_matches_and_restores_flag(use_onednn):
    conv = nn.Conv2d(3, 5, 3)
    x = torch.randn(4, 3, 9, 9)
    fast = BackendConv2d.from_conv(conv, use_onednn)
    assert fast.weight is conv.weight
    before = torch.backends.mkldnn.enabled
    with torch.no_grad():
        assert torch.allclose(fast(x), conv(x), atol=1e-6)
    assert torch.backends.mkldnn.enabled == before
    with pytest.raises(RuntimeError):
        fast(torch.randn(4, 2, 9, 9))  # wrong channels: the flag is restored on errors too
    assert torch.backends.mkldnn.enabled == before


def _masked_and_shrunk(name: str, keep: float):
    torch.manual_seed(0)
    model = build_model(name, (1, 28, 28), 10).eval()
    masks = {}
    for L in unit_layers(model):
        m = torch.zeros(L.units, dtype=torch.bool)
        m[: max(1, round(keep * L.units))] = True
        masks[L.name] = m
    apply_masks(model, unit_masks_to_weight_masks(model, masks))
    return model, shrink(model, masks).eval()


@pytest.mark.parametrize("name", ["conv-small", "lenet5", "lenet-300-100"])
def test_optimize_for_inference_keeps_outputs_and_original(name):
    masked, small = _masked_and_shrunk(name, 0.5)
    x = torch.randn(16, 1, 28, 28)
    for model in (masked, small):
        types_before = [type(m) for m in model.modules()]
        fast, choices = optimize_for_inference(model, x, repeats=1)
        assert [type(m) for m in model.modules()] == types_before
        with torch.no_grad():
            assert torch.allclose(fast(x), model(x), atol=1e-5)
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        pools = [n for n, m in model.named_modules() if isinstance(m, nn.MaxPool2d)]
        assert set(choices) == set(convs) | set(pools)
        for n in convs:
            assert isinstance(fast.get_submodule(n), BackendConv2d)
        for n in pools:
            kind = StridedMaxPool2d if choices[n] == "strided maximum" else nn.MaxPool2d
            assert isinstance(fast.get_submodule(n), kind)
        assert not fast.training


def test_optimized_model_still_trains_like_the_original():
    masked, _ = _masked_and_shrunk("conv-small", 1.0)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    fast, _ = optimize_for_inference(masked, x, repeats=1)
    grads = []
    for model in (masked, fast):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)
