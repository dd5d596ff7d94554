"""The unit/channel line on graph models: group scores are the first-order (MRS, removal) and
exact (oracle) loss changes of what shrinking does, dead channels are found, and the `units`
method prunes ResNet-20 and VGG end to end with masks, mean replacement and a shrunk model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import tiny_images
from prunelab.cli import main
from prunelab.config import TrainConfig
from prunelab.data.base import Dataset
from prunelab.errors import ConfigError, MaskError
from prunelab.group_scores import group_statistics, group_unit_scores
from prunelab.groups import channel_groups, group_weight_masks
from prunelab.masks import apply_masks
from prunelab.methods.units import UnitPruning
from prunelab.models import MODELS, build_model, count_parameters
from prunelab.scores import dead_units, select_units, unit_means, unit_scores
from prunelab.shrink import load_shrunk, shrink
from prunelab.train import Trainer

CIFAR = (3, 32, 32)


def per_sample_first_order(model, group, x, y, mean: bool):
    """Brute force: every consumer reads channel j as (1 - t_n) a + t_n a_bar (a_bar = 0 for
    removal) with one t per sample; d loss_n / d t_n at 0, by autograd, per channel."""
    out = torch.zeros(group.size)
    for j in range(group.size):
        t = torch.zeros(x.shape[0], requires_grad=True)
        handles = []
        for m in group.consumers:
            pos = m.positions(torch.tensor([j]))

            def pre(mod, args, pos=pos):
                a = args[0]
                col = a[:, pos]
                bar = col.mean(dim=tuple(d for d in range(col.dim()) if d != 1),
                               keepdim=True) if mean else torch.zeros_like(col)
                shape = (-1,) + (1,) * (col.dim() - 1)
                new = col + t.view(shape) * (bar.detach() - col)
                z = a.clone()
                z[:, pos] = new
                return (z,)

            handles.append(model.get_submodule(m.module).register_forward_pre_hook(pre))
        try:
            losses = F.cross_entropy(model(x), y, reduction="none")
            (g,) = torch.autograd.grad(losses.sum(), t)
        finally:
            for h in handles:
                h.remove()
        out[j] = g.abs().mean()
    return out


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_mrs_and_removal_are_first_order_changes_of_every_read(shortcut):
    torch.manual_seed(0)
    model = build_model("resnet20", (3, 28, 28), 10, width=0.25, shortcut=shortcut).eval()
    x, y = torch.randn(4, 3, 28, 28), torch.randint(0, 10, (4,))
    stats = group_statistics(model, (x, y))
    groups = {g.name: g for g in channel_groups(model)}
    # the stem stream (read by 4 layers, or 5 with the 1x1 shortcut), a block's inner
    # group, and with option A the channels stage 2 adds (read in stages 2 and 3)
    names = ["conv1", "layer1.1.conv1"] + (["layer2.0.conv2"] if shortcut == "A" else [])
    for g in (groups[n] for n in names):
        torch.testing.assert_close(stats.mrs[g.name], per_sample_first_order(model, g, x, y,
                                                                             True),
                                   rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(stats.removal[g.name], per_sample_first_order(
            model, g, x, y, False), rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())


class _Unpadded(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.a = nn.Conv2d(6, 5, 1, bias=False)
        self.bn_a = nn.BatchNorm2d(5)
        self.b = nn.Conv2d(5, 6, 1)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        h = F.relu(self.bn(self.stem(x)))
        h = F.relu(h + self.b(F.relu(self.bn_a(self.a(h)))))
        return self.fc(torch.flatten(F.max_pool2d(h, 2), 1))


def test_oracle_is_the_loss_change_of_the_shrunk_mean_replaced_network():
    torch.manual_seed(0)
    model = _Unpadded().eval()
    x, y = torch.randn(8, 3, 10, 10), torch.randint(0, 3, (8,))
    groups = channel_groups(model, x)
    means = unit_means(model, (x, y))
    assert set(means) == {"stem", "a"} and set(means["stem"]) == {"a", "fc"}
    oracle = group_unit_scores(model, (x, y), "oracle", groups=groups, means=means)
    with torch.no_grad():
        base = float(F.cross_entropy(model(x), y))
    for g in groups:
        for j in (0, g.size - 1):
            keep = {g.name: torch.ones(g.size, dtype=torch.bool)}
            keep[g.name][j] = False
            small = shrink(model, keep, means=means, example_input=x).eval()
            with torch.no_grad():
                change = float(F.cross_entropy(small(x), y)) - base
            assert abs(float(oracle[g.name][j]) - change) < 1e-5


def test_scores_select_and_dead_channels_on_vgg():
    torch.manual_seed(0)
    model = build_model("vgg11-bn", CIFAR, 10, width=0.125).eval()
    groups = channel_groups(model)
    x, y = torch.randn(8, *CIFAR), torch.randint(0, 10, (8,))
    for score in ("norm", "random", "mrs", "removal"):
        s = unit_scores(model, (x, y), score)
        assert {k: v.shape for k, v in s.items()} == {g.name: (g.size,) for g in groups}
    keep = select_units(unit_scores(model, (x, y), "norm"), fraction=0.5)
    assert all(int(keep[g.name].sum()) == g.size - g.size // 2 for g in groups)
    g = groups[3]
    kill = {g.name: torch.ones(g.size, dtype=torch.bool)}
    kill[g.name][[2, 4]] = False
    apply_masks(model, group_weight_masks(model, groups, kill))
    report = dead_units(model, (x, y), tol=0.0)  # zeroed channels: MRS exactly 0
    assert report[g.name]["dead_indices"] == [2, 4] and report[g.name]["constant"] >= 2
    # elsewhere only ReLUs dead on the whole batch (constant zero reads) have MRS 0
    assert all(report[h.name]["dead"] == report[h.name]["constant"] for h in groups)


@pytest.mark.parametrize("name,opts,mr", [
    ("resnet20", {"width": 0.25, "shortcut": "A"}, True),
    ("resnet20", {"width": 0.25, "shortcut": "B"}, False),
    ("vgg11-bn", {"width": 0.125}, True),
])
def test_units_method_prunes_graph_models_end_to_end(tmp_path, name, opts, mr):
    data = tiny_images(n_train=32, n_test=16)
    torch.manual_seed(0)
    model = build_model(name, data.input_shape, data.num_classes, **opts)
    method = UnitPruning(fraction=0.25, rounds=2, score_steps=1, mean_replacement=mr)
    cfg = TrainConfig(epochs=2, batch_size=16, optimizer="sgd", lr=0.01, eval_train=False)
    trainer = Trainer(model, data, cfg, method, progress=False, out_dir=tmp_path)
    result = trainer.fit()
    groups = channel_groups(model)
    alive = {k: int(v.sum()) for k, v in method.unit_masks.items()}
    assert alive == {g.name: g.size - g.size // 4 - (g.size - g.size // 4) // 4
                     for g in groups}
    params = dict(model.named_parameters())
    for pname, m in result.masks.items():  # masks exactly zero, BatchNorm included
        assert bool((params[pname].detach()[~m.to(params[pname].device)] == 0).all())
    assert any(".bn" in k or "features.1." in k for k in result.masks)
    small = method.shrunk_model().eval()
    model.eval()
    x = data.x_test[:8]
    with torch.no_grad():  # float32 rounding, relative to the logits' scale
        ref = model(x)
        assert (small(x) - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))
    assert result.sparsity["global"]["params_after_shrink"] == count_parameters(small)
    loaded = load_shrunk(tmp_path / "shrunk.pt").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x))
    summary = method.summary()
    assert summary["widths_shrunk"] == alive
    assert summary["params_shrunk"] < summary["params_dense"]


def test_units_mean_replacement_changes_nothing_at_prune_time_in_eval():
    """A prune round with mean replacement (in place: consumer biases, and the running mean
    of the BatchNorm that alone reads the bias-free consumer 'a') leaves the masked network
    computing, in eval mode, what the shrunk mean-replaced network computes."""
    torch.manual_seed(0)
    model = _Unpadded()
    x = torch.randn(16, 3, 10, 10)
    data = Dataset("t", x, torch.randint(0, 3, (16,)), x[:4], torch.zeros(4, dtype=torch.long),
                   3)
    method = UnitPruning(fraction=0.5, rounds=1, score_steps=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    from prunelab.methods.base import TrainContext

    method.attach(TrainContext(model, opt, steps_per_epoch=1, total_steps=1, epochs=1,
                               data=data))
    model.train()
    method.collector.active = True
    F.cross_entropy(model(x), data.y_train).backward()
    model.eval()
    means = method.collector.means()
    before = copy.deepcopy(model)
    method.prune_round(1)
    keep = {k: v.cpu() for k, v in method.unit_masks.items()}
    ref = shrink(before, keep, means=means, example_input=x).eval()
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max() <= 1e-5


def test_units_refusals():
    data = tiny_images(n_train=32, n_test=16)
    torch.manual_seed(0)
    wrn = build_model("wrn-16-4", data.input_shape, data.num_classes, width=0.0625)
    cfg = TrainConfig(epochs=2, batch_size=16, eval_train=False)
    with pytest.raises(ConfigError, match="mean replacement into 'layer1.0.projection'"):
        Trainer(wrn, data, cfg, UnitPruning(rounds=1), progress=False).fit()
    Trainer(wrn, data, cfg, UnitPruning(rounds=1, score_steps=2, mean_replacement=False),
            progress=False).fit()  # plain removal works on the pre-activation blocks


class _MatmulNet(nn.Module):
    """A classifier whose hidden features go through a matmul the grouping cannot follow."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.fc1 = nn.Linear(n_in, 8)
        self.mix = nn.Parameter(torch.eye(8))
        self.fc2 = nn.Linear(8, n_out)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))) @ self.mix)


