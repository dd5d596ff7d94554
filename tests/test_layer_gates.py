"""Layer gates (prunelab.sections, methods/layer_gates.py): removing a gated-off section or
unit is exact, the rebuilt optimizer state follows the kept parameters, section and unit
gates train together, the complexity weights set the prior as documented, bad input is one
line."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prunelab.config import TrainConfig
from prunelab.data import load_dataset
from prunelab.errors import ConfigError
from prunelab.methods.base import TrainContext
from prunelab.methods.layer_gates import LayerGating, SectionGates, structure_costs
from prunelab.models import build_model, mlp
from prunelab.sections import (
    Section,
    architecture,
    complexity,
    from_architecture,
    rebuild,
    rebuild_with_optimizer,
    sections_of,
    to_sections,
)
from prunelab.shrink import from_architecture as shrink_from_architecture
from prunelab.train import Trainer


def _gates(model: nn.Module, sections: dict[str, float],
           units: dict[str, torch.Tensor] | None = None) -> SectionGates:
    """Hooks with fixed thetas (0/1 make training mode deterministic): one flat theta,
    sections first, then each unit vector."""
    units = units or {}
    sizes = [1] * len(sections) + [u.numel() for u in units.values()]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    parts = [slice(a, a + n) for a, n in zip(starts, sizes)]
    theta = torch.cat([torch.tensor([float(v)]) for v in sections.values()]
                      + [u.float() for u in units.values()]).requires_grad_(True)
    return SectionGates(model, theta, dict(zip(sections, parts[:len(sections)])),
                        dict(zip(units, parts[len(sections):])))


def _mlp(widths=(8, 8, 8), inputs=6, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    model, _ = to_sections(mlp((inputs,), 3, widths=list(widths)))
    return model


@pytest.mark.parametrize("kind", ["mlp", "resnet-A", "resnet-B", "wrn"])
def test_removing_a_gated_off_section_leaves_the_outputs_equal(kind):
    torch.manual_seed(0)
    if kind == "mlp":
        model, x = _mlp(), torch.randn(16, 6)
        off, on = ["layer1", "layer3"], ["layer2"]  # layer1 has a projection shortcut
    else:
        name = "wrn-16-4" if kind == "wrn" else "resnet20"
        opts = {"width": 0.125} if kind == "wrn" else {
            "width": 0.25, "shortcut": kind[-1]}
        model, _ = to_sections(build_model(name, (1, 28, 28), 10, **opts))
        x = torch.randn(4, 1, 28, 28)
        off = ["layer1.1", "layer2.0", "layer3.0"]  # stage transitions included
        on = [n for n in sections_of(model) if n not in off]
    gates = _gates(model, {**{n: 0.0 for n in off}, **{n: 1.0 for n in on}})
    for train in (False, True):
        model.train(train)
        with torch.no_grad():
            gated = model(x)
        gates.remove()
        small, _ = rebuild(model, off)
        small.train(train)
        with torch.no_grad():
            assert torch.allclose(small(x), gated, atol=1e-5), (kind, train)
        gates = _gates(model, {**{n: 0.0 for n in off}, **{n: 1.0 for n in on}})
    gates.remove()
    assert all(sections_of(small)[n].removed for n in off)
    cx_big, cx_small = complexity(model, x.shape[1:]), complexity(small, x.shape[1:])
    saved = sum(cx_big.sections[n][0] for n in off)
    assert cx_big.params - cx_small.params == saved  # the bodies' parameters, shortcuts kept
    assert cx_small.flops < cx_big.flops


def test_removing_gated_off_units_twice_is_exact_and_scatters_into_the_stream():
    model, x = _mlp(), torch.randn(16, 6)
    keep1 = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool)
    gates = _gates(model, {"layer2": 1.0}, {"layer2": keep1.float()})
    with torch.no_grad():
        gated = model(x)
    gates.remove()
    small, plans = rebuild(model, keep_units={"layer2": keep1})
    assert sections_of(small)["layer2"].units() == 6
    assert plans["layer2.body.0.weight"][0] == "rows"
    with torch.no_grad():
        assert torch.allclose(small(x), gated, atol=1e-6)
    keep2 = torch.tensor([0, 1, 1, 1, 1, 1], dtype=torch.bool)  # drops original unit 0
    smaller, _ = rebuild(small, keep_units={"layer2": keep2})
    scatter = sections_of(smaller)["layer2"].body[-1]
    assert scatter.index.tolist() == [2, 3, 5, 6, 7] and scatter.width == 8
    with torch.no_grad():
        ref = model(x)  # the full model with units 0, 1 and 4 of layer2 gated off
    gates = _gates(model, {"layer2": 1.0},
                   {"layer2": torch.tensor([0, 0, 1, 1, 0, 1, 1, 1.0])})
    with torch.no_grad():
        ref = model(x)
    gates.remove()
    with torch.no_grad():
        assert torch.allclose(smaller(x), ref, atol=1e-6)


def test_a_removed_projection_before_the_classifier_is_folded_into_it():
    torch.manual_seed(0)
    model, _ = to_sections(mlp((6,), 3, widths=[20]))  # layer1: 6 -> 20, projection shortcut
    x = torch.randn(8, 6)
    gates = _gates(model, {"layer1": 0.0})
    with torch.no_grad():
        gated = model(x)
    gates.remove()
    small, plans = rebuild(model, ["layer1"])
    assert isinstance(sections_of(small)["layer1"].shortcut, nn.Identity)
    assert small.output.weight.shape == (3, 6) and plans["output.weight"][0] == "fresh"
    assert sum(p.numel() for p in small.parameters()) == 3 * 6 + 3
    with torch.no_grad():
        assert torch.allclose(small(x), gated, atol=1e-6)
    unfolded, _ = rebuild(model, ["layer1"], fold=False)
    assert sum(p.numel() for p in unfolded.parameters()) == 6 * 20 + 20 * 3 + 3


@pytest.mark.parametrize("opt_name", ["adam", "sgd"])
def test_the_rebuilt_optimizer_state_follows_the_kept_parameters(opt_name):
    """Train a gated model (section layer3 and two units of layer2 at 0) and its rebuilt copy
    side by side: after the rebuild, state and every later step agree on the kept rows."""
    model = _mlp()
    make = (lambda ps: torch.optim.Adam(ps, lr=1e-2)) if opt_name == "adam" else (
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9))
    opt = make(model.parameters())
    keep = torch.tensor([1, 1, 0, 1, 1, 0, 1, 1], dtype=torch.bool)
    batches = [(torch.randn(16, 6), torch.randint(0, 3, (16,))) for _ in range(6)]

    def step(m, o, xb, yb):
        o.zero_grad()
        F.cross_entropy(m(xb), yb).backward()
        o.step()

    gates = _gates(model, {"layer3": 0.0, "layer2": 1.0}, {"layer2": keep.float()})
    for xb, yb in batches[:3]:
        step(model, opt, xb, yb)
    gates.remove()
    small, small_opt = rebuild_with_optimizer(model, opt, ["layer3"], {"layer2": keep})
    assert type(small_opt) is type(opt)
    assert small_opt.defaults == opt.defaults
    old = dict(model.named_parameters())
    new = dict(small.named_parameters())
    assert "layer3.body.0.weight" not in new
    rows = keep.nonzero().flatten()
    for name, p in new.items():
        ref = old[name][rows] if name.startswith("layer2.body.0") else old[name]
        assert torch.equal(p, ref)
        for k, v in opt.state[old[name]].items():
            want = v[rows] if name.startswith("layer2.body.0") and v.dim() else v
            assert torch.equal(small_opt.state[p][k], want), (name, k)
    gates = _gates(model, {"layer3": 0.0, "layer2": 1.0}, {"layer2": keep.float()})
    for xb, yb in batches[3:]:
        step(model, opt, xb, yb)
        step(small, small_opt, xb, yb)
    gates.remove()
    for name, p in small.named_parameters():
        ref = old[name][rows] if name.startswith("layer2.body.0") else old[name]
        assert torch.allclose(p, ref, atol=1e-6), name


def _blobs_model(seed: int = 0) -> tuple[nn.Module, object]:
    data = load_dataset("blobs", seed=0, n_train=300)
    torch.manual_seed(seed)
    return mlp(data.input_shape, data.num_classes, widths=[12, 12, 12, 12]), data


def test_section_and_unit_gates_train_together_into_the_gated_network():
    """One run removes sections and units; the final deterministic network computes what the
    gated network computed in eval mode just before finalising."""
    model, data = _blobs_model()
    method = LayerGating(strength=0.3, layer_balance=0.1, unit_gates=True, warmup=0.0,
                         lr_theta=5.0, theta_init=0.6, penalty_scale=1.0, threshold=0.02,
                         shrink_every=5, finalize=False, gaussian_prior_as="gradient")
    cfg = TrainConfig(epochs=6, batch_size=25, optimizer="adam", lr=1e-2, seed=0,
                      eval_train=False, checkpoint_epochs=False)
    trainer = Trainer(model, data, cfg, method, progress=False)
    trainer.fit()
    s = method.summary()
    assert s["sections_removed"], s["layout"]
    kept = s["sections_kept"]
    assert len(kept) >= 2 and all(s["final_units"][n] < s["start_units"][n] for n in kept), s
    assert s["rebuilds"] >= 1 and s["train_flops_saved"] > 0
    gated = method.ctx.model
    gated.eval()
    with torch.no_grad():
        before = gated(data.x_test)
    final = method.finalize_network()
    final.eval()
    with torch.no_grad():
        assert torch.allclose(final(data.x_test), before, atol=1e-5)
    assert not any(m._forward_hooks for m in final.modules())  # the gates are gone
    assert method.metrics()["undecided"] == 0


def test_complexity_weights_set_the_costs_and_the_prior_gradient_as_documented():
    torch.manual_seed(0)
    model, _ = to_sections(mlp((4,), 3, widths=[5, 5]))
    cx = complexity(model, (4,))
    # layer1 body 4x5+5, its projection 4x5, layer2 body 5x5+5, classifier 5x3+3
    assert (cx.params, cx.flops) == (25 + 20 + 30 + 18, 2 * (20 + 20 + 25 + 15))
    assert cx.sections == {"layer1": (25, 40), "layer2": (30, 50)}
    assert cx.units == {"layer1": (5, 8), "layer2": (6, 10)}
    sec, unit = structure_costs(cx, strength=2.0, layer_balance=0.5, flops_weight=0.0)
    assert sec["layer1"] == pytest.approx(2.0 * 25 / 93) and unit["layer2"] == pytest.approx(
        2.0 * 6 / 93)
    sec, unit = structure_costs(cx, strength=2.0, layer_balance=0.5, flops_weight=1.0)
    assert sec["layer2"] == pytest.approx(2.0 * 50 / 160)
    sec, unit = structure_costs(cx, strength=2.0, layer_balance=1.0, flops_weight=0.5)
    assert sec["layer1"] == pytest.approx(2.0 * 2 * (25 / 93 + 40 / 160) / 2)
    assert unit == {"layer1": 0.0, "layer2": 0.0}
    # gamma = 1: the flattening term is the constant log 2, so d prior / d theta = c_s exactly
    method = LayerGating(strength=2.0, unit_gates=True, gamma=1.0, warmup=0.0, n_train=100,
                         penalty_scale=3.0, layer_balance=0.25, flops_weight=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method.attach(TrainContext(model, opt, steps_per_epoch=10, total_steps=100, epochs=10))
    method.batch_loss(model, torch.randn(10, 4), torch.randint(0, 3, (10,)), F.cross_entropy)
    method.penalty(model).backward()
    want_sec, want_unit = structure_costs(cx, strength=2.0, layer_balance=0.25,
                                          flops_weight=1.0)
    want = torch.tensor([want_sec["layer1"], want_sec["layer2"]] + [want_unit["layer1"]] * 5
                        + [want_unit["layer2"]] * 5)
    assert torch.allclose(method.theta.grad, want)
    # the Bernoulli prior instead ("pi"): the same cost log((1-pi)/pi) per kept structure
    method = LayerGating(cost="pi", pi=0.2, gamma=1.0, warmup=0.0, n_train=100,
                         penalty_scale=3.0)
    model2, _ = to_sections(mlp((4,), 3, widths=[5, 5]))
    method.attach(TrainContext(model2, torch.optim.SGD(model2.parameters(), lr=0.1), 10, 100,
                               10))
    method.batch_loss(model2, torch.randn(10, 4), torch.randint(0, 3, (10,)), F.cross_entropy)
    method.penalty(model2).backward()
    assert torch.allclose(method.theta.grad, torch.full((2,), 3.0 / 100 * math.log(4.0)))


def test_flops_weighted_costs_are_equal_across_resnet_stages_and_parameter_weighted_grow():
    torch.manual_seed(0)
    model, _ = to_sections(build_model("resnet20", (1, 28, 28), 10, width=0.25))
    cx = complexity(model, (1, 28, 28))
    kw = {"strength": 1.0, "layer_balance": 0.5}
    by_params, _ = structure_costs(cx, flops_weight=0.0, **kw)
    by_flops, _ = structure_costs(cx, flops_weight=1.0, **kw)
    inner = ["layer1.1", "layer2.1", "layer3.1"]  # not the stride-2 first blocks
    assert by_flops[inner[0]] == pytest.approx(by_flops[inner[1]]) == pytest.approx(
        by_flops[inner[2]])
    assert by_params[inner[1]] / by_params[inner[0]] == pytest.approx(4.0, rel=0.05)
    assert by_params[inner[2]] / by_params[inner[1]] == pytest.approx(4.0, rel=0.05)


def test_architecture_round_trip_rebuilds_the_sectioned_models():
    model = _mlp()
    small, _ = rebuild(model, ["layer3"], {"layer2": torch.tensor([1, 0] * 4, dtype=bool)})
    for m, x in [(small, torch.randn(5, 6)),
                 (rebuild(to_sections(build_model("resnet20", (1, 28, 28), 10, width=0.25))[0],
                          ["layer2.0"])[0], torch.randn(2, 1, 28, 28))]:
        spec = architecture(m)
        again = shrink_from_architecture(spec)  # shrink dispatches sectioned specs here
        again.load_state_dict(m.state_dict())
        m.eval()
        again.eval()
        with torch.no_grad():
            assert torch.equal(again(x), m(x))
        assert spec == architecture(from_architecture(spec))


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="projection=False disables"):
        to_sections(mlp((6,), 3, widths=[8, 8]), projection=False)
    to_sections(mlp((6,), 3, widths=[8, 8]), projection=False, sections=["layer2"])
    with pytest.raises(ConfigError, match="option-B"):
        to_sections(build_model("resnet20", (1, 28, 28), 10, width=0.25, shortcut="B"),
                    projection=False)
    with pytest.raises(ConfigError, match="sections is empty"):
        LayerGating(sections=[])
    with pytest.raises(ConfigError, match="section 'layer9' does not exist"):
        to_sections(mlp((6,), 3, widths=[8, 8]), sections=["layer9"])
    for option, value in [("strength", -1.0), ("strength", math.inf), ("layer_balance", 1.5),
                          ("flops_weight", -0.1), ("cost", "flops")]:
        with pytest.raises(ConfigError, match=option) as err:
            LayerGating(**{option: value})
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="unit_gates=False"):
        model = build_model("resnet20", (1, 28, 28), 10, width=0.25)
        LayerGating(unit_gates=True).attach(TrainContext(
            model, torch.optim.SGD(model.parameters(), lr=0.1), 10, 100, 10))
    with pytest.raises(ConfigError, match="an MLP chain"):
        LayerGating().attach(TrainContext(
            nn.Linear(3, 2), torch.optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1), 1, 1, 1))


def test_every_section_gated_off_is_refused_or_the_last_one_kept():
    for on_empty in ("error", "keep"):
        model, data = _blobs_model()
        method = LayerGating(strength=50.0, warmup=0.0, lr_theta=1.0, threshold=0.05,
                             on_empty_network=on_empty)
        cfg = TrainConfig(epochs=2, batch_size=25, optimizer="adam", lr=1e-2, seed=0,
                          eval_train=False, checkpoint_epochs=False)
        trainer = Trainer(model, data, cfg, method, progress=False)
        if on_empty == "error":
            with pytest.raises(ConfigError, match="every section was gated off"):
                trainer.fit()
            continue
        trainer.fit()
        s = method.summary()
        assert len(s["sections_kept"]) == 1 and s["empty_network_events"]
        assert sum(not sec.removed for sec in sections_of(trainer.model).values()) == 1


def test_cli_trains_with_layer_gates_and_refuses_bad_weights(tmp_path, capsys):
    from prunelab.cli import main
    from prunelab.shrink import load_shrunk

    base = ["train", "--dataset", "xor", "--model", "mlp", "--model-option", "widths=[8,8,8]",
            "--method", "layer-gates", "--epochs", "2", "--quiet"]
    assert main(base + ["-o", "layer_balance=2", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prunelab: error:") and "layer_balance" in err and "\n" not in err
    assert main(base + ["-o", "projection=false", "--out", str(tmp_path / "b")]) == 2
    assert "projection" in capsys.readouterr().err
    out = tmp_path / "c"
    assert main(base + ["-o", "strength=20", "-o", "warmup=0", "--out", str(out)]) == 0
    small = load_shrunk(out / "shrunk.pt")
    assert any(isinstance(m, Section) and m.removed for m in small.modules())


def test_rebuild_keeps_adamw_working():
    """The rebuilt optimizer is made like shrink's (torch 2.13's AdamW refuses its own
    `decoupled_weight_decay` default as an argument)."""
    from prunelab.sections import carry_optimizer

    torch.manual_seed(0)
    model, _ = to_sections(mlp((4,), 2, widths=[6, 6]))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.nn.functional.cross_entropy(model(torch.randn(5, 4)),
                                      torch.tensor([0, 1, 0, 1, 0])).backward()
    opt.step()
    small, plans = rebuild(model, ["layer2"])
    new_opt = carry_optimizer(opt, model, small, plans)
    assert type(new_opt) is torch.optim.AdamW and new_opt.state
