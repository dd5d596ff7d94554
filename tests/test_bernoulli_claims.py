"""The Bernoulli reproduction's declared claims (issue 20 item 5): the published targets for the
papers' configuration (inputs gated and counted), its plan, and the per-layer statistic."""

from __future__ import annotations

import pytest

from prunelab.errors import ConfigError
from prunelab.experiments import bernoulli as study


def test_claims_declare_the_published_targets_with_the_inputs_counted():
    error = study.CLAIMS["lenet-300-100:error-gated"]
    assert (error.direction, error.threshold, error.statistic, error.n) == (
        "<=", 1.8, "bootstrap_mean", 10)
    assert "inputs gated" in error.statement and "1.8%" in error.statement
    widths = study.CLAIMS["lenet-300-100:widths-gated"]
    assert (widths.direction, widths.threshold, widths.statistic) == ("<=", 1.0, "single")
    for limit in ("266", "88", "33"):
        assert f"/ {limit}" in widths.comparison
    # the limits are L0-sep's published widths, inputs first
    assert study.L0_SEP_LIMITS == [266, 88, 33] == dict(
        (n, a) for n, a, _ in study.BASELINES["lenet-300-100"])["L0-sep"]
    total = study.CLAIMS["lenet-300-100:units-with-inputs"]
    assert (total.direction, total.threshold, total.n) == ("<", 387.0, 10)
    assert "inputs gated" in total.statement
    # the ungated claims say which configuration they judge; 2.0% is the earlier target
    ungated = study.CLAIMS["lenet-300-100:error"]
    assert ungated.threshold == 2.0 and "inputs not gated" in ungated.statement
    assert "earlier target" in ungated.statement and "published" not in ungated.source
    assert "inputs not gated" in study.CLAIMS["lenet-300-100:units"].statement
    assert study.CLAIMS["lenet5:error"].threshold == 1.0 == study.PUBLISHED_ERROR["lenet5"]
    for claim in ("units-cv", "error-sd", "wall-time", "vs-scratch"):
        assert "inputs not gated" in (study.CLAIMS[f"lenet-300-100:{claim}"].metric
                                      + study.CLAIMS[f"lenet-300-100:{claim}"].statement)


def test_plans_train_the_input_gated_x1_runs_with_the_validation_chosen_feature_pi():
    full = study.default_plan(False)
    assert full["gated_seeds"] == list(range(10))
    gated = full["gated_options"]
    assert gated["gate_inputs"] is True and gated["feature_pi"] == 0.3
    assert {k: v for k, v in gated.items() if k not in ("gate_inputs", "feature_pi")} == \
        full["options"] == study.METHOD_OPTIONS
    assert not full["options"].get("gate_inputs")  # the main runs keep the inputs whole
    quick = study.default_plan(True)
    assert quick["gated_seeds"] == [0]
    assert quick["gated_options"] == {**quick["options"], "gate_inputs": True,
                                      "feature_pi": 0.3}


@pytest.mark.parametrize("plan, message", [
    ({"options": {**study.METHOD_OPTIONS, "gate_inputs": True}}, "gated_seeds and"),
    ({"gated_options": study.METHOD_OPTIONS}, "must gate the inputs"),
])
def test_reproduction_refuses_inputs_gated_in_the_wrong_runs_before_training(tmp_path, plan,
                                                                             message):
    with pytest.raises(ConfigError, match=message):
        study.run(tmp_path / "out", plan=plan, log=lambda s: None)
    assert not (tmp_path / "out").exists()


def _row(seed, widths, inputs=None, error=2.0):
    return {"model": "lenet-300-100", "width": "x1", "seed": seed, "units": sum(widths),
            "widths": widths, "input_features": inputs, "test_error_pct": error,
            "inputs_gated": inputs is not None, "undecided_at_end": 0,
            "max_undecided_distance": 0.0, "seconds": 30.0, "train_flops_saved": 0.3,
            "start": "300-100", "final": "-".join(map(str, widths)), "params": 1, "flops": 2}


def _claims(gated_rows):
    dense = {"lenet-300-100": study._dense_reference([
        {"seed": s, "test_error_pct": 1.6, "params": 10, "flops": 20, "seconds": 40.0}
        for s in range(2)])}
    rows = [_row(0, [76, 41]), _row(1, [70, 40])] + gated_rows
    plan = {"models": ["lenet-300-100"], "epochs": {"lenet-300-100": 1},
            "runs": [(1, 0), (1, 1)], "options": {}, "gated_options": {"gate_inputs": True}}
    res = study._summarise(plan, rows, dense, False, 1.0, 100, 1000)
    return {c["name"]: c for c in res["claims"]}, res


