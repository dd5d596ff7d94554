"""Masks: enforcement through optimizers, reporting, unit masks, files, torch.prune export."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from prunelab.errors import DataError, MaskError
from prunelab.masks import (
    MaskEnforcer,
    alive_units,
    apply_masks,
    from_torch_prune,
    full_masks,
    load_masks,
    masks_from_weights,
    prunable_parameters,
    save_masks,
    sparsity_report,
    to_torch_prune,
    unit_masks_to_weight_masks,
    validate_masks,
)

OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
    "adam_amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True, weight_decay=1e-3),
    "sgd_dampening": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.5,
                                               weight_decay=1e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.5),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2),
}


def _random_masks(model, density: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) < density
            for n, p in prunable_parameters(model).items()}


def _net(seed: int):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    opt=st.sampled_from(sorted(OPTIMIZERS)),
    density=st.floats(0.05, 0.95),
    seed=st.integers(0, 10_000),
    steps=st.integers(1, 60),
    prune_at=st.integers(0, 30),
    rezero=st.sampled_from([None, True]),
)
def test_masked_weights_stay_exactly_zero_through_any_optimizer(opt, density, seed, steps,
                                                                 prune_at, rezero):
    # rezero=None skips the post-step re-zeroing for SGD/Adam/AdamW: the invariant must hold
    # from the masked gradients and cleared state alone.
    model = _net(seed)
    optimizer = OPTIMIZERS[opt](model.parameters())
    enforcer = MaskEnforcer(model, full_masks(model)).attach(optimizer, rezero=rezero)
    masks = _random_masks(model, density, seed)
    assume(any(m.any() for m in masks.values()))  # a mask keeping nothing has nothing to train
    g = torch.Generator().manual_seed(seed + 1)
    params = dict(model.named_parameters())
    for step in range(steps + prune_at):
        if step == prune_at:  # prune mid-training: momentum and Adam state already exist
            enforcer.update(masks)
        x = torch.randn(16, 5, generator=g)
        y = torch.randint(0, 3, (16,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= prune_at:
            for name, m in masks.items():
                assert torch.all(params[name][~m] == 0), f"{name} revived at step {step}"
    # ... and the kept weights did train (the enforcement is not freezing everything).
    kept_changed = any(
        (params[n][m] != 0).any() for n, m in masks.items() if m.any()
    )
    assert kept_changed


def test_optimizer_state_cleared_at_pruned_entries():
    model = _net(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    enforcer = MaskEnforcer(model, full_masks(model)).attach(opt)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    masks = _random_masks(model, 0.5, 1)
    enforcer.update(masks)
    p = model[0].weight
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.all(opt.state[p][key][~masks["0.weight"]] == 0)
    # With zero gradients and the hooks removed, only stale Adam moments could move a pruned
    # weight: they were cleared, so it stays at zero.
    enforcer.detach()
    opt.zero_grad(set_to_none=False)
    opt.step()
    assert torch.all(p[~masks["0.weight"]] == 0)


def test_detached_enforcer_no_longer_masks():
    model = _net(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    enforcer = MaskEnforcer(model, _random_masks(model, 0.5, 2)).attach(opt)
    enforcer.detach()
    reference = _reference_grads(model)
    _backward(model)
    for n, p in model.named_parameters():  # no gradient hook left either
        assert torch.equal(p.grad, reference[n])
    opt.step()
    assert (model[0].weight != 0).float().mean() > 0.9


def _backward(model, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)
    torch.nn.functional.cross_entropy(model(x), y).backward()


def _reference_grads(model, seed: int = 0) -> dict[str, torch.Tensor]:
    """The unmasked gradients of `_backward` at the model's current weights (a hook-free
    copy)."""
    import copy

    twin = copy.deepcopy(model)  # tensor hooks are not copied
    _backward(twin, seed)
    return {n: p.grad.clone() for n, p in twin.named_parameters()}


def test_gradients_are_masked_when_backward_returns_and_follow_updates():
    model = _net(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    masks = _random_masks(model, 0.5, 2)
    enforcer = MaskEnforcer(model, masks).attach(opt)
    params = dict(model.named_parameters())
    ref = _reference_grads(model)
    assert all(bool((ref[n][~m] != 0).any()) for n, m in masks.items())  # something to mask
    _backward(model)
    for n, m in masks.items():
        assert torch.equal(params[n].grad, ref[n] * m)
    _backward(model, 1)  # accumulated into the same .grad: masked again
    for n, m in masks.items():
        assert torch.all(params[n].grad[~m] == 0)
    opt.step()
    more = {n: m & _random_masks(model, 0.5, 3)[n] for n, m in masks.items()}
    enforcer.update(more)
    opt.zero_grad()
    ref = _reference_grads(model)
    _backward(model)
    for n, m in more.items():
        assert torch.equal(params[n].grad, ref[n] * m)


def test_dense_gradients_leave_pruned_gradients_and_the_step_still_masks():
    """Under dense_gradients() one backward leaves the gradients of pruned entries (RigL-style
    regrowth needs them); the next step masks them before the update, so the pruned weights
    stay exactly zero even for an optimizer whose post-step re-zeroing is skipped."""
    model = _net(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    masks = _random_masks(model, 0.5, 2)
    enforcer = MaskEnforcer(model, masks).attach(opt)
    w, pruned = model[0].weight, ~masks["0.weight"]
    ref = _reference_grads(model)
    assert bool((ref["0.weight"][pruned] != 0).any())
    with enforcer.dense_gradients():
        _backward(model)
    assert torch.equal(w.grad, ref["0.weight"])
    opt.step()
    assert torch.equal(w.grad, ref["0.weight"] * masks["0.weight"])
    assert torch.all(w[pruned] == 0)
    assert torch.all(opt.state[w]["momentum_buffer"][pruned] == 0)
    opt.zero_grad()
    _backward(model)  # outside the block the hooks mask again
    assert torch.all(w.grad[pruned] == 0) and bool((w.grad != 0).any())
    # a gradient assigned by hand never went through the hooks: the step masks it
    w.grad = torch.ones_like(w)
    opt.step()
    assert torch.all(w[pruned] == 0)
    assert torch.all(opt.state[w]["momentum_buffer"][pruned] == 0)


def test_sparsity_report_counts_exactly(tiny_mlp):
    masks = full_masks(tiny_mlp)
    masks["1.weight"][:, :3] = False  # 8 rows x 3 cols = 24 pruned
    masks["3.weight"][0] = False  # one row of 8 = 8 pruned; unit 0 of layer 3 dead
    masks["5.weight"][:, 4] = False  # column 4 of the last layer: unit 4 of layer 3 unused
    apply_masks(tiny_mlp, masks)
    with torch.no_grad():
        tiny_mlp[1].bias[:2] = 0.0
    rep = sparsity_report(tiny_mlp, masks, (6,))
    g = rep["global"]
    assert g["weights"] == 6 * 8 + 8 * 5 + 5 * 3 == 103
    assert g["weights_nonzero"] == 103 - 24 - 8 - 3
    assert g["weights_kept"] == 103 - 24 - 8 - 3
    assert g["biases"] == 8 + 5 + 3 and g["biases_nonzero"] == 16 - 2
    assert g["weight_sparsity"] == pytest.approx(35 / 103)
    layers = {e["layer"]: e for e in rep["layers"]}
    assert layers["1"]["weights_nonzero"] == 48 - 24
    assert layers["3"]["units_alive"] == 3  # unit 0 has no inputs, unit 4 no outputs
    # FLOPs: 2 x MACs per sample; dense and nonzero-only.
    assert g["flops_dense"] == 2 * 103
    assert g["flops_sparse"] == 2 * (103 - 35)
    # After shrinking: 8 -> 3 units in the middle layer: 6*8 + 8*3 + 3*3 weights, biases 8+3+3
    assert g["params_after_shrink"] == 6 * 8 + 8 * 3 + 3 * 3 + 8 + 3 + 3


def test_sparsity_report_conv_flops(tiny_cnn):
    rep = sparsity_report(tiny_cnn, None, (1, 10, 10))
    layers = {e["layer"]: e for e in rep["layers"]}
    assert layers["0"]["flops_dense"] == 2 * (4 * 1 * 9) * 8 * 8
    assert layers["3"]["flops_dense"] == 2 * (6 * 4 * 9) * 2 * 2


def test_validate_masks_names_the_mismatch(tiny_mlp):
    with pytest.raises(MaskError, match="1.weight.*shape"):
        validate_masks(tiny_mlp, {"1.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(MaskError, match="nope.weight"):
        validate_masks(tiny_mlp, {"nope.weight": torch.ones(3, dtype=torch.bool)})


def test_masks_file_round_trip_and_errors(tmp_path, tiny_mlp):
    masks = _random_masks(tiny_mlp, 0.3, 0)
    save_masks(tmp_path / "m.pt", masks)
    back = load_masks(tmp_path / "m.pt", tiny_mlp)
    assert all(torch.equal(back[n], masks[n]) for n in masks)
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="bad.pt"):
        load_masks(tmp_path / "bad.pt")
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 9))
    with pytest.raises(MaskError):
        load_masks(tmp_path / "m.pt", other)


def test_torch_prune_round_trip(tiny_mlp):
    masks = _random_masks(tiny_mlp, 0.4, 3)
    x = torch.randn(4, 6)
    apply_masks(tiny_mlp, masks)
    expected = tiny_mlp(x)
    to_torch_prune(tiny_mlp, masks)
    assert hasattr(tiny_mlp[1], "weight_orig") and hasattr(tiny_mlp[1], "weight_mask")
    assert torch.allclose(tiny_mlp(x), expected)
    back = from_torch_prune(tiny_mlp)
    assert set(back) == set(masks) and all(torch.equal(back[n], masks[n]) for n in masks)
    assert not hasattr(tiny_mlp[1], "weight_orig")
    assert torch.equal(masks_from_weights(tiny_mlp)["1.weight"] | ~masks["1.weight"],
                       torch.ones_like(masks["1.weight"]))


def test_unit_masks_expand_through_flatten(tiny_cnn):
    units = {"3": torch.tensor([True, False, True, True, False, True])}
    masks = unit_masks_to_weight_masks(tiny_cnn, units)
    assert masks["3.weight"][1].sum() == 0 and masks["3.weight"][0].all()
    assert masks["3.bias"].tolist() == units["3"].tolist()
    # Linear 6 reads 6 channels x 4 positions: columns 4..7 and 16..19 belong to dead filters.
    dead_cols = list(range(4, 8)) + list(range(16, 20))
    assert not masks["6.weight"][:, dead_cols].any()
    assert masks["6.weight"].sum() == 7 * (24 - 8)
    apply_masks(tiny_cnn, masks)
    alive = alive_units(tiny_cnn)
    assert alive["3"].tolist() == units["3"].tolist()


def test_unit_mask_errors(tiny_mlp):
    with pytest.raises(MaskError, match="unit mask for '1'"):
        unit_masks_to_weight_masks(tiny_mlp, {"1": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(MaskError, match="'2'"):
        unit_masks_to_weight_masks(tiny_mlp, {"2": torch.ones(8, dtype=torch.bool)})


def _torch_prune_twin(model, masks):
    """A copy of `model` pruned with torch.nn.utils.prune, and its parameters listed in the
    order of `model`'s (weight_orig in place of weight), so that order-dependent reductions
    such as clip_grad_norm_'s total norm see the tensors in the same order."""
    import copy

    from torch.nn.utils import prune

    twin = copy.deepcopy(model)
    modules = dict(twin.named_modules())
    for name, mask in masks.items():
        mod_name, _, attr = name.rpartition(".")
        prune.custom_from_mask(modules[mod_name], attr, mask)
    tp = dict(twin.named_parameters())
    params = [tp[n] if n in tp else tp[n + "_orig"] for n, _ in model.named_parameters()]
    return twin, params