def test_cli_refuses_an_ungroupable_model_for_units_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(MODELS, "matmul-net", lambda input_shape, num_classes: _MatmulNet(
        int(torch.tensor(input_shape).prod()), num_classes))
    common = ["train", "--model", "matmul-net", "--dataset", "xor", "--data-option",
              "n_train=64", "--data-option", "n_test=32", "--epochs", "2", "--quiet"]
    rc = main(common + ["--method", "units", "--out", str(tmp_path / "units")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prunelab: error:") and "\n" not in err
    assert "matmul" in err and "node" in err
    assert not (tmp_path / "units").exists()
    rc = main(common + ["--method", "magnitude", "--sparsity", "0.5", "--out",
                        str(tmp_path / "mag")])
    assert rc == 0  # the weight-mask methods still work on it
    with pytest.raises(MaskError, match="matmul"):
        channel_groups(_MatmulNet(4, 2), torch.zeros(1, 4), strict=True)


def test_units_on_a_user_graph_model(tmp_path):
    """A traceable model not built by build_model: pruned and shrunk (groups traced on the
    data's shape); its shrunk network is not saved as an architecture (no registry entry)."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 3, 10, 10), torch.randint(0, 3, (32,))
    data = Dataset("t", x, y, x[:8], y[:8], 3)
    model = _Unpadded()
    method = UnitPruning(fraction=0.5, rounds=1, score_steps=1)
    Trainer(model, data, TrainConfig(epochs=1, batch_size=16, eval_train=False), method,
            progress=False, out_dir=tmp_path).fit()
    small = method.shrunk_model()
    assert small.a.out_channels == 3 and small.stem.out_channels == 3
    assert (tmp_path / "shrink.json").exists() and not (tmp_path / "shrunk.pt").exists()
