"""Sparsity schedules and score-to-mask selection."""

from __future__ import annotations

import pytest
import torch

from prunelab.errors import ConfigError
from prunelab.schedules import (
    AnnealingSchedule,
    ConstantSchedule,
    PolynomialSchedule,
    schedule_from_dict,
)
from prunelab.selection import select_masks


def test_polynomial_schedule_endpoints_and_cubic_shape():
    s = PolynomialSchedule(0.0, 0.9, begin=100, end=500, frequency=100)
    assert s(0) == 0.0 and s(99) == 0.0
    assert s(100) == pytest.approx(0.0)
    assert s(500) == pytest.approx(0.9) and s(10_000) == pytest.approx(0.9)
    # Zhu & Gupta: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3, held between updates
    assert s(300) == pytest.approx(0.9 - 0.9 * 0.5**3)
    assert s(399) == s(300)
    values = [s(t) for t in range(0, 600, 10)]
    assert values == sorted(values)
    assert s.is_update_step(100) and s.is_update_step(500) and not s.is_update_step(150)


def test_schedules_round_trip_and_validate():
    for sched in (ConstantSchedule(0.5), PolynomialSchedule(0.1, 0.8, 0, 10, 2),
                  AnnealingSchedule(1000, 50, 40, 20.0)):
        assert schedule_from_dict(sched.to_dict()) == sched
    with pytest.raises(ConfigError, match="final sparsity"):
        PolynomialSchedule(0.0, 1.0, 0, 10)
    with pytest.raises(ConfigError, match="mu"):
        AnnealingSchedule(100, 10, 10, 0.0)


def test_annealing_schedule_counts():
    m, k, n, mu = 1000, 50, 40, 20.0
    s = AnnealingSchedule(m, k, n, mu)
    for e in range(0, 60):
        expected = k + int((m - k) * max(0.0, (n - 2 * e) / (2 * e * mu + n)) + 1e-9)
        assert s.keep_count(e) == expected
    assert s.keep_count(0) == m and s.keep_count(n // 2) == k and s.keep_count(n) == k
    counts = [s.keep_count(e) for e in range(n)]
    assert counts == sorted(counts, reverse=True)


def test_global_selection_exact_count_and_no_revival():
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(10, 10, generator=g), "b": torch.rand(50, generator=g)}
    masks = select_masks(scores, sparsity=0.6)
    assert sum(int(m.sum()) for m in masks.values()) == 60
    kept_min = min(scores[n][masks[n]].min() for n in scores)
    pruned_max = max(scores[n][~masks[n]].max() for n in scores)
    assert kept_min > pruned_max
    # Already pruned entries never come back, even with the highest scores.
    boosted = {n: s + 10 * (~masks[n]).float() for n, s in scores.items()}
    again = select_masks(boosted, sparsity=0.8, current=masks)
    for n in scores:
        assert not (again[n] & ~masks[n]).any()
    assert sum(int(m.sum()) for m in again.values()) == 30


def test_layer_selection_per_layer_fraction():
    scores = {"a": torch.arange(100.0), "b": torch.arange(10.0)}
    masks = select_masks(scores, sparsity=0.7, scope="layer")
    assert int(masks["a"].sum()) == 30 and int(masks["b"].sum()) == 3
    assert masks["a"][70:].all() and not masks["a"][:70].any()


def test_selection_refuses_to_empty_a_layer():
    scores = {"big": torch.ones(1000) * 5, "small": torch.ones(4)}
    with pytest.raises(ConfigError, match="small"):
        select_masks(scores, sparsity=0.5)
    with pytest.raises(ConfigError, match="sparsity"):
        select_masks(scores, sparsity=1.0)
    with pytest.raises(ConfigError, match="scope"):
        select_masks(scores, sparsity=0.5, scope="nope")
