"""Declared claims and the one verdict function: constructed inputs that hold, fail, straddle
and sit exactly on the threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prunelab.claims import (
    Claim,
    claims_markdown,
    declare,
    judge,
    judge_all,
    missing,
    paired,
    percentile_interval,
    samples,
    sign_test,
    single,
)


def _claim(statistic="paired_bootstrap", direction=">", threshold=0.0, n=10, **kw) -> Claim:
    return Claim("c", "A beats B", "accuracy", "A - B", direction, threshold, statistic, n=n,
                 **kw)


def test_paired_bootstrap_holds_fails_and_straddles():
    base = [0.90 + 0.001 * i for i in range(10)]
    better = [b + 0.01 + 0.001 * (i % 3) for i, b in enumerate(base)]
    v = judge(_claim(), paired(better, base))
    assert v.verdict == "held" and v.held and v.ci[0] > 0
    assert v.estimate == pytest.approx(0.0109, abs=1e-12) and (v.wins, v.losses) == (10, 0)
    assert v.sign_p == pytest.approx(2 ** -10)
    worse = [b - 0.01 for b in base]
    v = judge(_claim(), paired(worse, base))
    assert v.verdict == "not held" and v.ci[1] < 0 and not v.held
    # the XOR retrain case of issue 20: A ahead in 5 of 10 seeds, mean +0.0022: straddles 0
    diffs = [0.010, -0.006, 0.012, -0.004, 0.008, -0.002, 0.009, -0.003, 0.004, -0.006]
    v = judge(_claim(), paired([0.98 + d for d in diffs], [0.98] * 10))
    assert v.verdict == "inconclusive" and v.ci[0] < 0 < v.ci[1] and not v.held
    assert (v.wins, v.losses) == (5, 5) and v.sign_p == pytest.approx(0.623046875)


def test_interval_exactly_on_the_threshold():
    """All differences equal to the threshold: the interval is [t, t]. A strict claim is not
    held there (the interval is not on the claimed side); an inclusive one is."""
    same = [0.5] * 12
    for direction, verdict in ((">", "not held"), (">=", "held"), ("<", "not held"),
                               ("<=", "held")):
        v = judge(_claim(direction=direction, threshold=0.5, statistic="bootstrap_mean"),
                  samples(same))
        assert v.ci == (0.5, 0.5) and v.verdict == verdict, direction
    # nine ties and one win: a resample of ten ties is likely (0.9^10 = 0.35), so the
    # interval's lower end is exactly the threshold: inconclusive for '>', held for '>='
    diffs = paired([0.0] * 9 + [0.01], [0.0] * 10)
    v = judge(_claim(threshold=0.0), diffs)
    assert v.ci[0] == 0.0 < v.ci[1] and v.verdict == "inconclusive"
    assert judge(_claim(threshold=0.0, direction=">="), diffs).verdict == "held"


def test_single_measurement_against_its_threshold():
    for value, direction, verdict in ((5.0, ">=", "held"), (4.999, ">=", "not held"),
                                      (5.0, ">", "not held"), (0.5, "<=", "held"),
                                      (0.5000001, "<=", "not held"), (0.5, "<", "not held")):
        c = _claim(statistic="single", direction=direction, threshold=5.0 if value > 1 else 0.5,
                   n=1)
        v = judge(c, single(value))
        assert v.verdict == verdict and v.ci is None and v.n == 1, (value, direction)
    assert judge(_claim(statistic="single", n=1), single(math.nan)).verdict == "not measured"


def test_too_few_runs_is_never_held():
    strong = paired([1.0, 1.1, 1.2], [0.0, 0.0, 0.0])
    v = judge(_claim(n=10), strong)
    assert v.verdict == "too few runs (n=3 < 10)" and not v.held
    assert v.ci[0] > 0  # the interval is still reported
    assert judge(_claim(n=3), strong).verdict == "held"


def test_sign_test_statistic_and_exact_p_values():
    wins, losses, p_up, p_down = sign_test([1, 2, 3, -1, 0, 4], 0.0)
    assert (wins, losses) == (4, 1)
    assert p_up == pytest.approx(6 / 32) and p_down == pytest.approx(31 / 32)
    c = _claim(statistic="sign_test", n=10)
    assert judge(c, paired([1.0] * 10, [0.0] * 10)).verdict == "held"  # p = 1/1024
    assert judge(c, paired([0.0] * 10, [1.0] * 10)).verdict == "not held"
    assert judge(c, paired([1.0] * 7 + [0.0] * 3, [0.5] * 10)).verdict == "inconclusive"


def test_less_than_claims_count_wins_on_the_claimed_side():
    c = _claim(direction="<", threshold=0.0)
    v = judge(c, paired([1.0] * 10, [2.0 + 0.1 * i for i in range(10)]))
    assert v.verdict == "held" and (v.wins, v.losses) == (10, 0)


def test_bootstrap_matches_resampling_with_replacement():
    """The multinomial shortcut has the distribution of plain resampling."""
    x = np.array([0.0] * 40 + [1.0] * 55 + [-1.0] * 5)
    lo, hi = percentile_interval(x, resamples=20000, seed=1)
    rng = np.random.default_rng(2)
    means = x[rng.integers(0, x.size, size=(20000, x.size))].mean(axis=1)
    ref = np.quantile(means, [0.025, 0.975])
    assert lo == pytest.approx(ref[0], abs=0.01) and hi == pytest.approx(ref[1], abs=0.01)
    assert percentile_interval(x, seed=3) == percentile_interval(x, seed=3)  # seeded


def test_declaration_and_judge_all_refuse_mistakes():
    with pytest.raises(ValueError, match="direction"):
        Claim("x", "s", "m", "c", "=>", 0.0, "single")
    with pytest.raises(ValueError, match="statistic"):
        Claim("x", "s", "m", "c", ">", 0.0, "t-test")
    with pytest.raises(ValueError, match="unique"):
        declare(_claim(), _claim())
    table = declare(_claim(), Claim("d", "D", "m", "value", ">", 1.0, "single"))
    with pytest.raises(ValueError, match="never declared"):
        judge_all(table, {"e": single(1.0)})
    out = judge_all(table, {"c": paired([1.0] * 10, [0.0] * 10)})
    assert [v.verdict for v in out] == ["held", "not measured"]
    assert judge(table["d"], missing("colon not found")).note == "colon not found"
    with pytest.raises(ValueError, match="paired"):
        judge(_claim(), samples([1.0] * 10))


def test_report_table_shows_declaration_measurement_and_quick_expectation():
    table = declare(_claim(quick_expected=False),
                    Claim("d", "D is big", "m", "D", ">", 1.0, "single"))
    verdicts = judge_all(table, {"c": paired([1.0] * 3, [0.0] * 3), "d": single(2.0)})
    text = claims_markdown(verdicts, quick=True)
    assert "| A beats B | A - B > 0 | paired bootstrap of the mean difference | 10 seeds |" in text
    assert "too few runs (n=3 < 10) (not expected at quick scale)" in text
    assert "Not expected to hold at the quick scale" in text and "- A beats B" in text
    assert "| D is big | D > 1 | single measurement, no interval | 1 (single) | 2 | - | 1 | " \
           "held |" in text
    d = verdicts[0].to_dict()
    assert d["threshold"] == 0.0 and d["statistic"] == "paired_bootstrap" and d["n"] == 10
    assert d["n_measured"] == 3 and d["ci_low"] is not None and d["held"] is False


def test_sign_test_only_beside_comparisons_over_runs():
    """Over test examples the differences are 0 or +-1, so a sign test against a threshold
    says nothing; it is reported for seeds and splits only."""
    c = Claim("acc", "within 0.5 points", "accuracy", "dense - chosen", "<=", 0.5,
              "paired_bootstrap", unit="test images (one training run)")
    dense, chosen = [100.0] * 1000, [100.0] * 997 + [0.0] * 3
    v = judge(c, paired(dense, chosen))
    assert v.sign_p is None and v.wins is None and v.estimate == pytest.approx(0.3)
    assert v.verdict == "inconclusive" and v.ci[1] > 0.5  # 3 of 1,000 images: too few to tell
