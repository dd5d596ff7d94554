"""Paths and Bezier curves between BatchNorm ResNets: with BatchNorm statistics recomputed
along the path, the endpoints equal the end networks with their statistics recomputed the same
way (and with 'keep', the end networks as trained)."""

import copy

import pytest
import torch
from torch import nn

from conftest import tiny_images
from prunelab.config import TrainConfig
from prunelab.landscape.curves import BezierCurve, evaluate_curve, train_curve
from prunelab.landscape.paths import interpolate
from prunelab.methods import build_method
from prunelab.models import build_model
from prunelab.train import Trainer, evaluate


@pytest.fixture(scope="module")
def two_resnets():
    data = tiny_images(n_train=48, n_test=24, shape=(1, 28, 28), classes=3)
    ends = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model("resnet20", data.input_shape, 3, width=0.125)
        result = Trainer(model, data, TrainConfig(epochs=2, batch_size=16, lr=0.05, seed=seed,
                                                   eval_train=False),
                         build_method("magnitude", sparsity=0.5), progress=False).fit()
        ends.append((model, result))
    return data, ends


def _recomputed(model: nn.Module, x: torch.Tensor, batch_size: int) -> nn.Module:
    net = copy.deepcopy(model)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            net(x[i:i + batch_size])
    return net.eval()


def test_line_endpoints_exact_with_batchnorm_recomputed_and_kept(two_resnets):
    data, ((a, _), (b, _)) = two_resnets
    line = interpolate(a, b, data, model=a, ts=[0.0, 0.5, 1.0], bn="recompute", batch_size=16)
    for t, end in ((0.0, a), (1.0, b)):
        ref = evaluate(_recomputed(end, data.x_train, 16), data.x_test, data.y_test, 16)
        k = line.t.index(t)
        assert line.loss("test")[k] == pytest.approx(ref["loss"], rel=1e-5, abs=1e-6)
        assert line.accuracy("test")[k] == ref["accuracy"]
    kept = interpolate(a, b, data, model=a, ts=[0.0, 1.0], bn="keep", batch_size=16)
    for k, end in enumerate((a, b)):
        ref = evaluate(end, data.x_test, data.y_test, 16)
        assert kept.loss("test")[k] == pytest.approx(ref["loss"], rel=1e-5, abs=1e-6)
    # recomputation matters on these nets: the stored statistics give other numbers midway
    mid = interpolate(a, b, data, model=a, ts=[0.5], bn="keep", batch_size=16)
    assert mid.loss("test")[0] != pytest.approx(line.loss("test")[1], rel=1e-3)


@pytest.mark.parametrize("subspace", ["dense", "sparse"])
def test_bezier_curve_endpoints_exact_with_batchnorm(two_resnets, subspace):
    data, ((a, ra), (b, rb)) = two_resnets
    curve = BezierCurve.between(a, b, model=a, degree=2, subspace=subspace,
                                masks_a=ra.masks, masks_b=rb.masks)
    train_curve(curve, a, data, epochs=1, batch_size=16, lr=0.01, progress=False)
    result = evaluate_curve(curve, a, data, points=3, batch_size=16, bn="recompute")
    for k, end in ((0, a), (2, b)):
        ref = evaluate(_recomputed(end, data.x_train, 16), data.x_test, data.y_test, 16)
        assert result.loss("test")[k] == pytest.approx(ref["loss"], rel=1e-5, abs=1e-6)
    if subspace == "sparse":  # the trained bend stays in the masks' intersection
        bend = curve.control_points()[1]
        both = {n: ra.masks[n] & rb.masks[n] for n in ra.masks}
        assert all(torch.all(bend[n][~m] == 0) for n, m in both.items())
        assert any(torch.any(bend[n][m] != 0) for n, m in both.items())


def test_hessian_of_a_batchnorm_resnet_is_taken_in_eval_mode(two_resnets):
    """The operator uses running statistics whatever the model's mode: products do not depend
    on the chunk size, agree with autograd's Hessian of the eval-mode loss, and the model's
    mode and statistics are left alone."""
    from prunelab.landscape.hessian import HessianOperator

    data, ((a, _), _) = two_resnets
    tiny = build_model("resnet20", data.input_shape, 3, width=0.0625)
    tiny.train()
    with torch.no_grad():
        tiny(data.x_train)  # nontrivial running statistics
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    x, y = data.x_train[:20].double(), data.y_train[:20]
    whole = HessianOperator(tiny, x, y, dtype="float64")
    chunked = HessianOperator(tiny, x, y, dtype="float64", batch_size=7)
    v = torch.randn(whole.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(whole.matvec(v), chunked.matvec(v), rtol=1e-10, atol=1e-12)
    assert tiny.training and all(torch.equal(before[k], t) for k, t in tiny.state_dict().items())

    ref_model = copy.deepcopy(tiny).double().eval()  # reverse-over-reverse product
    params = list(ref_model.parameters())
    loss = torch.nn.functional.cross_entropy(ref_model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    parts, i = [], 0
    for p in params:
        parts.append(v[i:i + p.numel()].view_as(p))
        i += p.numel()
    hv = torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, parts)), params)
    torch.testing.assert_close(whole.matvec(v), torch.cat([h.reshape(-1) for h in hv]),
                               rtol=1e-8, atol=1e-10)
