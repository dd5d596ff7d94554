"""Dynamic sparse training (set, rigl): constant density through every update, grown weights
at zero with no optimizer state, RigL's drop/grow rule on its dense gradient, the cosine drop
fraction, the mask-change log, sparse compute and bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn import functional as F

from conftest import tiny_images
from prunelab.cli import main
from prunelab.config import TrainConfig
from prunelab.data import load_dataset
from prunelab.errors import ConfigError
from prunelab.methods import TrainContext, build_method
from prunelab.methods.dst import SET, RigL, dense_gradient
from prunelab.models import build_model
from prunelab.schedules import CosineSchedule, schedule_from_dict
from prunelab.selection import _keep_top, layer_keep_counts
from prunelab.train import Trainer


def test_cosine_drop_fraction_schedule():
    s = CosineSchedule(0.3, end=1000, frequency=100)
    assert s(0) == pytest.approx(0.3) and s(500) == pytest.approx(0.15)
    assert s(250) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    assert s(1000) == 0.0 and s(5000) == 0.0
    assert [t for t in range(0, 1200) if s.is_update_step(t)] == list(range(100, 1000, 100))
    assert schedule_from_dict(s.to_dict()) == s
    constant = CosineSchedule(0.3, 1000, 100, final=0.3)
    assert constant(0) == constant(700) == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="initial value"):
        CosineSchedule(1.5, 10)


def _checked(cls):
    """A subclass that checks the invariants around every update."""

    class Checked(cls):
        def update(self, step):
            params = dict(self.ctx.model.named_parameters())
            before = {n: m.clone() for n, m in self.enforcer.masks.items()}
            record = super().update(step)
            for n, m in self.enforcer.masks.items():
                assert int(m.sum()) == int(before[n].sum()) == self.counts[n]  # density
                grown = m & ~before[n]
                assert record["moved"][n] == int(grown.sum())
                assert torch.all(params[n].detach()[grown] == 0)  # grown start at zero
                assert torch.all(params[n].detach()[~m] == 0)
                for value in self.ctx.optimizer.state.get(params[n], {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == m.shape:
                        assert torch.all(value[~m] == 0)  # no state at inactive entries
                        assert torch.all(value[grown] == 0)  # nor at the grown ones
                self.moved_checked += int(grown.sum())
            self.checked += 1
            return record

    return Checked


@pytest.mark.parametrize("cls", [SET, RigL])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_density_constant_grown_at_zero_and_no_state_revived(cls, optimizer, tmp_path):
    data = load_dataset("digits", seed=0, flatten=True)
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, 10, widths=[300, 100])
    method = _checked(cls)(sparsity=0.9, update_interval=5, end=0.8, seed=1)
    method.checked = method.moved_checked = 0
    cfg = TrainConfig(epochs=2, batch_size=64, optimizer=optimizer,
                      lr=0.05 if optimizer == "sgd" else 3e-3, weight_decay=1e-4,
                      eval_train=False)
    result = Trainer(model, data, cfg, method, out_dir=tmp_path, progress=False).fit()
    total = result.final["steps"]
    assert method.checked == len(range(5, int(round(0.8 * total)), 5)) > 3
    assert method.moved_checked > 50  # weights did move
    params = dict(model.named_parameters())
    shapes = {n: tuple(m.shape) for n, m in result.masks.items()}
    assert {n: int(m.sum()) for n, m in result.masks.items()} == layer_keep_counts(
        shapes, 0.1, "erk")
    assert all(torch.all(params[n].detach()[~m] == 0) for n, m in result.masks.items())
    log = json.loads((tmp_path / "mask_updates.json").read_text())
    assert len(log["updates"]) == method.checked
    assert all(u["moved_total"] == sum(u["moved"].values()) for u in log["updates"])
    assert sum(u["moved_total"] for u in log["updates"]) == method.moved_checked
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["moved"] for r in rows) == method.moved_checked
    assert sum(r["moved/1.weight"] for r in rows) == sum(u["moved"]["1.weight"]
                                                         for u in log["updates"])


def _attached(method, model, data, total=100):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method.attach(TrainContext(model, opt, 10, total, 10, torch.device("cpu"), data))
    return opt


def test_rigl_drops_smallest_magnitudes_and_grows_largest_dense_gradients():
    data = load_dataset("digits", seed=0, flatten=True)
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, 10, widths=[32])
    method = RigL(sparsity=0.8, update_interval=10, drop_fraction=0.5, seed=0)
    _attached(method, model, data)
    x, y = data.x_train[:64], data.y_train[:64]
    before = {n: m.clone() for n, m in method.enforcer.masks.items()}
    params = dict(model.named_parameters())
    with torch.no_grad():  # move the kept weights off their init so magnitudes differ
        for n, p in params.items():
            p.add_(torch.randn_like(p) * 0.05)
            if n in before:
                p.mul_(before[n])
    for p in params.values():  # garbage in .grad must not matter
        p.grad = torch.full_like(p, 7.0)
    grads = dense_gradient(model, x, y, F.cross_entropy, list(before))
    # the dense gradient is that of an ordinary backward (masked entries included)
    reference = torch.autograd.grad(F.cross_entropy(model(x), y),
                                    [params[n] for n in before])
    for (n, g), r in zip(grads.items(), reference):
        assert torch.allclose(g, r, atol=1e-6)
        assert g[~before[n]].abs().sum() > 0
    weights = {n: params[n].detach().clone() for n in before}
    method._batch = (x, y, F.cross_entropy)
    method.update(10)
    f = method.schedule(10)
    for n, old in before.items():
        k = int(old.sum())
        n_move = min(round(f * k), old.numel() - k)
        kept = _keep_top(weights[n].abs().masked_fill(~old, float("-inf")), k - n_move)
        grown = _keep_top(grads[n].abs().masked_fill(kept, float("-inf")), n_move)
        assert torch.equal(method.enforcer.masks[n], kept | grown)
        assert (kept | grown).sum() == k


def test_set_grows_at_random_and_seed_fixes_it():
    data = load_dataset("digits", seed=0, flatten=True)
    masks = []
    for seed in (0, 0, 1):
        torch.manual_seed(0)
        model = build_model("mlp", data.input_shape, 10, widths=[32])
        method = SET(sparsity=0.8, update_interval=10, seed=seed)
        _attached(method, model, data)
        method.update(10)
        masks.append(method.enforcer.masks["1.weight"].clone())
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])


@pytest.mark.parametrize("name", ["set", "rigl"])
def test_dst_trains_a_resnet_with_batchnorm(name):
    images = tiny_images()
    torch.manual_seed(0)
    net = build_model("resnet20", images.input_shape, images.num_classes, width=0.125)
    method = build_method(name, sparsity=0.8, update_interval=2, keep_first_last=True)
    res = Trainer(net, images, TrainConfig(steps=8, batch_size=16, lr=0.05, eval_train=False),
                  method, progress=False).fit()
    assert "conv1.weight" not in res.masks and "fc.weight" not in res.masks
    assert len(method.updates) == 2 and sum(u["moved_total"] for u in method.updates) > 0
    params = dict(net.named_parameters())
    assert all(torch.all(params[n].detach()[~m] == 0) for n, m in res.masks.items())
    assert 1.0 - method.current_sparsity() == pytest.approx(0.2, abs=1e-4)


def test_sparse_compute_matches_dense_compute():
    data = load_dataset("digits", seed=0, flatten=True)
    finals = []
    for sparse in (False, True):
        torch.manual_seed(0)
        model = build_model("mlp", data.input_shape, 10, widths=[300, 100])
        method = RigL(sparsity=0.95, update_interval=4, seed=0, sparse_compute=sparse)
        Trainer(model, data, TrainConfig(steps=12, batch_size=64, lr=0.05, eval_train=False),
                method, progress=False).fit()
        finals.append({n: p.detach().clone() for n, p in model.named_parameters()})
        if sparse:
            assert set(method.sparse_choices) == {"1", "3", "5"}
    for n in finals[0]:
        assert torch.allclose(finals[0][n], finals[1][n], atol=1e-4), n


@pytest.mark.parametrize("options,match", [
    ({"drop_fraction": 0.0}, "drop_fraction must be in"),
    ({"drop_fraction": 1.0}, "drop_fraction must be in"),
    ({"budget": "erdos"}, "unknown budget 'erdos'"),
    ({"drop_schedule": "linear"}, "drop_schedule must be one of"),
    ({"scope": "layer"}, "scope does not apply"),
])
def test_bad_options_are_refused(options, match):
    with pytest.raises(ConfigError, match=match):
        build_method("rigl", **options)


def test_update_intervals_longer_than_training_are_refused(capsys):
    data = load_dataset("digits", seed=0, flatten=True)
    model = build_model("mlp", data.input_shape, 10, widths=[8])
    with pytest.raises(ConfigError, match="longer than training"):
        _attached(SET(update_interval=101), model, data, total=100)
    with pytest.raises(ConfigError, match="no mask update before end"):
        _attached(SET(update_interval=80), model, data, total=100)
    for option in ("update_interval=100000", "drop_fraction=1.5", "budget=bogus"):
        assert main(["train", "--model", "mlp", "--dataset", "xor", "--method", "set",
                     "-o", option, "--epochs", "1", "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("prunelab: error:") and "\n" not in err
