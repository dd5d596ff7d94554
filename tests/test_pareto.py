"""Pareto utilities (non-dominated filtering, hypervolume, dominance gap) and the knee search."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from prunelab.data import Dataset
from prunelab.errors import ConfigError
from prunelab.multiobjective.knee import (
    FrontPoint,
    dichotomic_search,
    grid_search,
    normal_weight,
    select_knee,
    validation_split,
)
from prunelab.multiobjective.pareto import (
    dominance_gap,
    dominates,
    hypervolume_2d,
    non_dominated,
    plot_accuracy_front,
    plot_loss_front,
)


def test_non_dominated_on_a_known_front():
    pts = [(1, 5), (2, 3), (3, 4), (4, 1), (2, 6), (5, 1), (0.5, 7)]
    # (3,4) is dominated by (2,3); (2,6) by (1,5); (5,1) by (4,1).
    assert non_dominated(pts) == [6, 0, 1, 3]
    assert dominates((2, 3), (3, 4)) and not dominates((1, 5), (2, 3))
    assert not dominates((1, 1), (1, 1))


def test_non_dominated_keeps_duplicates_and_handles_ties():
    pts = [(1, 2), (1, 2), (1, 3), (0, 4)]
    assert non_dominated(pts) == [3, 0, 1]  # (1,3) is dominated by (1,2): equal f1, worse f2
    assert non_dominated([]) == []


def test_non_dominated_matches_pairwise_definition_on_random_points():
    rng = np.random.default_rng(0)
    pts = rng.integers(0, 6, size=(60, 2)).astype(float)
    expected = [i for i in range(len(pts))
                if not any(dominates(pts[j], pts[i]) for j in range(len(pts)))]
    assert sorted(non_dominated(pts)) == expected


def test_hypervolume_of_a_staircase():
    pts = [(1, 3), (2, 2), (3, 1)]
    assert hypervolume_2d(pts, (4, 4)) == pytest.approx(3 + 2 + 1)
    # A dominated point and a point outside the reference box change nothing.
    assert hypervolume_2d(pts + [(3, 3), (5, 0)], (4, 4)) == pytest.approx(6)
    assert hypervolume_2d([(0, 0)], (2, 3)) == pytest.approx(6)
    assert hypervolume_2d([], (1, 1)) == 0.0
    assert hypervolume_2d([(1, 1)], (1, 2)) == 0.0  # on the boundary: no area


def _hv_by_cells(pts: np.ndarray, ref: np.ndarray) -> float:
    xs = sorted(set(pts[:, 0].tolist()) | {ref[0]})
    ys = sorted(set(pts[:, 1].tolist()) | {ref[1]})
    area = 0.0
    for (x0, x1), (y0, y1) in itertools.product(zip(xs, xs[1:]), zip(ys, ys[1:])):
        if any(p[0] <= x0 and p[1] <= y0 for p in pts):
            area += (x1 - x0) * (y1 - y0)
    return area


def test_hypervolume_matches_cell_decomposition_on_random_sets():
    rng = np.random.default_rng(1)
    for _ in range(20):
        pts = rng.uniform(0, 1, size=(rng.integers(1, 15), 2))
        ref = np.array([1.0, 1.0])
        assert hypervolume_2d(pts, ref) == pytest.approx(_hv_by_cells(pts, ref), rel=1e-12)


def test_dominance_gap():
    front = [(0.0, 10.0), (1.0, 5.0), (2.0, 0.0)]  # ranges 2 and 10
    assert dominance_gap((1.0, 5.0), front) == pytest.approx(0.0)  # on the front
    assert dominance_gap((0.5, 4.0), front) < 0  # beyond the front
    # (1.2, 6) is dominated by (1, 5) by 0.2/2 = 0.1 in f1 and 1/10 = 0.1 in f2.
    assert dominance_gap((1.2, 6.0), front) == pytest.approx(0.1)
    assert dominance_gap((1.2, 5.5), front) == pytest.approx(0.05)
    assert dominance_gap((1.2, 5.5), front, scale=(1, 1)) == pytest.approx(0.2)


def test_bad_points_are_one_line_errors():
    with pytest.raises(ConfigError, match="points"):
        non_dominated([(1, 2, 3)])
    with pytest.raises(ConfigError, match="finite"):
        hypervolume_2d([(1, math.nan)], (2, 2))
    with pytest.raises(ConfigError, match="reference"):
        hypervolume_2d([(1, 1)], (2, 2, 2))


def test_normal_weight_equalises_the_weighted_sums():
    a, b = (0.1, 300.0), (0.5, 20.0)
    lam = normal_weight(a, b)
    assert lam * a[0] + (1 - lam) * a[1] == pytest.approx(lam * b[0] + (1 - lam) * b[1])
    assert normal_weight(b, a) == lam
    with pytest.raises(ConfigError):
        normal_weight((0, 0), (1, 1))  # dominated pair


def _fp(f1, f2, i=0, w=0.5):
    return FrontPoint(w, f1, f2, index=i)


def test_knee_is_where_the_slope_jumps_most():
    front = [_fp(0, 10, 0), _fp(1, 2, 1), _fp(3, 1, 2), _fp(10, 0, 3)]
    # Slopes dCE/dl1: 1/8, 2, 7: the jump at point 1 is 16x, at point 2 3.5x.
    assert select_knee(front).index == 1
    # Invariant to rescaling an objective.
    scaled = [_fp(p.f1 * 100, p.f2 / 7, p.index) for p in front]
    assert select_knee(scaled).index == 1
    # Fewer than three points: closest to the ideal point after normalisation.
    assert select_knee([_fp(0, 10, 0), _fp(1, 0, 1)]).index in (0, 1)
    assert select_knee([_fp(0, 10, 0)]).index == 0
    assert select_knee([]) is None


def _convex_evaluator(candidates, calls):
    """Exact weighted-sum oracle over a finite candidate set (a deterministic 'training')."""

    def evaluate(lam):
        calls.append(lam)
        ws = [lam * f1 + (1 - lam) * f2 for f1, f2 in candidates]
        f1, f2 = candidates[int(np.argmin(ws))]
        return FrontPoint(lam, f1, f2, {"val_accuracy": 1 - f1, "nonzero": f2})

    return evaluate


def _supported(candidates):
    """Extreme supported points: the vertices of the lower-left convex hull."""
    pts = sorted(set(candidates))
    hull = []
    for p in pts:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    out = [hull[0]]
    for p in hull[1:]:
        if p[1] < out[-1][1]:
            out.append(p)
    return out


def test_dichotomic_search_finds_every_supported_point_of_a_convex_front():
    f1 = np.linspace(0.05, 2.3, 12)
    candidates = [(float(a), float(300.0 / (1 + 40 * a) - 300 / 93)) for a in f1]
    candidates.append((1.0, 250.0))  # dominated; never a weighted-sum optimum
    calls: list[float] = []
    res = dichotomic_search(_convex_evaluator(candidates, calls), budget=40)
    assert calls[:2] == [1.0, 0.9]
    assert all(0 < lam <= 1 for lam in calls)
    found = sorted({p.objectives for p in res.front})
    expected = [p for p in _supported(candidates) if p in {c for c in candidates}]
    # lambda=1 and 0.9 reach the two ends of the supported part reachable with lambda >= 0.9
    # or between them: every supported point between the two starting solutions is found.
    lo, hi = min(found), max(found)
    assert found == [p for p in expected if lo <= p <= hi]
    assert res.runs <= 40 and res.knee in res.front


def test_dichotomic_search_respects_the_budget():
    candidates = [(float(a), float(1 / a)) for a in np.linspace(0.1, 10, 200)]
    calls: list[float] = []
    res = dichotomic_search(_convex_evaluator(candidates, calls), budget=7)
    assert res.runs == len(calls) == 7
    with pytest.raises(ConfigError, match="budget"):
        dichotomic_search(_convex_evaluator(candidates, []), budget=1)


def test_dichotomic_search_drops_dominated_points():
    answers = iter([(0.1, 100.0), (2.3, 0.0), (0.2, 10.0), (0.05, 9.0), (0.3, 8.0)])

    def evaluate(lam):
        f1, f2 = next(answers)
        return FrontPoint(lam, f1, f2)

    res = dichotomic_search(evaluate, budget=5)
    fronts = {p.objectives for p in res.front}
    assert (0.1, 100.0) not in fronts and (0.2, 10.0) not in fronts  # dominated by (0.05, 9)
    assert (0.05, 9.0) in fronts and res.runs == 5


def test_grid_search_and_bad_weights():
    candidates = [(0.1, 10.0), (0.5, 2.0), (2.0, 0.0)]
    res = grid_search(_convex_evaluator(candidates, []), [1.0, 0.99, 0.5])
    assert res.strategy == "grid" and res.runs == 3
    with pytest.raises(ConfigError, match="weight"):
        grid_search(_convex_evaluator(candidates, []), [1.2])
    with pytest.raises(ConfigError, match="weight"):
        dichotomic_search(_convex_evaluator(candidates, []), start=(1.0, -0.1))


def test_validation_split_is_seeded_disjoint_and_hides_the_test_set():
    x = torch.arange(100, dtype=torch.float32).reshape(100, 1)
    y = torch.arange(100) % 3
    data = Dataset("toy", x, y, torch.full((10, 1), -1.0), torch.zeros(10, dtype=torch.long), 3)
    a = validation_split(data, 20, seed=3)
    b = validation_split(data, 20, seed=3)
    assert a.n_train == 80 and a.n_test == 20
    torch.testing.assert_close(a.x_test, b.x_test)
    train_ids = set(a.x_train.flatten().tolist())
    val_ids = set(a.x_test.flatten().tolist())
    assert not train_ids & val_ids and len(train_ids | val_ids) == 100
    assert -1.0 not in val_ids  # the real test set is not the validation split
    with pytest.raises(ConfigError, match="n_val"):
        validation_split(data, 100)


def test_plots_draw_points_knee_and_smgd(tmp_path):
    from prunelab.report import new_figure, save_figure

    fig, axes = new_figure(2)
    pts = [(0.1, 300.0), (0.2, 50.0), (2.3, 0.0), (0.3, 60.0)]
    plot_loss_front(axes[0][0], pts, knee=pts[1], smgd=(0.25, 80.0))
    plot_accuracy_front(axes[0][1], [3000, 500, 1], [0.99, 0.98, 0.1], knee=(500, 0.98),
                        smgd=(800, 0.985))
    labels = axes[0][0].get_legend_handles_labels()[1]
    assert {"knee", "SMGD", "non-dominated"} <= set(labels)
    # The non-dominated line joins 3 of the 4 points (x = l1, y = CE).
    line = axes[0][0].get_lines()[0]
    assert list(line.get_xdata()) == [300.0, 50.0, 0.0]
    path = save_figure(fig, tmp_path / "f.png")
    assert path.stat().st_size > 1000


def test_reproduction_without_mnist_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from prunelab.cli import main
    from prunelab.experiments.pareto import settings

    monkeypatch.setenv("PRUNELAB_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    out = tmp_path / "out"
    code = main(["reproduce", "pareto", "--quick", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "mnist" in err[0].lower()
    assert not out.exists()
    quick, full = settings(True), settings(False)
    assert full.budget <= 20 and full.full_epochs == 30 and full.batch_size == 32
    assert quick.budget <= full.budget and quick.n_train is not None
    for s in (quick, full):  # the variant's fine-tune starts inside the paper's budget
        assert 0 < s.finetune_epochs < s.full_epochs


@pytest.mark.slow
def test_quick_reproduction_end_to_end(tmp_path, monkeypatch):
    import json

    from conftest import shared_data_dir
    from prunelab.experiments.pareto import layer_ratios, run

    monkeypatch.setenv("PRUNELAB_DATA", str(shared_data_dir()))
    out = tmp_path / "pareto"
    results = run(out, quick=True, progress=False, log=lambda s: None)
    assert (out / "report.md").is_file() and len(list((out / "figures").glob("*.png"))) == 3
    saved = json.loads((out / "results.json").read_text())
    assert saved["search"]["runs"] <= 20 and saved["search"]["knee"] is not None
    paper, variant = results["knee"]["paper"], results["knee"]["variant"]
    # the paper's protocol has no fine-tune; the variant's nonzero count is its weighted
    # sum's after 5 of the 6 epochs (its mask frozen for the fine-tune)
    assert "before_finetune" not in paper and variant["weighted_sum_epochs"] == 5
    assert variant["nonzero"] == variant["before_finetune"]["nonzero"]
    assert paper["weight"] == variant["weight"] == results["knee"]["weight"]
    for knee in (paper, variant):
        assert 0.0 < knee["pruned_fraction"] < 1.0
        assert knee["l1_set_size"] == saved["reference"]["dense_weights"]  # 400-120-84-10
        assert knee["pruned_fraction"] == pytest.approx(1 - knee["nonzero"] / knee["l1_set_size"])
        # a working classifier, close to what validation promised
        assert abs(knee["test_accuracy"] - knee["val_accuracy"]) < 0.05
    assert [e["what"] for e in saved["test_evaluations"]][:2] == [
        "the knee, paper protocol",
        "variant: knee + 1-epoch frozen-mask fine-tune (not in the paper)"]
    report = (out / "report.md").read_text()
    assert "## Variant: knee + 1-epoch frozen-mask fine-tune (not in the paper)" in report
    claims = {c["name"]: c for c in results["claims"]}
    assert claims["knee-accuracy"]["estimate"] == pytest.approx(paper["test_accuracy"])
    assert claims["variant:knee-accuracy"]["estimate"] == pytest.approx(variant["test_accuracy"])
    assert claims["knee-accuracy"]["n_measured"] == 10000
    assert claims["knee-nonzero"]["estimate"] == pytest.approx(
        max(layer_ratios(paper["nonzero_per_layer"])))
    assert claims["variant:knee-nonzero"]["estimate"] == pytest.approx(variant["max_layer_ratio"])
    assert claims["knee-budget"]["estimate"] == saved["search"]["runs"]
    # SMGD's learning rates were settled on validation before the freeze (quick: Adam's
    # first, largest, learning rate does not collapse)
    choices = saved["selection"]["choices"]
    assert choices["smgd_adam_lr"] == results["smgd"][1]["lr"] == 1e-3
    assert results["smgd"][1]["lrs_tried"] == [
        {"lr": 1e-3, "trivial": False, "val_accuracy": results["smgd"][1]["val_accuracy"]}]
    assert all(r["test_accuracy"] is not None for r in results["smgd"])
    assert [e["what"] for e in saved["test_evaluations"]][2:] == ["SMGD (sgd)", "SMGD (adam)"]


def test_smgd_learning_rate_is_the_largest_that_does_not_collapse_on_validation():
    from prunelab.experiments.pareto import choose_smgd_lr, measure

    def trainer(collapsing):
        calls = []

        def train(lr):
            calls.append(lr)
            row = {"variant": "adam", "lr": lr, "trivial": lr in collapsing,
                   "val_accuracy": 0.1 if lr in collapsing else 0.9, "val_ce": 1.0, "l1": 2.0,
                   "nonzero": 5, "dominance_gap": -0.01}
            return row, f"net {lr}", [0.5]
        return train, calls

    train, calls = trainer({1e-3})
    row, net, _ = choose_smgd_lr(train, [1e-4, 1e-3, 3e-4], log=lambda s: None)
    assert calls == [1e-3, 3e-4] and row["lr"] == 3e-4 and net == "net 0.0003"
    assert [t["trivial"] for t in row["lrs_tried"]] == [True, False]
    train, calls = trainer({1e-3, 3e-4, 1e-4})  # all collapse: the smallest, and no verdict
    row, _, _ = choose_smgd_lr(train, [1e-3, 3e-4, 1e-4], log=lambda s: None)
    assert calls == [1e-3, 3e-4, 1e-4] and row["lr"] == 1e-4 and row["trivial"]

    class Search:
        runs = 12

    held = dict(row, trivial=False)
    got = measure({}, Search(), [row, dict(held, variant="sgd")])
    assert got["smgd-adam"].values is None and "vacuously" in got["smgd-adam"].missing
    assert got["smgd-sgd"].missing is None and got["smgd-sgd"].values == -0.01


def test_declared_claims_are_the_published_targets_for_the_paper_and_the_variant():
    from prunelab.experiments.pareto import CLAIMS, REFERENCE, VARIANT

    for prefix in ("", VARIANT):
        acc, nz, pruned = (CLAIMS[f"{prefix}knee-{k}"] for k in ("accuracy", "nonzero", "pruned"))
        assert (acc.direction, acc.threshold, acc.statistic) == (">=", 0.989, "bootstrap_mean")
        assert REFERENCE["test_accuracy"] == 0.989
        assert (nz.direction, nz.threshold, nz.statistic) == ("<=", 1.0, "single")
        assert "2107 / 300 / 170" in nz.statement
        assert (pruned.direction, pruned.threshold) == (">=", 0.95)
        assert not any(c.quick_expected for c in (acc, nz, pruned))
    variant = [c for c in CLAIMS if c.name.startswith(VARIANT)]
    assert len(variant) == 3 and all("not in the paper" in c.statement for c in variant)
    assert not any("fine-tune" in c.statement for c in CLAIMS if c not in variant)
    assert {"knee-budget", "smgd-sgd", "smgd-adam"} <= set(CLAIMS.names)


def _retrained(counts, n_correct, n=10000, total=58920):
    from prunelab.experiments.pareto import Retrained

    nz = dict(zip(("6.weight", "8.weight", "10.weight"), counts))
    extra = {"nonzero_per_layer": nz, "nonzero": sum(counts),
             "pruned_fraction": 1 - sum(counts) / total}
    correct = [1.0] * n_correct + [0.0] * (n - n_correct)
    return Retrained(FrontPoint(0.999, 0.1, 10.0, extra), {"accuracy": n_correct / n},
                     correct)


def test_per_layer_and_accuracy_verdicts_on_constructed_networks():
    from types import SimpleNamespace

    from prunelab.claims import judge_all
    from prunelab.experiments.pareto import CLAIMS, VARIANT, layer_ratios, measure

    search = SimpleNamespace(runs=15)
    retrained = {"": _retrained([2107, 300, 170], 9950),      # on every limit, clearly above
                 VARIANT: _retrained([900, 301, 100], 9890)}  # one weight over in layer 2
    v = {x.claim.name: x for x in judge_all(CLAIMS, measure(retrained, search, []))}
    assert v["knee-nonzero"].estimate == 1.0 and v["knee-nonzero"].verdict == "held"
    assert v["variant:knee-nonzero"].estimate == pytest.approx(301 / 300)
    assert v["variant:knee-nonzero"].verdict == "not held"
    assert "dense layer 2" in v["variant:knee-nonzero"].note
    assert v["knee-pruned"].verdict == "held"  # 2577 of 58,920 nonzero: 95.6% pruned
    assert v["knee-accuracy"].verdict == "held" and v["knee-accuracy"].ci[0] > 0.989
    # 98.90% on 10,000 images: the interval straddles the target
    assert v["variant:knee-accuracy"].estimate == pytest.approx(0.989)
    assert v["variant:knee-accuracy"].verdict == "inconclusive"
    assert v["knee-budget"].verdict == "held"
    assert v["smgd-sgd"].verdict == "not measured"
    low = judge_all(CLAIMS, measure({"": _retrained([3000, 100, 50], 9800)}, search, []))
    low = {x.claim.name: x for x in low}
    assert low["knee-accuracy"].verdict == "not held" and low["knee-nonzero"].verdict == \
        "not held"
    assert low["knee-nonzero"].estimate == pytest.approx(3000 / 2107)
    assert low["variant:knee-accuracy"].verdict == "not measured"
    assert layer_ratios([2107, 150, 85]) == [1.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="3 dense layers"):
        layer_ratios([1, 2])


def _toy_validation_data() -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 1, 6, 6, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    return validation_split(Dataset("toy", x, y, x[:5], y[:5], 2), 20, seed=0)


def test_weighted_sum_runner_trains_and_caches():
    from prunelab.config import TrainConfig
    from prunelab.multiobjective.knee import WeightedSumRunner

    data = _toy_validation_data()

    def model_fn():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(),
                                   torch.nn.Flatten(), torch.nn.Linear(32, 8), torch.nn.ReLU(),
                                   torch.nn.Linear(8, 2))

    cfg = TrainConfig(epochs=1, batch_size=10, optimizer="adam", lr=1e-2, eval_train=False)
    runner = WeightedSumRunner(model_fn, data, cfg)
    a = runner(0.99)
    assert a.extra["l1_set_size"] == 32 * 8 + 8 * 2
    assert a.extra["nonzero"] == sum(a.extra["nonzero_per_layer"].values())
    model = model_fn()
    model.load_state_dict(a.state)
    l1 = sum(float(p.detach().abs().sum()) for n, p in model.named_parameters()
             if n in ("3.weight", "5.weight"))
    assert a.f2 == pytest.approx(l1, rel=1e-5)
    b = runner(0.99)
    assert b.extra.get("cached") and (b.f1, b.f2) == (a.f1, a.f2) and b is not a
    b.index = 7
    assert runner(0.99).index != 7


def test_runner_finetune_keeps_the_zeros_and_records_the_phase_before():
    from prunelab.config import TrainConfig
    from prunelab.multiobjective.knee import WeightedSumRunner

    data = _toy_validation_data()

    def model_fn():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 8), torch.nn.ReLU(),
                                   torch.nn.Linear(8, 2))

    cfg = TrainConfig(epochs=2, batch_size=10, optimizer="adam", lr=1e-2, eval_train=False)
    opts = {"tau": 2e-2, "conv_l2": 0.0}
    plain = WeightedSumRunner(model_fn, data, cfg, opts)(0.99)
    tune = TrainConfig(epochs=2, batch_size=10, optimizer="adam", lr=1e-2, eval_train=False,
                       lr_schedule="cosine")
    tuned = WeightedSumRunner(model_fn, data, cfg, opts, finetune=tune)(0.99)
    assert "before_finetune" not in plain.extra
    assert tuned.extra["before_finetune"]["nonzero"] == plain.extra["nonzero"] > 0
    assert tuned.extra["before_finetune"]["val_accuracy"] == plain.extra["val_accuracy"]
    for name in ("1.weight", "3.weight"):  # exactly the same zeros, the weights moved
        a, b = plain.state[name], tuned.state[name]
        assert torch.equal(a == 0, b == 0) and not torch.equal(a, b)


def test_resolution_leaves_nearly_flat_pairs_unsplit():
    # A front that is flat in f1 on the left (differences ~ noise) and steep on the right.
    candidates = [(0.07 + 0.0005 * k, 2500.0 - 150 * k) for k in range(10)]
    candidates += [(0.1, 600.0), (0.15, 200.0), (0.4, 60.0), (2.3, 0.0)]
    plain_calls: list[float] = []
    dichotomic_search(_convex_evaluator(candidates, plain_calls), budget=20)
    coarse_calls: list[float] = []
    res = dichotomic_search(_convex_evaluator(candidates, coarse_calls), budget=20,
                            resolution=0.01)
    assert len(coarse_calls) < len(plain_calls)
    found = {p.objectives for p in res.front}
    assert {(0.1, 600.0), (0.15, 200.0), (0.4, 60.0)} <= found
    with pytest.raises(ConfigError, match="resolution"):
        dichotomic_search(_convex_evaluator(candidates, []), resolution=-1)


def test_finetune_from_a_kept_epoch_is_the_shorter_run_plus_finetune_bit_for_bit():
    """One weighted-sum run serves the paper's full-length network and the fine-tune variant:
    the weights kept after epoch 2 of a 3-epoch run, fine-tuned, are exactly a 2-epoch run
    with the fine-tune."""
    from dataclasses import replace

    from prunelab.config import TrainConfig
    from prunelab.multiobjective.knee import WeightedSumRunner

    data = _toy_validation_data()

    def model_fn():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 8), torch.nn.ReLU(),
                                   torch.nn.Linear(8, 2))

    cfg = TrainConfig(epochs=2, batch_size=10, optimizer="adam", lr=1e-2, eval_train=False,
                      checkpoint_epochs=False)
    opts = {"tau": 2e-2, "conv_l2": 0.0}
    tune = replace(cfg, epochs=2, lr_schedule="cosine")
    separate = WeightedSumRunner(model_fn, data, cfg, opts, finetune=tune)(0.99)
    longer = WeightedSumRunner(model_fn, data, replace(cfg, epochs=3), opts, keep_epochs=(2,))
    full = longer(0.99)  # 3 epochs of the weighted sum, no fine-tune
    assert "before_finetune" not in full.extra and set(full.epoch_states) == {2}
    with pytest.raises(ConfigError, match="fine-tune TrainConfig"):
        longer.finetune_from(full, 2)
    shared = longer.finetune_from(full, 2, tune)
    for name, value in separate.state.items():
        assert torch.equal(shared.state[name], value), name
    assert not all(torch.equal(full.state[n], v) for n, v in separate.state.items())
    for key in ("val_accuracy", "nonzero", "nonzero_per_layer", "before_finetune"):
        assert shared.extra[key] == separate.extra[key], key
    assert (shared.f1, shared.f2) == (separate.f1, separate.f2)
    assert shared.extra["weighted_sum_epochs"] == 2 and "epoch_states" not in full.to_dict()
    with pytest.raises(ConfigError, match="epoch 1"):
        longer.finetune_from(full, 1, tune)
    with pytest.raises(ConfigError, match="keep_epochs"):
        WeightedSumRunner(model_fn, data, cfg, opts, keep_epochs=(3,))
    cosine = WeightedSumRunner(model_fn, data, replace(cfg, lr_schedule="cosine"), opts,
                               finetune=tune, keep_epochs=(1,))
    with pytest.raises(ConfigError, match="constant learning rate"):
        cosine.finetune_from(full, 2)