@pytest.mark.parametrize("opt", ["sgd_momentum", "adam"])
@pytest.mark.parametrize("clip", [None, 0.1])
def test_masked_training_equals_torch_prune_bit_for_bit_with_gradient_clipping(opt, clip):
    """Gradients of pruned weights are zero when backward returns, so anything that reads
    .grad before the step (clip_grad_norm_ here) sees what torch.nn.utils.prune gives it.
    (With the masking only in the optimizer's step pre-hook the clipped runs drifted apart.)"""
    make = {"sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9),
            "adam": lambda p: torch.optim.Adam(p, lr=0.02)}[opt]
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16),
                                torch.nn.ReLU(), torch.nn.Linear(16, 3))
    masks = _random_masks(model, 0.3, 4)
    twin, twin_params = _torch_prune_twin(model, masks)
    opt_a = make(model.parameters())
    MaskEnforcer(model, masks).attach(opt_a)
    opt_b = make(twin_params)
    g = torch.Generator().manual_seed(5)
    params_a = list(model.parameters())
    clipped = 0
    for _ in range(40):
        x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
        losses = []
        for m, o, ps in ((model, opt_a, params_a), (twin, opt_b, twin_params)):
            o.zero_grad()
            loss = torch.nn.functional.cross_entropy(m(x), y)
            loss.backward()
            if clip is not None:
                norm = torch.nn.utils.clip_grad_norm_(ps, clip)
                clipped += int(norm > clip)
            o.step()
            losses.append(loss.detach())
        assert torch.equal(losses[0], losses[1])
    if clip is not None:
        assert clipped > 20  # clipping did act on most steps
    for name, p in model.named_parameters():
        mod_name, _, attr = name.rpartition(".")
        mod = twin.get_submodule(mod_name)
        w = (getattr(mod, attr + "_orig") * getattr(mod, attr + "_mask") if name in masks
             else getattr(mod, attr))  # the module's `weight` is stale until its next forward
        assert torch.equal(p.detach(), w.detach()), name
