"""Channel groups of graph models: the same coupled layers and channels as Torch-Pruning's
DependencyGraph where it is right, the option-A index maps where it is not, one group per hidden
layer on chains, and one-line refusals for what the analysis does not follow."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prunelab.errors import ConfigError, MaskError
from prunelab.groups import (
    alive_channels,
    analyse,
    channel_groups,
    group_weight_masks,
    method_groups,
)
from prunelab.masks import MaskEnforcer, apply_masks, full_masks
from prunelab.models import build_model
from prunelab.shrink import unit_layers

CIFAR = (3, 32, 32)


def canonical(groups) -> set[frozenset]:
    """A group as the set of its coupled channels, each the set of (module, out|in, index)
    it touches (BatchNorm channels count as 'out', as in Torch-Pruning)."""
    out = set()
    for g in groups:
        chans = []
        for j in range(g.size):
            items = set()
            for m in g.members:
                if m.role in ("map_in", "map_out"):
                    continue
                role = "in" if m.role == "in" else "out"
                items.add((m.module, role, int(m.index[j])))
            chans.append(frozenset(items))
        out.add(frozenset(chans))
    return out


def tp_groups(model: nn.Module, x: torch.Tensor, classifier: nn.Module) -> set[frozenset]:
    tp = pytest.importorskip("torch_pruning")
    model = copy.deepcopy(model)
    names = {m: n for n, m in model.named_modules()}
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    classifier = model.get_submodule(names_of(classifier, model, names))
    out = set()
    for g in dg.get_all_groups(ignored_layers=[classifier],
                               root_module_types=[nn.Conv2d, nn.Linear]):
        n = len(g[0][1])
        chans = [set() for _ in range(n)]
        for dep, idxs in g:
            mod = dep.target.module
            if mod not in names:
                continue  # Torch-Pruning's own element-wise/reshape nodes
            role = "out" if dep.handler.__name__ == "prune_out_channels" else "in"
            for j, i in enumerate(idxs):
                while len(chans) <= j:  # option A: Torch-Pruning's index lists disagree
                    chans.append(set())
                chans[j].add((names[mod], role, int(getattr(i, "idx", i))))
        out.add(frozenset(frozenset(c) for c in chans))
    return out


def names_of(module, model, names) -> str:
    return module if isinstance(module, str) else names[module]


TP_MODELS = [
    ("resnet20", {"width": 0.25, "shortcut": "B"}, "fc"),
    ("vgg16-bn", {"width": 0.125}, "classifier"),
    ("wrn-16-4", {"width": 0.25}, "fc"),
    ("wrn-22-2", {"width": 0.25}, "fc"),
]


@pytest.mark.parametrize("name,opts,classifier", TP_MODELS)
def test_groups_equal_torch_pruning(name, opts, classifier):
    torch.manual_seed(0)
    model = build_model(name, CIFAR, 10, **opts)
    ours = canonical(channel_groups(model))
    theirs = tp_groups(model, torch.randn(2, *CIFAR), classifier)
    assert ours == theirs
    # the residual streams are one group per stage, every block's output and BN in it
    if name.startswith("resnet"):
        stream = next(g for g in channel_groups(model) if g.name == "layer2.0.conv2")
        mods = {(m.module, m.role) for m in stream.members}
        for b in range(3):
            assert (f"layer2.{b}.conv2", "out") in mods and (f"layer2.{b}.bn2", "bn") in mods
        assert {("layer2.0.shortcut.0", "out"), ("layer3.0.shortcut.0", "in")} <= mods


def test_option_a_groups_map_channel_i_to_i_plus_left():
    torch.manual_seed(0)
    model = build_model("resnet20", CIFAR, 10, width=0.5, shortcut="A")  # 8-16-32
    groups = {g.name: g for g in channel_groups(model)}
    stem = groups["conv1"]
    idx = {(m.module, m.role): m.index.tolist() for m in stem.members}
    assert idx[("conv1", "out")] == list(range(8))
    assert idx[("layer2.0.shortcut", "map_in")] == list(range(8))
    assert idx[("layer2.0.shortcut", "map_out")] == list(range(4, 12))  # left = (16 - 8) // 2
    assert idx[("layer2.2.conv2", "out")] == list(range(4, 12))
    assert idx[("layer3.0.shortcut", "map_out")] == list(range(12, 20))  # + left = 8
    assert idx[("fc", "in")] == list(range(12, 20))
    # the channels stage 2 adds (padded with zeros on the shortcut) are a group of their own
    extra = groups["layer2.0.conv2"]
    assert extra.producers[0].index.tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
    assert {(m.module, m.role) for m in extra.members} >= {("layer3.2.conv2", "out"),
                                                           ("fc", "in")}
    assert groups["layer3.0.conv2"].size == 32 - 16
    # every stream channel of the last stage is in exactly one group
    fc_cols = sorted(c for g in groups.values() for m in g.consumers if m.module == "fc"
                     for c in m.index.tolist())
    assert fc_cols == list(range(32))


def test_torch_pruning_merges_the_option_a_stages():
    """Why Torch-Pruning is not used for option A (documented in docs/channels.md): it takes
    the zero pad as element-wise, so stem channel 0 is tied to channel 0 of every later stage
    (ours: 0 + left), and the network it prunes fails in forward."""
    tp = pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    model = build_model("resnet20", CIFAR, 10, width=0.5, shortcut="A")
    ours = next(g for g in channel_groups(model) if g.name == "conv1")
    assert int(next(m for m in ours.members if m.module == "layer3.2.conv2").index[0]) == 12
    names = {m: n for n, m in model.named_modules()}
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(2, *CIFAR))
    group = dg.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[0])
    theirs = {names[d.target.module]: [int(getattr(i, "idx", i)) for i in idxs]
              for d, idxs in group if d.target.module in names
              and d.handler.__name__ == "prune_out_channels"}
    assert theirs["layer3.2.conv2"] == [0] and theirs["layer2.0.conv2"] == [0]
    group.prune()
    with pytest.raises(RuntimeError):
        model(torch.randn(2, *CIFAR))


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_zeroing_a_group_channel_zeroes_it_everywhere_and_nothing_else(shortcut):
    """Zero every member of one stem-stream channel: in every block's residual sum exactly the
    position the group's index map gives is zero (eval mode), in every stage it reaches."""
    torch.manual_seed(0)
    model = build_model("resnet20", CIFAR, 10, width=0.5, shortcut=shortcut).eval()
    groups = channel_groups(model)
    stem = next(g for g in groups if g.name == "conv1")
    keep = {"conv1": torch.ones(stem.size, dtype=torch.bool)}
    keep["conv1"][3] = False
    x = torch.randn(4, *CIFAR)

    def zero_channels() -> dict[str, torch.Tensor]:
        outs = {}
        # the input of each block's last ReLU: the residual sum, pre-activation
        hooks = [m.register_forward_hook(lambda mod, i, o, n=n: outs.__setitem__(n, i[0]))
                 for n, m in model.named_modules() if n.endswith("relu2")]
        with torch.no_grad():
            model(x)
        for h in hooks:
            h.remove()
        return {n: o.abs().amax(dim=(0, 2, 3)) == 0 for n, o in outs.items()}

    assert not any(bool(z.any()) for z in zero_channels().values())
    apply_masks(model, group_weight_masks(model, groups, keep))
    after = zero_channels()
    expected = {m.module: int(m.index[3]) for m in stem.members if m.role == "bn"}
    shifts = {1: 0, 2: 4, 3: 12} if shortcut == "A" else {1: 0, 2: None, 3: None}
    for stage, shift in shifts.items():
        for b in range(3):
            name = f"layer{stage}.{b}.relu2"
            zero = after[name].nonzero().flatten().tolist()
            if shift is None:
                assert zero == [] and f"layer{stage}.{b}.bn2" not in expected
            else:
                assert zero == [3 + shift]
                assert expected[f"layer{stage}.{b}.bn2"] == 3 + shift


