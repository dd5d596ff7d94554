"""Physical shrinking: identical outputs to the masked (or mean-replaced) model, optimizer
state carried over, counts, saving, and clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prunelab.errors import ConfigError, MaskError
from prunelab.masks import (
    MaskEnforcer,
    alive_units,
    apply_masks,
    sparsity_report,
    unit_masks_to_weight_masks,
)
from prunelab.models import build_model, count_parameters
from prunelab.scores import unit_means
from prunelab.shrink import (
    architecture,
    check_unit_masks,
    flat_modules,
    fold_means,
    load_shrunk,
    save_shrunk,
    shrink,
    shrink_dead_units,
    shrink_report,
    shrink_tensors,
    shrink_with_optimizer,
    unit_layers,
    widths,
)


def random_unit_masks(model: nn.Module, seed: int = 0, keep: float = 0.6) -> dict:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for L in unit_layers(model):
        m = torch.rand(L.units, generator=gen) < keep
        m[0] = True  # never empty
        out[L.name] = m
    return out


def masked_copy(model: nn.Module, um: dict) -> nn.Module:
    mm = copy.deepcopy(model)
    apply_masks(mm, unit_masks_to_weight_masks(mm, um))
    return mm


def mean_replaced_output(model: nn.Module, um: dict, means: dict, x: torch.Tensor):
    """Reference: the model with each removed unit's post-activation output set to its mean."""
    flat = dict(flat_modules(model))
    handles = []
    for L in unit_layers(model):
        if L.name not in um:
            continue
        removed = ~um[L.name]

        def hook(mod, inp, out, removed=removed, mu=means[L.name]):
            out = out.clone()
            shape = (1, -1) + (1,) * (out.dim() - 2)
            keep = (~removed).view(shape).to(out)
            return out * keep + (mu * removed).view(shape).to(out)

        handles.append(flat[L.point_name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in handles:
            h.remove()


@pytest.fixture
def cnn_pad():
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 5, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(5, 6, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(6 * 2 * 2, 7), nn.Sigmoid(), nn.Dropout(0.2), nn.Linear(7, 3),
    )


@pytest.mark.parametrize("fixture", ["tiny_mlp", "tiny_cnn", "cnn_pad"])
def test_shrink_matches_masked_model(fixture, request):
    model = request.getfixturevalue(fixture).eval()
    x = {"tiny_mlp": torch.randn(16, 6), "tiny_cnn": torch.randn(16, 1, 10, 10),
         "cnn_pad": torch.randn(16, 1, 8, 8)}[fixture]
    before = copy.deepcopy(model.state_dict())
    for seed in range(3):
        um = random_unit_masks(model, seed)
        small = shrink(model, um).eval()
        with torch.no_grad():
            torch.testing.assert_close(small(x), masked_copy(model, um)(x), rtol=1e-5,
                                       atol=1e-6)
        kept = {L.name: int(um[L.name].sum()) for L in unit_layers(model)}
        assert {L.name: L.units for L in unit_layers(small)} == kept
        assert count_parameters(small) < count_parameters(model)
    for k, v in model.state_dict().items():  # the input model is untouched
        assert torch.equal(v, before[k])


def test_shrink_conv_small_geometry():
    model = build_model("conv-small", (1, 28, 28), 10).eval()
    um = {"0": torch.arange(8) % 2 == 0, "3": torch.arange(16) < 6, "7": torch.arange(64) < 20}
    small = shrink(model, um)
    assert small[7].in_features == 6 * 4 * 4 and small[7].out_features == 20
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(small(x), masked_copy(model, um)(x), rtol=1e-5, atol=1e-6)
    rep = shrink_report(model, small, (1, 28, 28))
    assert rep["params_before"] == 20522 == count_parameters(model)
    assert rep["params_after"] == count_parameters(small)
    expected = 4 * 25 + 4 + 6 * 4 * 25 + 6 + 96 * 20 + 20 + 20 * 10 + 10
    assert rep["params_after"] == expected
    assert rep["flop_ratio"] > 1 and rep["widths_after"]["3"] == 6


@pytest.mark.parametrize("fixture", ["tiny_mlp", "tiny_cnn"])
def test_bias_propagation_equals_mean_replacement(fixture, request):
    model = request.getfixturevalue(fixture).eval()
    x = torch.randn(32, 6) if fixture == "tiny_mlp" else torch.randn(32, 1, 10, 10)
    means = unit_means(model, (x, torch.zeros(32, dtype=torch.long)))
    for seed in range(3):
        um = random_unit_masks(model, seed)
        small = shrink(model, um, means=means).eval()
        with torch.no_grad():
            out = small(x)
        torch.testing.assert_close(out, mean_replaced_output(model, um, means, x), rtol=1e-5,
                                   atol=1e-5)
        # and it differs from plain removal (the means are not zero)
        assert not torch.allclose(out, shrink(model, um)(x), atol=1e-4)


def test_bias_propagation_through_maxpool_tanh_sigmoid():
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 5, 3), nn.Tanh(), nn.MaxPool2d(2), nn.Conv2d(5, 6, 2), nn.Sigmoid(),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(6 * 1 * 1, 4), nn.ELU(), nn.Linear(4, 2),
    ).eval()
    x = torch.randn(8, 1, 8, 8)
    means = {L.name: torch.randn(L.units) for L in unit_layers(model)}  # any constants work
    um = {"0": torch.tensor([1, 0, 1, 0, 1]).bool(), "3": torch.tensor([0, 1, 1, 0, 1, 1]).bool(),
          "7": torch.tensor([1, 0, 0, 1]).bool()}
    with torch.no_grad():
        torch.testing.assert_close(shrink(model, um, means=means)(x),
                                   mean_replaced_output(model, um, means, x), rtol=1e-5,
                                   atol=1e-5)


