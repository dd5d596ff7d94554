"""CPU inference fast path: the faster layer implementations give the same outputs as torch's,
fall back while autograd records, and leave the original model untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prunelab.inference import (
    BackendConv2d,
    PackedConvPool2d,
    StridedMaxPool2d,
    optimize_for_inference,
)
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
        fast, choices = optimize_for_inference(model, x, repeats=1, fuse_conv_pool=False)
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


def _chain(conv, act, pool, x):
    y = conv(x)
    return pool(y if act is None else act(y))


@pytest.mark.parametrize("pool_kernel,packing", [
    (2, (1, 1)), (2, (1, 2)), (2, (2, 1)), (2, (2, 2)),
    (3, (3, 1)), (3, (1, 3)), (3, (3, 3)), ((2, 3), (2, 3))])
@pytest.mark.parametrize("use_onednn", [True, False])
def test_packed_conv_pool_equals_the_chain(pool_kernel, packing, use_onednn):
    torch.manual_seed(0)
    # odd map sizes, so floor-mode pooling drops rows and columns
    x = torch.randn(5, 3, 15, 16)
    for conv, act in ((nn.Conv2d(3, 7, 3), nn.ReLU()),
                      (nn.Conv2d(3, 4, (3, 2), padding=1, bias=False), None),
                      (nn.Conv2d(3, 5, 5, padding=(2, 1)), nn.LeakyReLU(0.1))):
        pool = nn.MaxPool2d(pool_kernel)
        fused = PackedConvPool2d.from_chain(conv, act, pool, packing, use_onednn)
        assert fused.weight is conv.weight
        with torch.no_grad():
            ref = _chain(conv, act, pool, x)
            out = fused(x)
        assert out.shape == ref.shape
        assert torch.allclose(out, ref, atol=1e-5)


def test_packed_conv_pool_trains_through_the_original_chain():
    conv, act, pool = nn.Conv2d(2, 3, 3), nn.ReLU(), nn.MaxPool2d(2)
    fused = PackedConvPool2d.from_chain(conv, act, pool, (2, 2), True)
    x = torch.randn(4, 2, 10, 10, requires_grad=True)
    g_fused = torch.autograd.grad(fused(x).sum(), [x, conv.weight, conv.bias])
    g_ref = torch.autograd.grad(_chain(conv, act, pool, x).sum(), [x, conv.weight, conv.bias])
    for a, b in zip(g_fused, g_ref):
        assert torch.equal(a, b)
    with torch.no_grad():  # forward-mode through the packed path
        t = torch.randn_like(x)
        out, tangent = torch.func.jvp(fused, (x.detach(),), (t,))
        ref_out, ref_tangent = torch.func.jvp(lambda v: _chain(conv, act, pool, v),
                                              (x.detach(),), (t,))
    assert torch.allclose(out, ref_out, atol=1e-5)
    assert torch.allclose(tangent, ref_tangent, atol=1e-5)


def test_packed_weight_follows_changes_to_the_conv():
    conv, pool = nn.Conv2d(2, 3, 3), nn.MaxPool2d(2)
    fused = PackedConvPool2d.from_chain(conv, nn.ReLU(), pool, (2, 2), True)
    x = torch.randn(4, 2, 10, 10)
    with torch.no_grad():
        fused(x)
        conv.weight.mul_(-0.5)
        conv.bias.add_(1.0)
        assert torch.allclose(fused(x), _chain(conv, nn.ReLU(), pool, x), atol=1e-6)
        conv.weight = nn.Parameter(torch.randn_like(conv.weight))  # replaced, not edited
        fused.weight = conv.weight
        assert torch.allclose(fused(x), _chain(conv, nn.ReLU(), pool, x), atol=1e-6)


@pytest.mark.parametrize("conv,act,pool", [
    (nn.Conv2d(2, 3, 3, stride=2), nn.ReLU(), nn.MaxPool2d(2)),
    (nn.Conv2d(2, 4, 3, groups=2), nn.ReLU(), nn.MaxPool2d(2)),
    (nn.Conv2d(2, 3, 3), nn.SiLU(), nn.MaxPool2d(2)),  # not monotone
    (nn.Conv2d(2, 3, 3), nn.ReLU(), nn.MaxPool2d(3, stride=2)),  # overlapping windows
    (nn.Conv2d(2, 3, 3, padding_mode="reflect", padding=1), nn.ReLU(), nn.MaxPool2d(2)),
])
def test_packed_conv_pool_refuses_chains_it_cannot_fuse(conv, act, pool):
    assert not PackedConvPool2d.supports(conv, act, pool)
    with pytest.raises(ValueError, match="cannot be fused"):
        PackedConvPool2d.from_chain(conv, act, pool, (1, 1), True)


def test_packing_must_divide_the_pooling_window():
    with pytest.raises(ValueError, match="does not divide"):
        PackedConvPool2d.from_chain(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.MaxPool2d(2), (3, 1), True)


@pytest.mark.parametrize("name", ["conv-small", "lenet5"])
def test_fused_optimization_keeps_outputs_and_parameter_names(name):
    masked, small = _masked_and_shrunk(name, 0.5)
    x = torch.randn(16, 1, 28, 28)
    for model in (masked, small):
        fast, choices = optimize_for_inference(model, x, repeats=1)
        with torch.no_grad():
            assert torch.allclose(fast(x), model(x), atol=1e-5)
        assert list(fast.state_dict()) == list(model.state_dict())
        for n, m in fast.named_children():
            if isinstance(m, PackedConvPool2d):
                assert choices[n].startswith("fused conv+activation+pool")
                # the ReLU and the pool that follow it are now identities
                assert isinstance(fast[int(n) + 1], nn.Identity)
                assert isinstance(fast[int(n) + 2], nn.Identity)
        # whatever was chosen, conv -> ReLU -> pool is fused or tuned layer by layer
        convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        for n in convs:
            assert isinstance(fast.get_submodule(n), (BackendConv2d, PackedConvPool2d))


def test_fused_candidates_are_all_exact_on_conv_small():
    """Force every packing on conv-small (timing picks one; all must agree)."""
    masked, small = _masked_and_shrunk("conv-small", 0.5)
    x = torch.randn(8, 1, 28, 28)
    for model in (masked, small):
        for packing in ((1, 1), (1, 2), (2, 1), (2, 2)):
            fused = nn.Sequential(*[
                PackedConvPool2d.from_chain(m, model[i + 1], model[i + 2], packing, True)
                if isinstance(m, nn.Conv2d) else
                (nn.Identity() if i in (1, 2, 4, 5) else m) for i, m in enumerate(model)])
            with torch.no_grad():
                assert torch.allclose(fused(x), model(x), atol=1e-5)