def test_chain_groups_are_the_hidden_layers(tiny_cnn, tiny_mlp):
    nets = [tiny_cnn, tiny_mlp, build_model("lenet5", (1, 28, 28), 10),
            build_model("conv-small", (1, 28, 28), 10),
            build_model("lenet5-avg", (1, 28, 28), 10)]
    shapes = [(1, 1, 10, 10), (1, 6), None, None, None]
    for net, shape in zip(nets, shapes):
        x = torch.zeros(shape) if shape else None
        groups = channel_groups(net, x)
        layers = unit_layers(net)
        assert [g.name for g in groups] == [L.name for L in layers]
        for g, L in zip(groups, layers):
            assert g.size == L.units
            assert [(m.module, m.role) for m in g.members] == [(L.name, "out"),
                                                               (L.next_name, "in")]
            assert g.consumers[0].per == L.per_unit
            assert g.producers[0].index.tolist() == list(range(L.units))


class _Functional(nn.Module):
    """Functional forms the analysis follows: F.relu, a channel concatenation, a spatial
    slice and pad, torch.flatten and view(n, -1), a mean over space, an SE-style product."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 2, 1)
        self.c = nn.Conv2d(6, 5, 3)
        self.gate = nn.Linear(5, 5)
        self.fc = nn.Linear(5 * 3 * 3, 3)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        h = torch.cat([F.relu(self.a(x)), self.b(x)], dim=1)
        h = F.pad(h[:, :, 1:, 1:], (0, 1, 0, 1))
        h = F.max_pool2d(F.relu(self.c(h)), 2)
        s = torch.sigmoid(self.gate(h.mean((2, 3))))
        h = h * s[:, :, None, None]
        return self.fc(torch.flatten(h, 1)) + self.fc2(h.view(h.size(0), -1)[:, :5])


def test_functional_forms_are_followed_or_refused_by_name():
    torch.manual_seed(0)
    model = _Functional()
    result = analyse(model, torch.zeros(1, 3, 8, 8))
    groups = result.by_name()
    assert groups["a"].by_role("in")[0].index.tolist() == [0, 1, 2, 3]
    assert groups["b"].by_role("in")[0].index.tolist() == [4, 5]
    assert groups["a"].zero_preserving and groups["b"].zero_preserving
    # c's channels: tied to gate's output (the product), read by gate, fc (4 columns each)
    # and, through a view and a column slice, by fc2: the slice is not followed
    assert "c" not in groups and "gate" not in groups
    assert len(result.refused) == 1 and "getitem" in result.refused[0]
    with pytest.raises(MaskError, match="getitem"):
        channel_groups(model, torch.zeros(1, 3, 8, 8), strict=True)


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = self.conv(x)
        if h.sum() > 0:  # data-dependent control flow
            h = h.relu()
        return self.fc(h.mean((2, 3)))


class _Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.dw = nn.Conv2d(4, 4, 3, groups=4)
        self.conv2 = nn.Conv2d(4, 3, 1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.conv2(self.dw(self.conv(x))).mean((2, 3)))


class _Matmul(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.w = nn.Parameter(torch.randn(6, 6))
        self.fc2 = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)) @ self.w)


def test_refusals_name_the_layer_and_weight_methods_still_work():
    with pytest.raises(MaskError, match="cannot trace _Untraceable") as err:
        channel_groups(_Untraceable(), torch.zeros(1, 1, 6, 6))
    assert "\n" not in str(err.value)
    grouped = analyse(_Grouped(), torch.zeros(1, 2, 8, 8))
    assert grouped.refused == ["grouped convolution 'dw' (groups=4) at node 'dw'"]
    assert [g.name for g in grouped.groups] == ["conv2"]  # conv2 -> fc is still prunable
    with pytest.raises(MaskError, match="grouped convolution 'dw'"):
        method_groups(_Grouped(), torch.zeros(1, 2, 8, 8), "method 'units'")
    mat = analyse(_Matmul(), torch.zeros(1, 4))
    assert mat.groups == [] and "matmul" in mat.refused[0]
    for model, x in ((_Untraceable(), torch.zeros(1, 1, 6, 6)), (_Grouped(),
                                                                  torch.zeros(2, 2, 8, 8))):
        masks = full_masks(model)
        enforcer = MaskEnforcer(model, masks)
        assert enforcer.masks.keys() == masks.keys()
        model(x)
    with pytest.raises(ConfigError, match="needs an example input"):
        channel_groups(_Grouped())


def test_alive_channels_sees_zeroed_and_unread_channels():
    torch.manual_seed(0)
    model = build_model("vgg11-bn", CIFAR, 10, width=0.125)
    groups = channel_groups(model)
    assert all(bool(a.all()) for a in alive_channels(model, groups).values())
    g = groups[2]
    keep = torch.ones(g.size, dtype=torch.bool)
    keep[[1, 5]] = False
    apply_masks(model, group_weight_masks(model, groups, {g.name: keep}))
    alive = alive_channels(model, groups)
    assert alive[g.name].tolist() == keep.tolist()
    with torch.no_grad():  # only the consumer's columns zero: the channel is unread, dead
        model.get_submodule(groups[3].consumers[0].module).weight[:, 0] = 0
    assert not bool(alive_channels(model, groups)[groups[3].name][0])
