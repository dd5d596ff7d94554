"""Shrinking graph models by channel groups: the shrunk network computes what the zeroed
network computes, counts agree with Torch-Pruning on the same channel selection, residual
streams shrink in every block, mean replacement is exact where the docs say, optimizer state
follows, and shrunk graphs save as spec + weights."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prunelab.errors import ConfigError, MaskError
from prunelab.graph_shrink import shrink_groups_with_optimizer
from prunelab.groups import channel_groups, group_weight_masks
from prunelab.masks import MaskEnforcer, apply_masks, sparsity_report
from prunelab.models import build_model, count_parameters
from prunelab.shrink import (
    architecture,
    from_architecture,
    load_shrunk,
    save_shrunk,
    shrink,
    shrink_with_optimizer,
    widths,
)

CIFAR = (3, 32, 32)
NETS = [
    ("resnet20", {"width": 0.25, "shortcut": "A"}),
    ("resnet20", {"width": 0.25, "shortcut": "B"}),
    ("wrn-16-4", {"width": 0.125}),
    ("vgg16-bn", {"width": 0.125}),
]


def random_keep(groups, seed: int = 0, keep: float = 0.5) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for g in groups:
        m = torch.rand(g.size, generator=gen) < keep
        j = int(torch.randint(g.size, (1,), generator=gen))
        m[j] = True
        if bool(m.all()) and g.size > 1:  # remove at least one channel
            m[(j + 1) % g.size] = False
        out[g.name] = m
    return out


def trained_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so eval mode is a real test."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model


def build(name, opts, seed=0):
    torch.manual_seed(seed)
    return trained_bn(build_model(name, CIFAR, 10, **opts), seed)


@pytest.mark.parametrize("name,opts", NETS)
def test_shrunk_equals_masked(name, opts):
    model = build(name, opts)
    groups = channel_groups(model)
    keep = random_keep(groups)
    small = shrink(model, keep)
    masked = copy.deepcopy(model)
    apply_masks(masked, group_weight_masks(masked, groups, keep))
    x = torch.randn(4, *CIFAR)
    small.eval(), masked.eval()
    with torch.no_grad():
        assert (small(x) - masked(x)).abs().max() <= 1e-5
    small.train(), masked.train()  # batch statistics: the removed channels are exactly zero
    with torch.no_grad():
        assert (small(x) - masked(x)).abs().max() <= 1e-5
    assert count_parameters(small) < count_parameters(model)
    assert widths(small) == {g.name: int(keep[g.name].sum()) for g in groups}


def _tp_prune(model, groups, keep, x):
    tp = pytest.importorskip("torch_pruning")
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    for g in groups:
        gone = ~keep[g.name]
        if not bool(gone.any()):
            continue
        root = g.producers[0]
        mod = model.get_submodule(root.module)
        handler = (tp.prune_linear_out_channels if isinstance(mod, nn.Linear)
                   else tp.prune_conv_out_channels)
        group = dg.get_pruning_group(mod, handler, idxs=root.index[gone].tolist())
        assert dg.check_pruning_group(group)
        group.prune()
    return model


@pytest.mark.parametrize("name,opts", [n for n in NETS if n[1].get("shortcut") != "A"])
def test_counts_equal_torch_pruning(name, opts):
    tp = pytest.importorskip("torch_pruning")
    model = build(name, opts)
    groups = channel_groups(model)
    keep = random_keep(groups, seed=1)
    ours = shrink(model, keep).eval()
    x = torch.randn(2, *CIFAR)
    theirs = _tp_prune(copy.deepcopy(model), groups, keep, x).eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
           {k: v.shape for k, v in theirs.state_dict().items()}
    assert count_parameters(ours) == count_parameters(theirs)
    flops = [sparsity_report(m, None, CIFAR)["global"]["flops_dense"] for m in (ours, theirs)]
    assert flops[0] == flops[1] < sparsity_report(model, None, CIFAR)["global"]["flops_dense"]
    assert tp.utils.count_ops_and_params(ours, x) == tp.utils.count_ops_and_params(theirs, x)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_removing_a_stream_channel_removes_it_from_every_block(shortcut):
    model = build("resnet20", {"width": 0.5, "shortcut": shortcut})
    groups = channel_groups(model)
    keep = {g.name: torch.ones(g.size, dtype=torch.bool) for g in groups}
    keep["conv1"][[0, 5]] = False  # two channels of the stage-1 stream
    small = shrink(model, keep)
    assert small.conv1.out_channels == 6 and small.bn1.num_features == 6
    for b in range(3):
        blk = small.layer1[b]
        assert blk.conv1.in_channels == blk.conv2.out_channels == blk.bn2.num_features == 6
        assert blk.conv1.out_channels == 8  # the block's inner group is untouched
    if shortcut == "A":  # the stream continues through the zero pad into stages 2 and 3
        assert small.layer2[0].shortcut.in_channels == 6
        assert (small.layer2[0].shortcut.left, small.layer2[0].shortcut.right) == (4, 4)
        assert small.layer2[2].bn2.num_features == 14 and small.fc.in_features == 30
    else:
        assert small.layer2[0].shortcut[0].in_channels == 6
        assert small.layer2[2].bn2.num_features == 16 and small.fc.in_features == 32


class _Unpadded(nn.Module):
    """A residual net whose consumers are 1x1 / unpadded convolutions and a Linear, with and
    without a bias, one of them read by a BatchNorm alone: mean replacement is exact here."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.a = nn.Conv2d(6, 5, 1, bias=False)
        self.bn_a = nn.BatchNorm2d(5)
        self.b = nn.Conv2d(5, 6, 1)
        self.c = nn.Conv2d(6, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        h = F.relu(self.bn(self.stem(x)))
        h = F.relu(h + self.b(F.relu(self.bn_a(self.a(h)))))
        return self.fc(torch.flatten(F.relu(self.c(h)), 1))


def mean_replaced(model, groups, keep, means, x, hook_outputs=None):
    """Reference: every consumer reads each removed channel of a group as its mean."""
    handles = []
    for g in groups:
        gone = ~keep[g.name]
        for m in g.consumers:
            pos = m.positions(gone)
            vals = means[g.name][m.module][gone].repeat_interleave(m.per)

            def pre(mod, inp, pos=pos, vals=vals):
                z = inp[0].clone()
                shape = (1, -1) + (1,) * (z.dim() - 2)
                z[:, pos] = vals.view(shape).to(z).expand_as(z[:, pos])
                return (z,)

            handles.append(model.get_submodule(m.module).register_forward_pre_hook(pre))
    outs = {}
    for name in hook_outputs or []:
        handles.append(model.get_submodule(name).register_forward_hook(
            lambda mod, i, o, name=name: outs.__setitem__(name, o)))
    try:
        with torch.no_grad():
            return model(x), outs
    finally:
        for h in handles:
            h.remove()


def some_means(groups, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {g.name: {m.module: torch.randn(g.size, generator=gen) for m in g.consumers}
            for g in groups}


@pytest.mark.parametrize("fold", ["auto", "bias"])
def test_mean_replacement_is_exact_without_padding(fold):
    torch.manual_seed(0)
    model = trained_bn(_Unpadded()).eval()
    x = torch.randn(5, 3, 10, 10)
    groups = channel_groups(model, x)
    assert sorted(g.name for g in groups) == ["a", "c", "stem"]
    keep = random_keep(groups, seed=3)
    means = some_means(groups)
    ref, _ = mean_replaced(model, groups, keep, means, x)
    small = shrink(model, keep, means=means, fold=fold, example_input=x).eval()
    with torch.no_grad():
        assert (small(x) - ref).abs().max() <= 1e-5
    # auto: 'a' has no bias but only bn_a reads it: its running mean moves, no new parameter
    assert (small.a.bias is None) == (fold == "auto")


def test_mean_replacement_into_a_padded_conv_differs_only_at_the_border():
    """The folded constant is the full-kernel sum; a zero-padded consumer sees fewer taps at
    the border: interior outputs equal the mean-replaced network's, the border differs by
    exactly the out-of-image taps times the means."""
    model = build("vgg11-bn", {"width": 0.125}).eval()
    x = torch.randn(3, *CIFAR)
    groups = channel_groups(model)
    g = groups[1]  # features.4 -> BN -> ReLU -> pool -> features.8 (3x3, padding 1)
    consumer = g.consumers[0].module
    keep = {g.name: torch.ones(g.size, dtype=torch.bool)}
    keep[g.name][[0, 3, 7]] = False
    means = {g.name: {consumer: torch.rand(g.size) + 0.5}}
    _, ref = mean_replaced(model, [g], keep, means, x, [consumer])
    small = shrink(model, keep, means=means, fold="bias")
    outs = {}
    small.get_submodule(consumer).register_forward_hook(
        lambda m, i, o: outs.__setitem__("c", o))
    with torch.no_grad():
        small(x)
    diff = outs["c"] - ref[consumer]
    conv = model.get_submodule(consumer)
    gone = ~keep[g.name]
    w = conv.weight.detach()[:, gone]
    mu = means[g.name][consumer][gone]
    h, wd = ref[consumer].shape[2:]
    constant = mu.view(1, -1, 1, 1).expand(1, -1, h, wd)
    inside = F.conv2d(constant, w, padding=1)  # what the padded conv makes of the constant
    expected = (w.sum(dim=(2, 3)) @ mu).view(1, -1, 1, 1) - inside
    torch.testing.assert_close(diff, expected.expand_as(diff), atol=1e-5, rtol=0)
    assert diff[:, :, 1:-1, 1:-1].abs().max() <= 1e-5  # the interior is exact
    assert diff[:, :, 0, :].abs().max() > 1e-3  # the border is not


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_shrink_mid_training_keeps_optimizer_consistent(opt_name):
    """Masked training then shrink: the shrunk model with the carried-over optimizer follows
    the masked model's trajectory (train mode, BatchNorm batch statistics)."""
    model = build("resnet20", {"width": 0.25, "shortcut": "A"})
    groups = channel_groups(model)
    keep = random_keep(groups, seed=2)
    make = (lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3)) \
        if opt_name == "sgd" else (lambda ps: torch.optim.AdamW(ps, lr=1e-2))
    opt = make(model.parameters())
    MaskEnforcer(model, group_weight_masks(model, groups, keep)).attach(opt, rezero=True)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, *CIFAR, generator=gen), torch.randint(0, 10, (8,),
                                                                     generator=gen))
               for _ in range(5)]

    def step(m, o, b):
        o.zero_grad()
        F.cross_entropy(m(b[0]), b[1]).backward()
        o.step()

    for b in batches[:2]:
        step(model, opt, b)
    small, small_opt = shrink_with_optimizer(model, keep, opt)
    assert type(small_opt) is type(opt)
    key = "momentum_buffer" if opt_name == "sgd" else "exp_avg"
    kept = keep["conv1"]
    torch.testing.assert_close(small_opt.state[small.conv1.weight][key],
                               opt.state[model.conv1.weight][key][kept])
    for b in batches[2:]:
        step(model, opt, b)
        step(small, small_opt, b)
    model.eval(), small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(batches[0][0]), model(batches[0][0]), rtol=1e-4,
                                   atol=1e-5)


