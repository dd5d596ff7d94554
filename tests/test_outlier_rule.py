"""The bulk-edge outlier rule on spectra with a known number of outliers (planted spikes on
random-matrix and other bulks), where the earlier largest-log-gap rule fails; the SLQ-density
form for top-k lists; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunelab.errors import ConfigError
from prunelab.landscape.constructed_spectra import (
    BULKS,
    marchenko_pastur_bulk,
    plant_spikes,
    score_rule,
)
from prunelab.landscape.spectrum import (
    bulk_edge,
    count_outliers,
    count_outliers_largest_gap,
    spectral_density,
)


@pytest.mark.parametrize("bulk_name", sorted(BULKS))
def test_recovers_planted_outliers_where_the_largest_gap_rule_does_not(bulk_name):
    rng = np.random.default_rng(2024)  # not the seed the rule was chosen on (0)
    bulk = BULKS[bulk_name](150, rng)
    assert count_outliers(bulk).n_outliers == 0
    for k in (1, 2, 3, 5, 9):
        for separation in (3.0, 10.0):
            for spread in (1.0, 100.0):
                lam = plant_spikes(bulk, k, separation, spread)
                got = count_outliers(lam)
                assert got.n_outliers == k, (bulk_name, k, separation, spread)
                assert got.top == sorted(lam.tolist(), reverse=True)[:k]
                assert got.gap_ratio > 1 and got.bulk_edge < min(got.top)
        # spikes spread over two decades: the widest log-gap lies among the spikes
        lam = plant_spikes(bulk, k, 3.0, 100.0)
        if k in (2, 3):  # spikes 10x or 100x apart, the nearest 3x (+) beyond the bulk
            assert count_outliers_largest_gap(lam).n_outliers < k
            assert count_outliers(lam, rule="largest-gap").n_outliers < k


def test_rule_is_scale_invariant_and_floors_tiny_values():
    rng = np.random.default_rng(7)
    lam = plant_spikes(marchenko_pastur_bulk(120, 0.5, rng), 4, 5.0, 10.0)
    counts = {count_outliers(c * lam).n_outliers for c in (1e-6, 1.0, 3e4)}
    assert counts == {4}
    # eigenvalues under 1e-3 of the largest are bulk whatever the fence says
    lam = np.concatenate([np.zeros(100), [1e-5, 2e-5, 3e-5], [1.0]])
    out = count_outliers(lam)
    assert out.n_outliers == 1 and out.bulk_edge == pytest.approx(1e-3)
    assert count_outliers(lam, rel_floor=0.0).n_outliers == 4
    assert count_outliers(-np.abs(lam) - 1).n_outliers == 0


def test_score_rule_counts_right_and_wrong():
    score = score_rule(lambda lam: count_outliers(lam).n_outliers, seed=3, sizes=(100,),
                       repeats=1, ks=(2, 5), separations=(1.2, 5.0), spreads=(10.0,))
    # a pure exponential bulk has no edge: its largest draw may pass the fence (2 of 72 in
    # the selection grid)
    assert score["no spikes"]["total"] == len(BULKS)
    assert score["no spikes"]["right"] >= len(BULKS) - 1
    assert score["separation 5x"]["right"] == score["separation 5x"]["total"] == 2 * len(BULKS)
    # spikes barely beyond the bulk are inside the fence: not "clearly" outliers
    assert score["separation 1.2x"]["right"] < score["separation 1.2x"]["total"]
    always_one = score_rule(lambda lam: 1, seed=3, sizes=(100,), repeats=1, ks=(2,),
                            separations=(5.0,), spreads=(10.0,))
    assert always_one["no spikes"]["right"] == 0 and always_one["separation 5x"]["right"] == 0


class _Matrix:
    """A dense symmetric matrix with the operator interface spectral_density uses."""

    def __init__(self, a: torch.Tensor):
        self.a, self.dim, self.n_products = a, a.shape[0], 0

    def matmat(self, v: torch.Tensor, *, block: int | None = None) -> torch.Tensor:
        self.n_products += v.shape[1]
        return self.a @ v


def test_density_edge_counts_a_top_k_list():
    rng = np.random.default_rng(11)
    lam = plant_spikes(marchenko_pastur_bulk(300, 0.5, rng), 6, 4.0, 30.0)
    q, _ = np.linalg.qr(rng.standard_normal((lam.size, lam.size)))
    op = _Matrix(torch.as_tensor((q * lam) @ q.T))
    dens = spectral_density(op, n_steps=50, n_vectors=4, seed=0)
    exact_edge = bulk_edge(lam)
    assert bulk_edge(density=dens) == pytest.approx(exact_edge, rel=0.25)
    top = np.sort(lam)[::-1]
    got = count_outliers(top[:20], density=dens)
    assert got.n_outliers == 6 and not got.saturated
    short = count_outliers(top[:4], density=dens)
    assert short.n_outliers == 4 and short.saturated
    # without a density a top-k list is all tail: the rule refuses short lists
    with pytest.raises(ConfigError, match="whole spectrum"):
        count_outliers(top[:5])


def test_bad_options():
    lam = np.linspace(0, 1, 50)
    with pytest.raises(ConfigError, match="rule must be one of bulk-edge, largest-gap"):
        count_outliers(lam, rule="biggest")
    with pytest.raises(ConfigError, match="quantile must be in"):
        count_outliers(lam, quantile=0.3)
    with pytest.raises(ConfigError, match="fence must be in"):
        bulk_edge(lam, fence=-1)