def test_fold_means_in_place_then_mask_equals_mean_replacement(tiny_cnn):
    model = tiny_cnn.eval()
    x = torch.randn(8, 1, 10, 10)
    means = {L.name: torch.rand(L.units) for L in unit_layers(model)}
    um = random_unit_masks(model, 5)
    ref = mean_replaced_output(model, um, means, x)
    folded = copy.deepcopy(model)
    fold_means(folded, {k: ~v for k, v in um.items()}, means)
    apply_masks(folded, unit_masks_to_weight_masks(folded, um))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(shrink(folded, um)(x), ref, rtol=1e-5, atol=1e-5)


def test_mean_replacement_refuses_padded_next_conv(cnn_pad):
    um = random_unit_masks(cnn_pad, 0)
    means = {L.name: torch.ones(L.units) for L in unit_layers(cnn_pad)}
    with pytest.raises(MaskError, match="padding"):
        shrink(cnn_pad, um, means=means)
    shrink(cnn_pad, um)  # plain removal is fine


def test_bad_unit_masks(tiny_mlp, tiny_cnn):
    with pytest.raises(MaskError, match="every unit of layer '1'"):
        shrink(tiny_mlp, {"1": torch.zeros(8, dtype=torch.bool)})
    with pytest.raises(MaskError, match="output layer"):
        shrink(tiny_mlp, {"5": torch.tensor([True, False, True])})
    with pytest.raises(MaskError, match="no Linear/Conv2d layer by that name"):
        shrink(tiny_mlp, {"2": torch.ones(8, dtype=torch.bool)})
    with pytest.raises(MaskError, match="shape"):
        check_unit_masks(tiny_mlp, {"1": torch.ones(5, dtype=torch.bool)})
    # models that are not plain chains go to the channel groups (tests/test_graph_shrink.py),
    # which need an example input unless prunelab.models.build_model built the model
    bn = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(ConfigError, match="needs an example input"):
        shrink(bn, {"0": torch.tensor([1, 1, 0, 1, 1]).bool()})
    small = shrink(bn, {"0": torch.tensor([1, 1, 0, 1, 1]).bool()},
                   example_input=torch.zeros(1, 4))
    assert small[1].num_features == 4 and small[3].in_features == 4

    class Net(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ConfigError, match="needs an example input"):
        shrink(Net(), {})
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(MaskError, match="grouped"):
        shrink(grouped, {"0": torch.ones(4, dtype=torch.bool)},
               example_input=torch.zeros(1, 4, 3, 3))


OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    # torch 2.13's AdamW.defaults holds decoupled_weight_decay, which AdamW() refuses
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "nadam": lambda ps: torch.optim.NAdam(ps, lr=1e-2, decoupled_weight_decay=True),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-3, momentum=0.5),
}


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_shrink_mid_training_keeps_optimizer_consistent(tiny_cnn, opt_name):
    """Masked training then shrink: the shrunk model with the carried-over optimizer follows
    the same trajectory as the masked model with the original optimizer."""
    model = tiny_cnn
    um = random_unit_masks(model, 2)
    opt = OPTIMIZERS[opt_name](model.parameters())
    MaskEnforcer(model, unit_masks_to_weight_masks(model, um)).attach(opt)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 1, 10, 10, generator=gen), torch.randint(0, 3, (8,), generator=gen))
               for _ in range(6)]

    def step(m, o, b):
        o.zero_grad()
        F.cross_entropy(m(b[0]), b[1]).backward()
        o.step()

    for b in batches[:3]:
        step(model, opt, b)
    small, small_opt = shrink_with_optimizer(model, um, opt)
    assert type(small_opt) is type(opt)
    assert {k: v for k, v in small_opt.param_groups[0].items() if k != "params"} == {
        k: v for k, v in opt.param_groups[0].items() if k != "params"}
    p_small = dict(small.named_parameters())
    first = p_small["0.weight"]
    state = small_opt.state[first]
    key = {"sgd": "momentum_buffer", "rmsprop": "square_avg"}.get(opt_name, "exp_avg")
    torch.testing.assert_close(state[key], opt.state[model[0].weight][key][um["0"]])
    for b in batches[3:]:
        step(model, opt, b)
        step(small, small_opt, b)
    with torch.no_grad():
        torch.testing.assert_close(small(batches[0][0]), model(batches[0][0]), rtol=1e-4,
                                   atol=1e-5)