def test_created_bias_joins_the_optimizer():
    model = build("vgg11-bn", {"width": 0.125})
    groups = channel_groups(model)
    keep = random_keep(groups, seed=4)
    means = {g.name: {m.module: torch.rand(g.size) for m in g.consumers} for g in groups}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    small, small_opt = shrink_groups_with_optimizer(model, keep, opt, means=means,
                                                    fold="bias")
    assert small.features[4].bias is not None
    in_opt = {id(p) for g in small_opt.param_groups for p in g["params"]}
    assert {id(p) for p in small.parameters()} == in_opt


def test_save_and_load_shrunk_graph(tmp_path):
    model = build("resnet20", {"width": 0.25, "shortcut": "A"})
    groups = channel_groups(model)
    keep = random_keep(groups, seed=5)
    means = some_means(groups)
    small = shrink(model, keep, means=means, fold="bias").eval()
    spec = architecture(small)
    json.dumps(spec)  # JSON-friendly
    save_shrunk(tmp_path / "shrunk.pt", small)
    loaded = load_shrunk(tmp_path / "shrunk.pt").eval()
    x = torch.randn(2, *CIFAR)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x))
    assert architecture(loaded) == spec
    blob = torch.load(tmp_path / "shrunk.pt", weights_only=True)  # no pickled modules
    assert set(blob) == {"architecture", "state_dict"}
    scratch = from_architecture(spec)  # a fresh network of the shrunk shape
    assert {k: v.shape for k, v in scratch.state_dict().items()} == \
           {k: v.shape for k, v in small.state_dict().items()}