def test_gated_widths_is_the_largest_ratio_of_mean_width_to_its_limit():
    rows = [_row(0, [80, 30], 200), _row(1, [90, 36], 220)]
    g = study.gated_widths(rows)
    assert g["mean_widths"] == [210, 85, 33]
    assert g["ratios"] == pytest.approx([210 / 266, 85 / 88, 1.0])
    assert g["largest_ratio"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no input-gated runs"):
        study.gated_widths([])
    with pytest.raises(ValueError, match="3 widths"):
        study.gated_widths([_row(0, [80], 200)])


@pytest.mark.parametrize("inputs, first, second, verdict", [
    (250, 80, 30, "held"),  # every layer under its limit
    (266, 88, 33, "held"),  # exactly L0-sep's widths: "no more than" holds on the boundary
    (200, 80, 34, "not held"),  # one unit over in the second hidden layer
    (267, 50, 20, "not held"),  # one input over
])
def test_per_layer_claim_holds_fails_and_sits_on_the_boundary(inputs, first, second, verdict):
    rows = [_row(s, [first, second], inputs) for s in range(10)]
    claims, res = _claims(rows)
    c = claims["lenet-300-100:widths-gated"]
    assert c["verdict"] == verdict
    assert c["estimate"] == pytest.approx(max(inputs / 266, first / 88, second / 33))
    assert res["models"]["lenet-300-100"]["gated"]["layout"] == [inputs, first, second]
    # the total against 387 is its own claim: 384 < 387 holds, 387 does not
    total = claims["lenet-300-100:units-with-inputs"]
    assert total["estimate"] == inputs + first + second
    assert total["verdict"] == ("held" if inputs + first + second < 387 else "not held")


def test_gated_error_claim_reads_the_gated_runs_only():
    def errors(values):
        return [_row(s, [70, 30], 200, e) for s, e in enumerate(values)]

    claims, res = _claims(errors([1.6, 1.7, 1.75, 1.65, 1.7, 1.6, 1.7, 1.75, 1.65, 1.7]))
    assert claims["lenet-300-100:error-gated"]["verdict"] == "held"
    assert claims["lenet-300-100:error-gated"]["n_measured"] == 10
    # the main runs' claims see the two ungated runs only (2.0%, 113.5 hidden units)
    assert claims["lenet-300-100:error"]["estimate"] == pytest.approx(2.0)
    assert claims["lenet-300-100:units"]["estimate"] == pytest.approx(113.5)
    assert res["models"]["lenet-300-100"]["spread"]["runs"] == 2
    assert res["gated_seeds"] == list(range(10))
    claims, _ = _claims(errors([2.3, 2.2, 2.4, 2.3, 2.25, 2.35, 2.3, 2.2, 2.4, 2.3]))
    assert claims["lenet-300-100:error-gated"]["verdict"] == "not held"
    claims, _ = _claims(errors([1.7, 1.9] * 5))  # mean 1.8, the interval straddles it
    assert claims["lenet-300-100:error-gated"]["verdict"] == "inconclusive"
    claims, _ = _claims(errors([1.6] * 5))
    assert claims["lenet-300-100:error-gated"]["verdict"] == "too few runs (n=5 < 10)"
    claims, res = _claims([])
    for name in ("error-gated", "widths-gated", "units-with-inputs"):
        assert claims[f"lenet-300-100:{name}"]["verdict"] == "not measured"
    assert res["models"]["lenet-300-100"]["gated"] is None and res["gated_options"] is None


def test_report_lists_the_input_gated_runs_apart_from_the_main_runs():
    claims, res = _claims([_row(s, [78, 40], 205, 2.3) for s in range(3)])
    report = study._report(res)
    assert "Input-gated x1 runs" in report and "ratios to the limits 0.77, 0.89, 1.21" in report
    comparison = {r["method"]: r for r in res["models"]["lenet-300-100"]["comparison"]}
    gated = comparison["Bernoulli gates (ours, x1 mean of 3 seeds, inputs gated)"]
    assert gated["architecture"] == "205-78-40" and gated["error_pct"] == pytest.approx(2.3)
    assert comparison["Bernoulli gates (ours, x1 mean, inputs not gated)"][
        "architecture"] == "784-73-40"
    # the robustness table holds the main runs only
    assert "| Bernoulli, all | 2 |" in report
    assert claims["lenet-300-100:decided"]["note"].startswith("5 runs")
