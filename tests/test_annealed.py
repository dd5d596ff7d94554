"""Annealed connection pruning: the schedule through the method, no revival, bad input."""

from __future__ import annotations

import pytest
import torch

from prunelab.config import RunConfig, TrainConfig
from prunelab.data import load_dataset
from prunelab.errors import ConfigError
from prunelab.methods import build_method
from prunelab.methods.annealed import AnnealedPruning
from prunelab.models import build_model
from prunelab.schedules import AnnealingSchedule
from prunelab.train import Trainer, run


def _data():
    return load_dataset("xor", n_irrelevant=4, n_train=160, n_test=200, seed=1)


class _Recorder(AnnealedPruning):
    """Records the alive count and masks after every step."""

    def after_step(self, step: int) -> None:
        super().after_step(step)
        self.trace.append((step, {k: v.clone() for k, v in self.enforcer.masks.items()}))

    def attach(self, ctx) -> None:
        self.trace = []
        super().attach(ctx)


def _fit(method, epochs=6, model=None, data=None):
    data = data or _data()
    torch.manual_seed(0)
    model = model or build_model("mlp", data.input_shape, 2, widths=[8])
    cfg = TrainConfig(epochs=epochs, batch_size=32, optimizer="adam", lr=1e-2, seed=0,
                      eval_train=False)
    return Trainer(model, data, cfg, method, progress=False).fit(), model


def test_exact_counts_per_step_reach_k_at_half_and_never_revive():
    method = _Recorder(keep=10, length=14, unit="step", warmup=3, mu=2.0)
    res, model = _fit(method, epochs=6)  # 5 steps/epoch -> 30 steps
    total = 6 * 8 + 8 * 2
    sched = AnnealingSchedule(total, 10, 14, 2.0)
    prev = None
    for step, masks in method.trace:
        alive = sum(int(m.sum()) for m in masks.values())
        e = step - 3
        expected = total if e < 1 else sched.keep_count(min(e, 7))
        assert alive == expected, (step, alive, expected)
        if prev is not None:  # never revived: the kept set only shrinks
            assert all(bool((masks[k] & ~prev[k]).sum() == 0) for k in masks)
        prev = masks
    assert sched.keep_count(7) == 10  # N/2 = 7 iterations after the warm-up
    counts = [sum(int(m.sum()) for m in masks.values()) for _, masks in method.trace]
    assert counts[3 + 7 - 1] == 10 and counts[3 + 7 - 2] > 10  # k first reached at N/2
    assert counts[:3] == [total] * 3 and counts[-1] == 10
    assert res.sparsity["global"]["weight_sparsity"] == pytest.approx(1 - 10 / total, abs=1e-9)
    for name, p in model.named_parameters():  # pruned weights are exactly zero, biases kept
        if name in res.masks:
            assert torch.all(p[~res.masks[name]] == 0)
        else:
            assert name.endswith("bias") and torch.count_nonzero(p) > 0


def test_epoch_unit_and_layer_scope_keep_per_layer_targets():
    method = build_method("annealed", sparsity=0.75, scope="layer", unit="epoch", length=6,
                          mu=1.0)
    res, _ = _fit(method, epochs=5)
    for m in res.masks.values():
        assert int(m.sum()) == round(m.numel() * 0.25)
    # the schedule is visible in the per-epoch metrics: falls then holds at k
    keeps = [row["annealing_keep"] for row in res.metrics]
    assert keeps[2] == sum(round(m.numel() * 0.25) for m in res.masks.values())
    assert keeps == [30 + 10, 19 + 6, 12 + 4, 16, 16]  # per-layer schedules (48->12, 16->4)


def test_global_magnitude_criterion_keeps_largest():
    data = _data()
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, 2, widths=[8])
    method = AnnealedPruning(keep=12, length=2, unit="step")  # one annealing step to k
    cfg = TrainConfig(steps=1, batch_size=32, optimizer="sgd", lr=1e-9, momentum=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = Trainer(model, data, cfg, method, progress=False).fit()
    mags = torch.cat([before[n].abs().flatten() for n in res.masks])
    kept = torch.cat([res.masks[n].flatten() for n in res.masks])
    assert int(kept.sum()) == 12
    assert float(mags[kept].min()) >= float(mags[~kept].max())


def test_run_config_and_user_model():
    cfg = RunConfig(dataset="xor", data_options={"n_irrelevant": 4, "n_train": 160,
                                                 "n_test": 200},
                    model="mlp", model_options={"widths": [8]}, method="annealed",
                    method_options={"keep": 16},
                    train=TrainConfig(epochs=4, batch_size=32, optimizer="adam", lr=1e-2))
    res = run(cfg, progress=False)
    assert sum(int(m.sum()) for m in res.masks.values()) == 16
    user = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    res, _ = _fit(AnnealedPruning(sparsity=0.5), epochs=4, model=user)
    assert sum(int(m.sum()) for m in res.masks.values()) == round(40 * 0.5)


@pytest.mark.parametrize("options, message", [
    ({"mu": 0}, "mu must be in"),
    ({"mu": -1.0}, "mu must be in"),
    ({"sparsity": 1.0}, "sparsity must be in"),
    ({"keep": 0}, "keep must be in"),
    ({"keep": 3, "sparsity": 0.5}, "not both"),
    ({"unit": "batch"}, "unit must be one of"),
    ({"scope": "net"}, "scope must be"),
])
def test_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        build_method("annealed", **options)


def test_annealing_longer_than_training_and_empty_layer():
    with pytest.raises(ConfigError, match="annealing longer than training"):
        _fit(AnnealedPruning(keep=10, length=12, warmup=1), epochs=6)
    with pytest.raises(ConfigError, match="target leaves no weight in layer"):
        _fit(AnnealedPruning(sparsity=0.99, scope="layer"), epochs=2)
    with pytest.raises(ConfigError, match="keep count must be in"):
        _fit(AnnealedPruning(keep=10_000), epochs=2)
    with pytest.raises(ConfigError, match="warmup"):
        _fit(AnnealedPruning(keep=10, warmup=6), epochs=6)


def test_min_layer_keep_protects_small_layers():
    data = _data()
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, 2, widths=[8])
    with torch.no_grad():
        model[3].weight.mul_(1e-4)  # the output layer would lose every weight to a global target
    cfg = TrainConfig(steps=2, batch_size=32, optimizer="sgd", lr=1e-9, momentum=0.0)
    with pytest.raises(ConfigError, match="target leaves no weight in layer '3.weight'"):
        Trainer(model, data, cfg, AnnealedPruning(keep=12, length=2, unit="step"),
                progress=False).fit()
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, 2, widths=[8])
    with torch.no_grad():
        model[3].weight.mul_(1e-4)
    res = Trainer(model, data, cfg, AnnealedPruning(keep=12, length=2, unit="step",
                                                    min_layer_keep=3), progress=False).fit()
    assert int(res.masks["3.weight"].sum()) == 3 and int(res.masks["1.weight"].sum()) == 9
    with pytest.raises(ConfigError, match="min_layer_keep"):
        _fit(AnnealedPruning(keep=4, min_layer_keep=3), epochs=2)