def test_bad_group_masks_and_models():
    model = build("resnet20", {"width": 0.25})
    groups = channel_groups(model)
    with pytest.raises(MaskError, match="every channel of group 'conv1'"):
        shrink(model, {"conv1": torch.zeros(4, dtype=torch.bool)})
    with pytest.raises(MaskError, match="no channel group by that name"):
        shrink(model, {"fc": torch.ones(10, dtype=torch.bool)})
    with pytest.raises(MaskError, match=r"shape \(4,\)"):
        shrink(model, {"conv1": torch.ones(5, dtype=torch.bool)})
    with pytest.raises(MaskError, match="means for group"):
        shrink(model, random_keep(groups), means={g.name: {} for g in groups})
    with pytest.raises(ConfigError, match="fold must be"):
        shrink(model, random_keep(groups), fold="bn")
    with pytest.raises(ConfigError, match="needs an example input"):
        shrink(_Unpadded(), {})
    with pytest.raises(MaskError, match="cannot describe"):
        architecture(_Unpadded())


def test_sparsity_report_counts_a_graph_after_shrinking():
    model = build("resnet20", {"width": 0.25, "shortcut": "B"})
    dense = sparsity_report(model, None, CIFAR)["global"]
    assert dense["params_after_shrink"] == dense["params"] == count_parameters(model)
    assert dense["flops_after_shrink"] == dense["flops_dense"]
    groups = channel_groups(model)
    keep = random_keep(groups, seed=6)
    apply_masks(model, group_weight_masks(model, groups, keep))
    small = shrink(model, keep)
    rep = sparsity_report(model, None, CIFAR)["global"]
    assert rep["params_after_shrink"] == count_parameters(small)
    assert rep["flops_after_shrink"] == sparsity_report(small, None, CIFAR)["global"][
        "flops_dense"] < dense["flops_dense"]

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4, 2)

        def forward(self, x):
            h = self.conv(x)
            return self.fc((h.relu() if h.sum() > 0 else h).mean((2, 3)))

    ungroupable = sparsity_report(Untraceable(), None, (1, 6, 6))["global"]
    assert ungroupable["params_after_shrink"] is None and ungroupable["flops_dense"] > 0