def test_shrink_tensors_maps_masks(tiny_mlp):
    um = random_unit_masks(tiny_mlp, 1)
    wm = unit_masks_to_weight_masks(tiny_mlp, um)
    small = shrink(tiny_mlp, um)
    mapped = shrink_tensors(tiny_mlp, um, wm)
    for name, p in small.named_parameters():
        if name in mapped:
            assert mapped[name].shape == p.shape
            assert bool(mapped[name].all())  # every kept weight was kept by the mask


def test_save_and_load_shrunk(tmp_path, tiny_cnn):
    small = shrink(tiny_cnn, random_unit_masks(tiny_cnn, 0)).eval()
    save_shrunk(tmp_path / "shrunk.pt", small)
    loaded = load_shrunk(tmp_path / "shrunk.pt").eval()
    x = torch.randn(3, 1, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x))
    assert architecture(loaded) == architecture(small)


def test_optimizer_with_foreign_parameter_errors(tiny_mlp):
    extra = nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD(list(tiny_mlp.parameters()) + [extra], lr=0.1)
    with pytest.raises(ConfigError, match="not the model's"):
        shrink_with_optimizer(tiny_mlp, random_unit_masks(tiny_mlp, 0), opt)


def _chain_with_constant_units():
    """A conv -> pool -> flatten -> linear chain in which some units have no incoming weights
    but a positive bias (ReLU(bias) > 0 still feeds the next layer), one unit is fed only by
    such a unit, and one unit has no outgoing weights."""
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(4 * 2 * 2, 6), nn.ReLU(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    with torch.no_grad():
        model[0].weight[1] = 0.0
        model[0].bias[1] = 0.7  # filter 1: constant ReLU(0.7) on every position
        model[4].weight[2] = 0.0
        model[4].bias[2] = 0.4  # unit 2: constant 0.4
        model[4].weight[3] = 0.0
        model[4].bias[3] = -0.3  # unit 3: constant ReLU(-0.3) = 0
        model[6].weight[1] = 0.0
        model[6].weight[1, 2] = 1.5  # unit 1 of the Tanh layer is fed by constant unit 2 only
        model[8].weight[:, 4] = 0.0  # unit 4 of the Tanh layer feeds nothing
    return model


def test_shrinking_dead_units_folds_their_constant_outputs():
    """Units with no incoming weights still output activation(bias); removing them must fold
    that constant into the next layer's bias (issue 20.6d: plain removal changed logits)."""
    model = _chain_with_constant_units().eval()
    alive = alive_units(model)
    assert alive["0"].tolist() == [True, False, True, True]
    assert alive["4"].tolist() == [True, True, False, False, True, True]
    assert alive["6"].tolist() == [True, False, True, True, False]
    small = shrink_dead_units(model).eval()
    assert widths(small) == {"0": 3, "4": 4, "6": 3, "8": 3}
    x = torch.randn(64, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (small(x) - model(x)).abs().max() <= 1e-6
        # plain removal (the constants dropped) is not the same network
        assert (shrink(model, alive)(x) - model(x)).abs().max() > 1e-2
    report = sparsity_report(model, None, (1, 6, 6))["global"]
    assert report["params_after_shrink"] == count_parameters(small)
    assert report["flops_after_shrink"] == shrink_report(model, small, (1, 6, 6))["flops_after"]


def test_dead_units_folded_into_a_layer_without_bias_count_its_new_bias():
    model = _chain_with_constant_units()
    model[6] = nn.Linear(6, 5, bias=False)
    with torch.no_grad():
        model[6].weight[1] = 0.0
        model[6].weight[1, 2] = 1.5
    small = shrink_dead_units(model.eval()).eval()
    x = torch.randn(16, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (small(x) - model(x)).abs().max() <= 1e-6
    assert sparsity_report(model, None, (1, 6, 6))["global"]["params_after_shrink"] == \
        count_parameters(small)
