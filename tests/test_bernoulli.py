"""Bernoulli-gate variational pruning: estimators, projection, shrinking, bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prunelab.config import TrainConfig
from prunelab.data import load_dataset
from prunelab.errors import ConfigError
from prunelab.gates import BernoulliGates
from prunelab.methods import build_method
from prunelab.methods.base import PruningMethod, TrainContext
from prunelab.methods.bernoulli import BernoulliGating, gate_regulariser
from prunelab.models import mlp
from prunelab.train import Trainer


def tiny_net(dtype=torch.float64) -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2), nn.Tanh(),
                         nn.Linear(2, 3)).to(dtype)


def attached(model: nn.Module, steps_per_epoch: int = 10, epochs: int = 5, lr: float = 0.01,
             optimizer: str = "adam", **options) -> BernoulliGating:
    options.setdefault("shrink_every", 1)
    method = BernoulliGating(n_train=100, **options)
    opt = (torch.optim.Adam(model.parameters(), lr=lr) if optimizer == "adam"
           else torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
           if optimizer == "adamw"
           else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9))
    method.attach(TrainContext(model, opt, steps_per_epoch, steps_per_epoch * epochs, epochs))
    return method


THETA = {"1": [0.3, 0.65, 0.8], "3": [0.55, 0.2]}


def set_theta(method: BernoulliGating, values: dict[str, list[float]]) -> None:
    with torch.no_grad():
        for name, v in values.items():
            method.gates.theta[name].copy_(torch.tensor(v, dtype=method.gates.theta[name].dtype))


def configs(batch: int, widths: dict[str, int]):
    """Every joint gate configuration of `batch` examples: {layer -> (batch, units)}."""
    sizes = [(n, k) for n, k in widths.items()]
    total = batch * sum(k for _, k in sizes)
    for bits in itertools.product((0.0, 1.0), repeat=total):
        t = torch.tensor(bits, dtype=torch.float64)
        out, pos = {}, 0
        for name, k in sizes:
            out[name] = t[pos : pos + batch * k].reshape(batch, k)
            pos += batch * k
        yield out


def q_of(theta: dict[str, torch.Tensor], xi: dict[str, torch.Tensor]) -> torch.Tensor:
    q = torch.ones((), dtype=torch.float64)
    for name, x in xi.items():
        t = theta[name]
        q = q * (t ** x * (1 - t) ** (1 - x)).prod()
    return q


@pytest.mark.parametrize("estimator,baseline,batch,layers", [
    ("exact", "none", 1, None), ("reinforce", "loo", 2, ["1"]), ("reinforce", "none", 1, None)])
def test_estimators_unbiased_against_enumeration(estimator, baseline, batch, layers):
    model = tiny_net()
    method = attached(model, estimator=estimator, baseline=baseline, theta_init=0.5,
                      layers=layers)
    set_theta(method, {n: v for n, v in THETA.items() if layers is None or n in layers})
    torch.manual_seed(0)
    x = torch.randn(batch, 4, dtype=torch.float64)
    y = torch.tensor([0, 2])[:batch]
    widths = {n: t.numel() for n, t in method.gates.theta.items()}
    theta_exact = {n: t.detach().clone().requires_grad_(True)
                   for n, t in method.gates.theta.items()}
    expected = torch.zeros((), dtype=torch.float64)
    mean_estimate = {n: torch.zeros_like(t) for n, t in theta_exact.items()}
    for xi in configs(batch, widths):
        method.gates.forced = xi
        for t in method.gates.theta.values():
            t.grad = None
        loss = method.batch_loss(model, x, y, F.cross_entropy)
        loss.backward()
        q = q_of(theta_exact, xi)
        expected = expected + q * loss.detach()  # value equals the mean loss of config xi
        with torch.no_grad():
            for n, t in method.gates.theta.items():
                mean_estimate[n] += q.detach() * t.grad
    method.gates.forced = None
    exact = torch.autograd.grad(expected, list(theta_exact.values()))
    for (name, _), g in zip(theta_exact.items(), exact):
        assert torch.allclose(mean_estimate[name], g, atol=1e-10), (name, mean_estimate[name], g)
    # the gradient is not trivially zero
    assert max(float(g.abs().max()) for g in exact) > 1e-3


def test_straight_through_is_first_order_two_point():
    """With a loss linear in one gate, the straight-through gradient equals f(1) - f(0)."""
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    method = attached(model, estimator="st", theta_init=0.5)
    x = torch.randn(5, 3, dtype=torch.float64)
    xi = {"0": torch.ones(5, 2, dtype=torch.float64)}
    method.gates.forced = xi
    loss = method.batch_loss(model, x, None, lambda out, y: out.mean())
    loss.backward()
    with torch.no_grad():
        diffs = []
        for j in range(2):
            off = {"0": xi["0"].clone()}
            off["0"][:, j] = 0
            method.gates.forced = off
            diffs.append(float(model(x).mean() - loss))
    assert torch.allclose(method.gates.theta["0"].grad,
                          -torch.tensor(diffs, dtype=torch.float64), atol=1e-12)


def test_projected_updates_keep_theta_in_unit_interval():
    model = tiny_net()
    method = attached(model, theta_init=0.5, threshold=0.05, shrink=False, lr_theta=10.0)
    set_theta(method, THETA)
    for t in method.gates.theta.values():
        t.grad = torch.tensor([5.0, -5.0, 0.01][: t.numel()], dtype=t.dtype)
    method.after_step(1)
    th = {n: t.detach() for n, t in method.gates.theta.items()}
    assert th["1"].tolist() == [0.0, 1.0, pytest.approx(0.7)]
    assert th["3"].tolist() == [0.0, 1.0]
    # fixed gates take no further updates, whatever their gradient
    for t in method.gates.theta.values():
        t.grad = torch.full_like(t, -100.0)
    method.after_step(2)
    assert method.gates.theta["1"][0] == 0.0 and method.gates.theta["3"][0] == 0.0
    assert all(0 <= float(t.detach().min()) and float(t.detach().max()) <= 1
               for t in method.gates.theta.values())


def test_regulariser_is_concave_with_minima_at_the_ends():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    r = gate_regulariser(t, 0.1, 2.0)
    assert torch.all(r[1:-1] >= torch.minimum(r[0], r[-1]))
    second = r[2:] - 2 * r[1:-1] + r[:-2]
    assert torch.all(second <= 1e-12)
    assert float(r[-1] - r[0]) == pytest.approx(torch.log(torch.tensor(9.0)).item())


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_shrunk_network_matches_gated_network(net, tiny_mlp, tiny_cnn):
    model = (tiny_mlp if net == "mlp" else tiny_cnn).double()
    x = torch.randn(6, *((6,) if net == "mlp" else (1, 10, 10)), dtype=torch.float64)
    method = attached(model, theta_init=0.5)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for t in method.gates.theta.values():
            t.copy_(torch.randint(0, 2, t.shape, generator=g).to(t))
            t[0] = 1.0
    model.eval()
    gated_eval = model(x)
    model.train()
    gated_train = model(x)  # theta in {0, 1}: the sampled gates are deterministic
    kept = {n: int(t.sum()) for n, t in method.gates.theta.items()}
    final = method.finalize_network()
    assert method.ctx.model is final and method.gates is None
    assert not final._forward_hooks and all(not m._forward_hooks for m in final.modules())
    final.eval()
    out = final(x)
    assert torch.allclose(out, gated_eval, atol=1e-12)
    assert torch.allclose(out, gated_train, atol=1e-12)
    assert method.widths() == kept
    assert sum(p.numel() for p in final.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "adamw"])
def test_removing_a_unit_mid_training_keeps_optimizer_state(optimizer, tiny_cnn):
    model = tiny_cnn
    method = attached(model, optimizer=optimizer, theta_init=0.9)
    x, y = torch.randn(8, 1, 10, 10), torch.randint(0, 3, (8,))
    for step in range(1, 4):
        loss = method.batch_loss(method.ctx.model, x, y, F.cross_entropy)
        loss = loss + method.penalty(method.ctx.model)
        method.ctx.optimizer.zero_grad()
        loss.backward()
        method.ctx.optimizer.step()
        method.after_step(step)
    old_model, old_opt = method.ctx.model, method.ctx.optimizer
    key = "momentum_buffer" if optimizer == "sgd" else "exp_avg"
    old_state = {n: old_opt.state[p][key].clone() for n, p in old_model.named_parameters()}
    with torch.no_grad():
        method.gates.theta["0"][1] = 0.01  # conv filter 1 falls below the threshold
        method.gates.theta["6"][[2, 5]] = 0.01  # and two units of the hidden Linear
    method.after_step(4)
    new_model, new_opt = method.ctx.model, method.ctx.optimizer
    assert new_model is not old_model and new_opt is not old_opt
    assert type(new_opt) is type(old_opt)
    assert {k: v for k, v in new_opt.param_groups[0].items() if k != "params"} == {
        k: v for k, v in old_opt.param_groups[0].items() if k != "params"}
    assert method.widths() == {"0": 3, "3": 6, "6": 5}
    assert new_model[0].out_channels == 3 and new_model[6].out_features == 5
    params = dict(new_model.named_parameters())
    assert {id(p) for g in new_opt.param_groups for p in g["params"]} == {
        id(p) for p in params.values()}
    for p in params.values():
        assert new_opt.state[p][key].shape == p.shape
    keep_f = torch.tensor([0, 2, 3])
    keep_u = torch.tensor([0, 1, 3, 4, 6])
    assert torch.equal(new_opt.state[params["0.weight"]][key], old_state["0.weight"][keep_f])
    assert torch.equal(new_opt.state[params["3.weight"]][key], old_state["3.weight"][:, keep_f])
    assert torch.equal(new_opt.state[params["6.weight"]][key], old_state["6.weight"][keep_u])
    assert torch.equal(new_opt.state[params["8.weight"]][key],
                       old_state["8.weight"][:, keep_u])
    # training goes on with the new pair, and the gates follow the new model
    loss = method.batch_loss(new_model, x, y, F.cross_entropy)
    new_opt.zero_grad()
    loss.backward()
    new_opt.step()
    assert method.orig_index["6"].tolist() == [0, 1, 3, 4, 6]


def test_every_unit_pruned_keeps_one_or_raises():
    model = tiny_net()
    method = attached(model, theta_init=0.5)
    set_theta(method, {"3": [0.04, 0.02]})
    method.after_step(1)
    assert method.widths()["3"] == 1
    assert method.empty_layer_events[0]["layer"] == "3"
    assert method.empty_layer_events[0]["kept_unit"] == 0
    model = tiny_net()
    method = attached(model, theta_init=0.5, on_empty_layer="error")
    set_theta(method, {"3": [0.04, 0.02]})
    with pytest.raises(ConfigError, match="every unit of layer '3'"):
        method.after_step(1)


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0, 1.5, -0.1])
def test_threshold_outside_range_is_refused(value):
    with pytest.raises(ConfigError, match=r"threshold must be in \(0, 0.5\)"):
        build_method("bernoulli", threshold=value)


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match="theta_init"):
        build_method("bernoulli", theta_init=0.01, threshold=0.05)
    with pytest.raises(ConfigError, match="estimator must be one of"):
        build_method("bernoulli", estimator="gumbel")
    with pytest.raises(ConfigError, match="pi must be in"):
        build_method("bernoulli", pi=1.0)


def test_gates_on_layers_that_cannot_carry_them(tiny_mlp):
    sig = mlp((6,), 3, widths=(5, 4), activation="sigmoid")
    with pytest.raises(ConfigError, match="cannot carry gates.*Sigmoid"):
        BernoulliGates(sig, at="layer")
    BernoulliGates(sig, at="output").remove()  # gating after the activation is exact
    with pytest.raises(ConfigError, match="layer '5' cannot carry gates"):
        BernoulliGates(tiny_mlp, layers=["5"])  # the output layer
    with pytest.raises(ConfigError, match="no hidden"):
        BernoulliGates(nn.Sequential(nn.Flatten(), nn.Linear(6, 3)))


def test_layer_point_gates_equal_output_gates_for_relu(tiny_cnn):
    x = torch.randn(4, 1, 10, 10)
    outs = []
    for at in ("layer", "output"):
        gates = BernoulliGates(tiny_cnn, at=at)
        with torch.no_grad():
            for t in gates.theta.values():
                t.copy_((torch.arange(t.numel()) % 2).float())
        tiny_cnn.eval()
        outs.append(tiny_cnn(x))
        gates.remove()
    assert torch.allclose(outs[0], outs[1])


def test_exact_estimator_refuses_large_layers():
    model = mlp((20,), 3, widths=(50, 30))
    with pytest.raises(ConfigError, match="80 gated units, more than max_exact_units=64"):
        attached(model, estimator="exact")


def test_score_function_needs_per_example_losses():
    model = tiny_net(torch.float32)
    method = attached(model, estimator="reinforce", theta_init=0.5)
    with pytest.raises(ConfigError, match="reduction='none'"):
        method.batch_loss(model, torch.randn(3, 4), torch.tensor([0, 1, 2]),
                          lambda out, y: F.cross_entropy(out, y))


@pytest.mark.parametrize("estimator", ["st", "reinforce"])
def test_training_ends_deterministic_and_smaller(estimator):
    data = load_dataset("xor", n_relevant=2, n_irrelevant=4, n_train=400, n_test=400, seed=0)
    torch.manual_seed(0)
    model = mlp(data.input_shape, data.num_classes, widths=(32, 16))
    method = build_method("bernoulli", estimator=estimator, penalty_scale=5.0, lr_theta=2.0,
                          theta_init=0.8, shrink_every=5)
    cfg = TrainConfig(epochs=6, batch_size=50, optimizer="adam", lr=1e-2, eval_train=False)
    result = Trainer(model, data, cfg, method).fit()
    final = method.ctx.model
    widths = method.widths()
    assert method.gates is None and method.undecided_at_end is not None
    assert sum(widths.values()) < 48
    assert [final[1].out_features, final[3].out_features] == [widths["1"], widths["3"]]
    assert result.sparsity["global"]["params"] == sum(p.numel() for p in final.parameters())
    last = method.trajectory[-1]
    assert all(v in (0.0, 1.0) for n in ("1", "3") for v in last[n])
    s = method.summary()
    assert s["train_flops"] < s["train_flops_dense"]
    assert "units" in result.metrics[-1] and "undecided" in result.metrics[-1]


def test_state_dict_rebuilds_the_shrunk_network(tiny_mlp):
    from prunelab.shrink import from_architecture

    method = attached(tiny_mlp, theta_init=0.5)
    with torch.no_grad():
        method.gates.theta["1"].copy_(torch.tensor([1.0, 0, 1, 0, 1, 1, 0, 1]))
        method.gates.theta["3"].fill_(1.0)
    final = method.finalize_network()
    state = method.state_dict()
    rebuilt = from_architecture(state["architecture"])
    rebuilt.load_state_dict(final.state_dict())
    x = torch.randn(3, 6)
    assert torch.allclose(rebuilt(x), final(x))
    assert state["summary"]["final_widths"] == {"1": 5, "3": 5}


@pytest.mark.slow
def test_reproduce_quick_end_to_end(tmp_path, monkeypatch):
    from conftest import shared_data_dir

    monkeypatch.setenv("PRUNELAB_DATA", str(shared_data_dir()))
    from prunelab.experiments.bernoulli import default_plan, run

    res = run(tmp_path / "out", quick=True, progress=False, log=lambda s: None)
    assert "| Bernoulli, all |" in (tmp_path / "out" / "report.md").read_text()
    assert (tmp_path / "out" / "figures" / "theta_trajectories.png").exists()
    planned = default_plan(True)["runs"]
    gated_seeds = default_plan(True)["gated_seeds"]
    assert len(res["runs"]) == len(planned) + len(gated_seeds)
    # each run's units are its final widths, and the gates removed units at every width
    for r, (factor, _) in zip(res["runs"], planned):
        assert r["units"] == sum(r["widths"]) == sum(map(int, r["final"].split("-")))
        assert all(w < s for w, s in zip(r["widths"], (300 * factor, 100 * factor)))
    claims = {c["name"]: c for c in res["claims"]}
    assert claims["lenet-300-100:error"]["estimate"] == pytest.approx(
        res["models"]["lenet-300-100"]["x1_error_pct"])
    assert claims["lenet-300-100:error"]["verdict"] == "too few runs (n=2 < 10)"
    assert claims["lenet5:error"]["verdict"] == "not measured"  # quick: LeNet-300-100 only
    # the input-gated x1 run: its inputs pruned, judged by the claims counting them
    gated = [r for r in res["runs"] if r["inputs_gated"]]
    assert [r["seed"] for r in gated] == gated_seeds and all(
        0 < r["input_features"] < 784 for r in gated)
    assert claims["lenet-300-100:units-with-inputs"]["estimate"] == pytest.approx(
        sum(r["units"] + r["input_features"] for r in gated) / len(gated))
    assert claims["lenet-300-100:error-gated"]["verdict"] == "too few runs (n=1 < 10)"
    # one recorded test evaluation per training run, all after the (start-of-run) freeze
    assert res["selection"]["frozen"] and len(res["test_evaluations"]) == (
        len(planned) + 2 + len(gated_seeds))
    # the recorded mistakes are the final networks' own: as many as their test errors say
    n = res["n_test"]
    for r in res["runs"]:
        assert len(r["test_mistakes"]) == round(r["test_error_pct"] * n / 100)
    dense = res["models"]["lenet-300-100"]["dense"]
    for err, wrong in zip(dense["seed_errors_pct"], dense["seed_test_mistakes"]):
        assert len(wrong) == round(err * n / 100)
    # every x1 run has a scratch twin at its own final widths
    twins = res["models"]["lenet-300-100"]["scratch"]
    x1 = [r for r in res["runs"] if r["width"] == "x1" and not r["inputs_gated"]]
    assert twins["widths"] == [r["widths"] for r in x1]
    assert twins["bernoulli_errors_pct"] == [r["test_error_pct"] for r in x1]
    for err, wrong in zip(twins["seed_errors_pct"], twins["seed_test_mistakes"]):
        assert len(wrong) == round(err * n / 100)
    assert "Scratch twins" in (tmp_path / "out" / "report.md").read_text()


def test_reproduction_refuses_a_plan_without_x1_runs_before_training(tmp_path):
    from prunelab.experiments.bernoulli import run

    with pytest.raises(ConfigError, match="no x1 run"):
        run(tmp_path / "out", plan={"runs": [(4, 5), (2, 0)]}, log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_reproduction_in_forked_processes_gives_the_same_runs(tmp_path, monkeypatch):
    from conftest import shared_data_dir

    monkeypatch.setenv("PRUNELAB_DATA", str(shared_data_dir()))
    from prunelab.experiments.bernoulli import QUICK_GATED_OPTIONS, QUICK_OPTIONS, run

    plan = {"models": ["lenet-300-100"], "n_train": 1000, "epochs": {"lenet-300-100": 2},
            "runs": [(1, 0), (2, 0)],
            "dense_seeds": [0, 1], "scratch": True, "options": QUICK_OPTIONS,
            "gated_seeds": [0], "gated_options": QUICK_GATED_OPTIONS}

    def timeless(res):
        runs = [{k: v for k, v in r.items() if k != "seconds"} for r in res["runs"]]
        model = res["models"]["lenet-300-100"]
        return (runs, model["dense"]["seed_errors_pct"], model["scratch"]["seed_errors_pct"],
                [c["estimate"] for c in res["claims"] if "wall-time" not in c["name"]],
                [(e["what"], e["metric"], e["count"]) for e in res["test_evaluations"]])

    one = run(tmp_path / "one", progress=False, log=lambda s: None, plan=plan)
    two = run(tmp_path / "two", progress=False, log=lambda s: None,
              plan={**plan, "processes": 2})
    assert len(one["runs"]) == 3
    assert timeless(one) == timeless(two)

    # a killed attempt keeps its finished runs: the next one trains only the rest
    import prunelab.experiments.bernoulli as bernoulli

    calls, real, killed = [], bernoulli._job, []

    def killed_at_the_third(*args):
        calls.append(args[1:4])
        if len(calls) == 3 and not killed:
            killed.append(True)
            raise RuntimeError("killed")
        return real(*args)

    monkeypatch.setattr(bernoulli, "_job", killed_at_the_third)
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path / "three", progress=False, log=lambda s: None, plan=plan)
    # what the killed attempt finished (dense seed 0, x1 seed 0 with its twin), judged as is
    so_far = bernoulli.finished_so_far(tmp_path / "three", plan)
    assert so_far["plan_runs"] == [(1, 0)] and len(so_far["runs"]) == 1
    assert so_far["runs"][0] == one["runs"][0] | {"seconds": so_far["runs"][0]["seconds"]}
    assert so_far["models"]["lenet-300-100"]["dense"]["seeds"] == [0]
    calls.clear()
    three = run(tmp_path / "three", progress=False, log=lambda s: None, plan=plan)
    assert len(calls) == len(one["test_evaluations"]) - 2
    assert timeless(three) == timeless(one)


@pytest.mark.parametrize("processes", [0, -1, 1.5, True])
def test_reproduction_refuses_a_bad_process_count_before_training(tmp_path, processes):
    from prunelab.experiments.bernoulli import run

    with pytest.raises(ConfigError, match="processes must be an integer >= 1"):
        run(tmp_path / "out", plan={"processes": processes}, log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_report_robustness_table_groups_runs_by_start_width():
    from prunelab.experiments.bernoulli import _dense_reference, _robustness_rows

    runs = [{"width": w, "units": u, "test_error_pct": e}
            for w, u, e in [("x1", 100, 2.0), ("x1", 110, 1.9), ("x4", 90, 2.3),
                            ("x2", 105, 1.8), ("x4", 95, 2.1)]]
    dense = _dense_reference([{"seed": s, "test_error_pct": e, "seconds": 1.0}
                              for s, e in [(0, 1.5), (1, 1.7)]])
    rows = _robustness_rows(runs, dense)
    assert [r["runs"] for r in rows] == ["Bernoulli x1", "Bernoulli x2", "Bernoulli x4",
                                         "Bernoulli, all", "dense x1 (start network)"]
    assert [r["n"] for r in rows] == [2, 1, 2, 5, 2]
    assert rows[0]["units mean"] == "105.0" and rows[2]["error min-max %"] == "2.10-2.30"
    assert rows[3]["error spread pts"] == "0.50" and rows[3]["error min-max %"] == "1.80-2.30"
    assert rows[4]["units mean"] == "-" and rows[4]["error spread pts"] == "0.20"
    # without the runs' misclassified examples the test-set sampling columns stay empty
    assert rows[3]["SD if examples flip independently"] == "-"


def test_report_robustness_table_splits_the_variance_when_mistakes_are_recorded():
    from prunelab.experiments.bernoulli import _dense_reference, _robustness_rows

    runs = [{"width": "x1", "units": 100, "test_error_pct": 10.0, "test_mistakes": list(range(10))},
            {"width": "x1", "units": 100, "test_error_pct": 20.0, "test_mistakes": list(range(20))},
            {"width": "x2", "units": 90, "test_error_pct": 20.0, "test_mistakes": list(range(20))}]
    dense = _dense_reference([{"seed": s, "test_error_pct": 10.0, "seconds": 1.0,
                               "test_mistakes": m} for s, m in [(0, [0]), (1, [1])]])
    assert "test_mistakes" not in dense  # the first run's mistakes are not copied up
    rows = _robustness_rows(runs, dense, n_test=100)
    x1, x2, everything, dense_row = rows
    assert x1["SD if examples flip independently"] == f"{100 * (0.0005 ** 0.5):.3f}"
    assert x1["between-run share of variance %"] == "90"
    assert x2["SD if examples flip independently"] == "-"  # one run: nothing to split
    assert everything["n"] == 3 and everything["SD if examples flip independently"] != "-"
    # two dense runs with one different mistake each: equal errors, two examples flipping at
    # rate 1/2 (2 * 1/4 * 2/(2-1) / 100^2)
    assert dense_row["SD if examples flip independently"] == f"{100 * (1e-4) ** 0.5:.3f}"
    assert dense_row["between-run share of variance %"] == "-"


def test_twin_chain_initialises_like_the_network_builder_under_the_same_seed():
    from prunelab.experiments.bernoulli import build
    from prunelab.shrink import architecture, from_architecture

    def widths(model):
        return [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
                for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]

    assert widths(build("lenet-300-100", 2, (1, 28, 28), 10)) == [600, 200, 10]
    for kind in ("lenet-300-100", "lenet5"):
        torch.manual_seed(0)
        built = build(kind, 1, (1, 28, 28), 10)
        torch.manual_seed(0)
        chain = from_architecture(architecture(built))
        assert widths(chain) == widths(built)
        for a, b in zip(built.parameters(), chain.parameters()):
            assert torch.equal(a, b)


def test_scratch_twin_of_a_network_with_gated_inputs_keeps_the_same_inputs(monkeypatch):
    import prunelab.experiments.bernoulli as study
    from prunelab.shrink import kept_input_mask

    final = mlp((6,), 2, widths=[5, 3])
    with torch.no_grad():
        final[1].weight[:, [0, 4]] = 0.0  # the gates removed inputs 0 and 4
    mask = kept_input_mask(final)
    assert list(mask) == ["1.weight"] and mask["1.weight"].shape == (5, 6)
    assert mask["1.weight"].all(dim=0).tolist() == [False, True, True, True, False, True]
    assert not mask["1.weight"][:, [0, 4]].any()
    assert kept_input_mask(nn.Sequential(nn.Flatten(), nn.Linear(3, 2))) == {}  # none zero

    data = load_dataset("xor", n_relevant=2, n_irrelevant=4, n_train=200, n_test=100, seed=0)
    trained = {}
    real_train = study._train

    def keep_model(*args, **kwargs):
        res, model, secs = real_train(*args, **kwargs)
        trained["model"], trained["method"] = model, args[5]
        return res, model, secs

    monkeypatch.setattr(study, "_train", keep_model)
    row = {"seed": 0, "widths": [5, 3], "input_features": 4, "test_error_pct": 10.0}
    twin = study._scratch_twin("lenet-300-100", row, final, data, 2, "cpu", False)
    assert [m.out_features for m in trained["model"] if isinstance(m, nn.Linear)] == [5, 3, 2]
    assert isinstance(trained["method"], study.FixedMask)
    first = trained["model"][1].weight
    assert not first[:, [0, 4]].any() and first[:, [1, 2, 3, 5]].ne(0).all()
    assert twin["widths"] == [5, 3] and twin["bernoulli_error_pct"] == 10.0
    assert len(twin["test_mistakes"]) == round(twin["test_error_pct"])  # 100 test examples
    row["input_features"] = None  # inputs not gated: a plain dense twin
    study._scratch_twin("lenet-300-100", row, final, data, 1, "cpu", False)
    assert type(trained["method"]) is PruningMethod
    assert trained["model"][1].weight.ne(0).all()


def test_report_compares_the_x1_runs_with_their_scratch_twins():
    from prunelab.experiments.bernoulli import (
        _dense_reference,
        _report,
        _robustness_rows,
        _scratch_reference,
        _summarise,
    )

    twins = [{"seed": s, "widths": w, "test_error_pct": e, "bernoulli_error_pct": b,
              "seconds": 10.0, "test_mistakes": list(range(round(e * 10)))}
             for s, w, e, b in [(0, [76, 41], 2.5, 2.0), (1, [70, 40], 2.3, 2.2)]]
    scratch = _scratch_reference(twins)
    assert scratch["gap_pts"] == pytest.approx([-0.5, -0.1])
    assert scratch["gap_mean_pts"] == pytest.approx(-0.3)
    assert scratch["error_mean_pct"] == pytest.approx(2.4)
    assert scratch["error_spread_pts"] == pytest.approx(0.2)
    dense = {"lenet-300-100": _dense_reference([
        {"seed": s, "test_error_pct": 1.6, "params": 10, "flops": 20, "seconds": 40.0}
        for s in (0, 1)])}
    rows = [{"model": "lenet-300-100", "width": "x1", "seed": s, "units": sum(w),
             "widths": w, "test_error_pct": b, "input_features": None, "undecided_at_end": 0,
             "max_undecided_distance": 0.0, "seconds": 30.0, "train_flops_saved": 0.3,
             "start": "300-100", "final": "-".join(map(str, w)), "params": 1, "flops": 2}
            for s, w, b in [(0, [76, 41], 2.0), (1, [70, 40], 2.2)]]
    plan = {"models": ["lenet-300-100"], "epochs": {"lenet-300-100": 1}, "runs": [(1, 0), (1, 1)],
            "options": {}}
    res = _summarise(plan, rows, dense, True, 1.0, 100, 1000, {"lenet-300-100": scratch})
    comp = res["models"]["lenet-300-100"]["comparison"][-1]
    assert comp["method"] == "x1 final widths trained from scratch (ours, mean of 2 seeds)"
    assert comp["architecture"] == "784-73-40" and comp["error_pct"] == pytest.approx(2.4)
    report = _report(res)
    assert "seed 0 76-41: 2.00% gated vs 2.50% scratch" in report
    assert "Gated minus scratch: -0.30 points on average" in report
    table = _robustness_rows(rows, dense["lenet-300-100"], 1000, scratch)
    assert table[-1]["runs"] == "x1 final widths from scratch"
    assert table[-1]["error spread pts"] == "0.20" and table[-1]["units mean"] == "-"
    # 25 and 23 of 1,000 examples missed, nested: two examples flip at rate 1/2
    assert table[-1]["SD if examples flip independently"] == f"{100 * (1e-6) ** 0.5:.3f}"
    # results without twins (or written before they existed) render without the paragraph
    res["models"]["lenet-300-100"].pop("scratch")
    assert "Scratch twins" not in _report(res)


def test_input_feature_gates_follow_shrinking_and_finalize(tiny_cnn):
    model = tiny_cnn.double()
    method = attached(model, theta_init=0.5, gate_inputs=True)
    assert list(method.gates.theta) == ["0", "3", "5", "6"]  # conv, conv, flatten (24), fc
    assert method.start_widths["5"] == 24
    with torch.no_grad():
        method.gates.theta["3"].copy_(torch.tensor([0.5, 0.01, 0.5, 0.5, 0.5, 0.5]))
        method.gates.theta["5"][[0, 9, 13]] = 0.01  # feature 9 belongs to filter 2
    method.after_step(1)
    # filter 1 of conv "3" is gone with its 4 features; features 0, 9, 13 are held at zero
    assert method.gates.theta["5"].numel() == 20
    assert method.widths()["5"] == 17
    assert method.orig_index["5"].tolist() == [0, 1, 2, 3] + list(range(8, 24))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in method.gates.theta.values():
            t.copy_(torch.randint(0, 2, t.shape, generator=g).to(t) * (t > 0))
            t[1] = 1.0
    x = torch.randn(5, 1, 10, 10, dtype=torch.float64)
    method.ctx.model.eval()
    gated = method.ctx.model(x)
    kept_feats = int((method.gates.theta["5"] > 0).sum())
    final = method.finalize_network()
    final.eval()
    assert torch.allclose(final(x), gated, atol=1e-12)
    assert int(final[6].weight.ne(0).any(dim=0).sum()) == kept_feats
    assert method.widths()["5"] == kept_feats


def test_shrinking_is_batched_every_k_steps(tiny_mlp):
    method = attached(tiny_mlp, theta_init=0.5, shrink_every=3)
    first = method.ctx.model
    with torch.no_grad():
        method.gates.theta["1"][2] = 0.01
    method.after_step(1)
    assert method.ctx.model is first and method.gates.theta["1"][2] == 0.0  # held at xi = 0
    method.after_step(2)
    assert method.ctx.model is first
    method.after_step(3)
    assert method.ctx.model is not first and method.ctx.model[1].out_features == 7


def test_theta_is_frozen_during_the_warmup_and_moves_after():
    model = tiny_net()
    # 5 epochs x 10 steps = 50 steps; warmup 0.2 freezes theta for steps 1..10
    method = attached(model, theta_init=0.5, shrink=False, lr_theta=0.1, warmup=0.2)
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    start = {n: t.detach().clone() for n, t in method.gates.theta.items()}

    def one_step(step: int) -> torch.Tensor:
        method.step = step - 1
        pen = method.penalty(model)
        (method.batch_loss(model, x, y, F.cross_entropy) + pen).backward()
        method.after_step(step)
        return pen

    for step in range(1, 11):
        one_step(step)
        assert all(torch.equal(t.detach(), start[n]) for n, t in method.gates.theta.items())
        assert all(t.grad is None for t in method.gates.theta.values())
    assert method.gate_cost_factor(9) == 0.0 and method.gate_cost_factor(10) == 1.0
    one_step(11)
    assert any(not torch.equal(t.detach(), start[n]) for n, t in method.gates.theta.items())


def test_gate_cost_ramps_linearly_after_the_warmup():
    method = attached(tiny_net(), theta_init=0.5, warmup=0.2, penalty_ramp=0.4)  # 50 steps
    factors = [method.gate_cost_factor(s) for s in (0, 9, 10, 19, 29, 40)]
    assert factors == [0.0, 0.0, pytest.approx(1 / 20), pytest.approx(10 / 20), 1.0, 1.0]
    method.step = 0  # during the warm-up only the weight prior is left in the penalty
    weights_only = method._weight_prior(method.ctx.model) / method._n()
    assert torch.allclose(method.penalty(method.ctx.model), weights_only)


@pytest.mark.parametrize("options,match", [
    ({"warmup": 1.0}, "warmup must be in"), ({"penalty_ramp": -0.1}, "penalty_ramp must be in"),
    ({"warmup": 0.6, "penalty_ramp": 0.4}, "warmup \\+ penalty_ramp must be below 1")])
def test_bad_warmup_options_are_refused(options, match):
    with pytest.raises(ConfigError, match=match):
        build_method("bernoulli", **options)


def test_gamma_rises_to_gamma_final_after_the_warmup():
    method = attached(tiny_net(), theta_init=0.5, warmup=0.2, gamma=2.0, gamma_final=10.0,
                      gamma_ramp=0.9)
    # 50 steps: the ramp would start at step 5 but waits for the warm-up (step 10)
    assert [method.gamma_at(s) for s in (0, 10, 30, 50)] == [2.0, 2.0, 6.0, 10.0]
    late = attached(tiny_net(), theta_init=0.5, gamma_final=10.0, gamma_ramp=0.2)
    assert [late.gamma_at(s) for s in (0, 40, 45, 50)] == [2.0, 2.0, 6.0, 10.0]
    method.step = 30
    pen = method.penalty(method.ctx.model) - method._weight_prior(method.ctx.model) / 100
    expected = sum(gate_regulariser(t.detach(), method.pi, 6.0).sum()
                   for t in method.gates.theta.values()) * method.penalty_scale / 100
    assert float(pen.detach()) == pytest.approx(float(expected))
    assert attached(tiny_net(), theta_init=0.5).gamma_at(40) == 2.0  # constant by default
    with pytest.raises(ConfigError, match="gamma_final must be"):
        build_method("bernoulli", gamma=2.0, gamma_final=1.0)


# ---------------------------------------------------------------- fast paths, bit for bit
# The training step's fast paths (gate sampling, weight prior, gate prior, theta update) must
# compute what the plain expressions compute, bit for bit, so that results do not change.


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sample_equals_torch_bernoulli_bit_for_bit(dtype):
    from prunelab.gates import sample

    for units, batch, seed in [(300, 100, 0), (7, 3, 1), (1, 50, 2), (1200, 17, 3)]:
        theta = torch.rand(units, dtype=dtype)
        theta[: units // 4] = 1.0
        theta[units // 4 : units // 3] = 0.0
        torch.manual_seed(seed)
        expected = torch.bernoulli(theta.expand(batch, -1))
        after_expected = torch.rand(4)
        torch.manual_seed(seed)
        got = sample(theta, batch)
        assert got.dtype == dtype and torch.equal(got, expected)
        assert torch.equal(torch.rand(4), after_expected)  # the same draws were consumed


def _reference_weight_prior(weights, sigma):
    total = weights[0].new_zeros(())
    for w in weights:
        total = total + (w * w).sum() / (2 * sigma * sigma)
    return total


def test_gaussian_prior_equals_the_autograd_expression_bit_for_bit():
    from prunelab.methods.bernoulli import gaussian_prior

    torch.manual_seed(0)
    shapes = [(30, 78), (10, 3, 5, 5), (7, 30), (3, 7)]
    base = [torch.randn(s) * 0.1 for s in shapes]
    x = torch.randn(16, 78)
    results = []
    for prior in (_reference_weight_prior, gaussian_prior):
        ws = [b.clone().requires_grad_(True) for b in base]
        data = (x @ ws[0].t()).tanh().pow(2).mean() + ws[1].sum() * 1e-3
        value = prior(ws, 0.7)
        (data + value / 1000).backward()  # the data gradient accumulates with the prior's
        results.append((value.detach(), [w.grad for w in ws]))
    (v_ref, g_ref), (v, g) = results
    assert torch.equal(v, v_ref)
    assert all(torch.equal(a, b) for a, b in zip(g, g_ref))


def _reference_gate_penalty(method, gamma, pis=None):
    total = torch.zeros((), dtype=next(iter(method.gates.theta.values())).dtype)
    for name, theta in method.gates.theta.items():
        pi = (pis or {}).get(name, method.pi)
        free = (theta.detach() > 0) & (theta.detach() < 1)
        safe = torch.where(free, theta, torch.full_like(theta, 0.5))
        r = gate_regulariser(safe, pi, gamma)
        fixed = gate_regulariser(theta.detach(), pi, gamma)
        total = total + torch.where(free, r, fixed).sum()
    return total


def _theta_grads(method) -> list[torch.Tensor]:
    out = [torch.zeros_like(t) if t.grad is None else t.grad.clone()
           for t in method.gates.theta.values()]
    for t in method.gates.theta.values():
        t.grad = None
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("theta", [{"1": [0.3, 1.0, 0.0], "3": [0.55, 1.0]},
                                   {"1": [1.0, 1.0, 0.0], "3": [0.0, 1.0]}])  # all decided
def test_gate_prior_equals_the_per_layer_expression_bit_for_bit(dtype, theta):
    model = tiny_net(dtype)
    method = attached(model, theta_init=0.5, gamma=2.0, gamma_final=7.0, gamma_ramp=0.5)
    set_theta(method, theta)
    for step in (10, 40):  # constant gamma, then inside the gamma ramp
        method.step = step
        scale = method.penalty_scale * method.gate_cost_factor() / method._n()
        weights = method._weight_prior(model) / method._n()
        got = method.penalty(model)
        got.backward()
        grads = _theta_grads(method)
        expected = weights.detach() + _reference_gate_penalty(method, method.gamma_at()) * scale
        expected.backward()
        assert torch.equal(got.detach(), expected.detach())
        assert all(torch.equal(a, b) for a, b in zip(grads, _theta_grads(method)))
    # the cached costs of fixed gates do not depend on gamma
    ends = torch.tensor([0.0, 1.0], dtype=dtype)
    for gamma in (0.0, 1.0, 2.0, 20.0):
        assert torch.equal(gate_regulariser(ends, method.pi, gamma),
                           torch.stack(method._fixed_costs(ends, method.pi)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gate_prior_gradient_is_autograds_bit_for_bit_on_many_gates(dtype):
    """gate_prior_gradient against autograd through the plain expression, on 40,000 random
    gates (fixed ones included), for several pi, gamma and loss scales."""
    from prunelab.methods.bernoulli import gate_prior_gradient

    gen = torch.Generator().manual_seed(0)
    base = [torch.rand(n, generator=gen, dtype=dtype) for n in (30000, 9000, 1000)]
    base[0][:500], base[1][:300], base[2][:] = 1.0, 0.0, 1.0  # the last layer all decided
    for pi, gamma, scale in [(0.2, 2.0, 30 / 60000), (0.05, 7.123, 1.0), (0.3, 20.0, 0.37),
                             (0.5, 1.0, 3.0), (0.2, 0.0, 1e-4)]:
        ends = gate_regulariser(torch.tensor([0.0, 1.0], dtype=dtype), pi, gamma)
        thetas = [b.clone().requires_grad_(True) for b in base]
        raw = torch.cat(thetas)
        value = raw.detach()
        free = (value > 0) & (value < 1)
        r = gate_regulariser(torch.where(free, raw, 0.5), pi, gamma)
        per_gate = torch.where(free, r, torch.where(value > 0, ends[1], ends[0]))
        total = torch.zeros((), dtype=dtype)
        for part in per_gate.split([t.numel() for t in thetas]):
            total = total + part.sum()
        (torch.zeros((), dtype=dtype) + total * scale).backward()
        got = gate_prior_gradient(value, free, pi, gamma, scale)
        assert torch.equal(got, torch.cat([t.grad for t in thetas]))
        assert not got[-1000:].any()  # decided gates get no gradient from the prior


@pytest.mark.parametrize("feature_pi", [None, 0.3])
@pytest.mark.parametrize("theta", [{"1": [0.3, 1.0, 0.0], "3": [0.55, 1.0]},
                                   {"1": [0.3, 0.7, 0.0], "3": [1.0, 1.0]},
                                   {"1": [1.0, 1.0, 0.0], "3": [0.0, 1.0]}])
def test_gate_prior_as_gradient_updates_theta_like_the_prior_in_the_loss(feature_pi, theta):
    """gate_prior_as="gradient" moves theta exactly as the gate prior differentiated in the
    loss does (straight-through estimator), inside the gamma ramp, with input gates of their
    own pi; penalty() then leaves the gate prior out."""
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    after = []
    for mode in ("loss", "gradient"):
        torch.manual_seed(0)
        model = tiny_net(torch.float32)
        method = attached(model, theta_init=0.5, gamma=2.0, gamma_final=7.0, gamma_ramp=0.5,
                          shrink=False, gate_inputs=feature_pi is not None,
                          feature_pi=feature_pi, gate_prior_as=mode, lr_theta=0.7)
        set_theta(method, theta)
        before = {n: t.detach().clone() for n, t in method.gates.theta.items()}
        method.step = 39
        torch.manual_seed(1)
        loss = method.batch_loss(model, x, y, F.cross_entropy) + method.penalty(model)
        loss.backward()
        if mode == "gradient":
            assert torch.equal(method.penalty(model), method._weight_prior(model) / method._n())
        method.after_step(40)
        after.append({n: t.detach().clone() for n, t in method.gates.theta.items()})
    assert after[0].keys() == after[1].keys()
    assert all(torch.equal(after[0][n], after[1][n]) for n in after[0])
    free = any(((t > 0) & (t < 1)).any() for t in before.values())
    assert free == any(not torch.equal(after[1][n], before[n]) for n in before)


def _reference_update(method, step):
    """The per-layer projected update of theta, as written before it was batched."""
    out = {}
    for name, theta in method.gates.theta.items():
        theta = theta.detach().clone()
        free = (theta > 0) & (theta < 1)
        g = method.gates.theta[name].grad
        if g is not None:
            new = (theta - method.lr_theta * g).clamp_(0.0, 1.0)
            theta.copy_(torch.where(free, new, theta))
        low = free & (theta < method.threshold)
        theta[free & (theta > 1.0 - method.threshold)] = 1.0
        theta[low] = 0.0
        out[name] = theta
    return out


@pytest.mark.parametrize("missing_grad,theta", [
    (False, {"1": [0.3, 1.0, 0.06], "3": [0.55, 0.96]}),
    (True, {"1": [0.3, 1.0, 0.06], "3": [0.55, 0.96]}),
    (False, {"1": [1.0, 1.0, 0.0], "3": [0.0, 1.0]})])  # all decided
def test_theta_update_equals_the_per_layer_update_bit_for_bit(missing_grad, theta):
    method = attached(tiny_net(torch.float32), theta_init=0.5, shrink=False, lr_theta=0.7,
                      threshold=0.05)
    set_theta(method, theta)
    grads = {"1": [0.11, 0.5, 0.3], "3": [-0.123456, -0.02]}
    for name, t in method.gates.theta.items():
        t.grad = torch.tensor(grads[name], dtype=t.dtype)
    if missing_grad:
        method.gates.theta["3"].grad = None
    expected = _reference_update(method, 1)
    method.after_step(1)
    for name, t in method.gates.theta.items():
        assert torch.equal(t.detach(), expected[name]) and t.grad is None
    assert method.gates.theta["1"][2] == 0.0  # 0.06 - 0.7 * 0.3 < threshold: removed
    assert method.gates.theta["1"][1] == 1.0


def test_frozen_theta_gives_the_same_forward_without_a_graph_to_theta():
    model = tiny_net(torch.float32)
    method = attached(model, theta_init=0.9, warmup=0.5)
    x = torch.randn(6, 4)
    outs = []
    for theta_grad in (True, False):
        method.gates.theta_grad = theta_grad
        torch.manual_seed(3)
        out = model(x)
        out.sum().backward()
        outs.append(out.detach())
        got = [t.grad is not None for t in method.gates.theta.values()]
        assert all(got) if theta_grad else not any(got)
        for t in method.gates.theta.values():
            t.grad = None
    assert torch.equal(outs[0], outs[1])
    # the method switches the path off exactly while theta is frozen (steps 1..25 of 50)
    for step, frozen in ((0, True), (24, True), (25, False)):
        method.step = step
        method.batch_loss(model, x, torch.tensor([0, 1, 2, 0, 1, 2]), F.cross_entropy)
        assert method.gates.theta_grad is not frozen


def test_gaussian_prior_as_gradient_trains_like_the_prior_in_the_loss():
    """The prior's gradient added before each step gives the same run (to float rounding) as
    the prior differentiated in the loss, across shrink events (the hook follows the rebuilt
    optimizer), and penalty() then leaves the prior out."""
    data = load_dataset("xor", n_relevant=2, n_irrelevant=4, n_train=400, n_test=400, seed=0)
    runs = {}
    for how in ("loss", "gradient"):
        torch.manual_seed(0)
        model = mlp(data.input_shape, data.num_classes, widths=(32, 16))
        method = build_method("bernoulli", penalty_scale=5.0, lr_theta=2.0, theta_init=0.8,
                              shrink_every=5, prior_sigma=0.05, gaussian_prior_as=how,
                              finalize=False)
        cfg = TrainConfig(epochs=4, batch_size=50, optimizer="adam", lr=1e-2, eval_train=False)
        Trainer(model, data, cfg, method).fit()
        runs[how] = method
    a, b = runs["loss"], runs["gradient"]
    assert a.shrink_events > 0 and b.shrink_events == a.shrink_events
    assert a.widths() == b.widths()
    for p, q in zip(a.ctx.model.parameters(), b.ctx.model.parameters()):
        assert torch.allclose(p, q, atol=1e-4)
    assert len(b.ctx.optimizer._optimizer_step_pre_hooks) == 1
    assert float(b._weight_prior(b.ctx.model)) == 0.0
    assert float(a._weight_prior(a.ctx.model).detach()) > 0.0


def test_gaussian_prior_as_is_checked():
    with pytest.raises(ConfigError, match="gaussian_prior_as"):
        BernoulliGating(gaussian_prior_as="autograd")


def test_reproduction_summary_reports_dense_seed_noise_next_to_the_spread():
    from prunelab.experiments.bernoulli import _dense_reference, _summarise

    dense = {"lenet-300-100": _dense_reference([
        {"seed": 0, "test_error_pct": 1.6, "params": 10, "flops": 20, "seconds": 40.0},
        {"seed": 1, "test_error_pct": 1.4, "params": 10, "flops": 20, "seconds": 41.0}])}
    rows = [{"model": "lenet-300-100", "width": f"x{f}", "seed": s, "units": u,
             "widths": [u - 30, 30], "test_error_pct": e, "input_features": None,
             "undecided_at_end": 0,
             "max_undecided_distance": 0.0, "seconds": 30.0 + s, "train_flops_saved": 0.3}
            for f, s, u, e in [(1, 0, 110, 1.9), (1, 1, 120, 2.1), (2, 0, 115, 2.0)]]
    plan = {"models": ["lenet-300-100"], "epochs": {"lenet-300-100": 1}, "runs": [],
            "options": {}}
    res = _summarise(plan, rows, dense, True, 1.0, 100)
    ref = res["models"]["lenet-300-100"]["dense"]
    assert ref["seconds"] == 40.0 and ref["seed"] == 0
    assert ref["error_mean_pct"] == pytest.approx(1.5)
    assert ref["error_spread_pts"] == pytest.approx(0.2)
    assert ref["error_std_pts"] == pytest.approx(0.02 ** 0.5)
    spread = res["models"]["lenet-300-100"]["spread"]
    assert spread["error_spread_pts"] == pytest.approx(0.2)
    claims = {c["name"]: c for c in res["claims"]}
    cv = claims["lenet-300-100:units-cv"]  # units 110, 120, 115: SD 5, mean 115
    assert cv["estimate"] == pytest.approx(5 / 115) and cv["verdict"] == "held"
    timing = claims["lenet-300-100:wall-time"]
    # x1 seeds 0 and 1 (30 s, 31 s) paired with the dense runs of the same seeds (40 s, 41 s)
    assert timing["estimate"] == pytest.approx(-10.0) and timing["n_measured"] == 2
    assert timing["verdict"] == "too few runs (n=2 < 10)" and "30.5s vs dense 40.5s" in \
        timing["note"]
    assert claims["lenet-300-100:error-sd"]["verdict"] == "not measured"  # no mistakes recorded
    # with each run's mistakes (the first 19, 21 and 20 of 1,000 test examples): example 19
    # flips at rate 2/3, example 20 at 1/3, the rest never; errors 1.9, 2.1, 2.0% (SD 0.1)
    for row, wrong in zip(rows, (19, 21, 20)):
        row["test_mistakes"] = list(range(wrong))
    sd_claim = {c["name"]: c for c in _summarise(plan, rows, dense, True, 1.0, 100, 1000)[
        "claims"]}["lenet-300-100:error-sd"]
    sampling = 100 * (4 / 9 * 1.5) ** 0.5 / 1000  # (2/9 + 2/9) * 3/(3 - 1) / 1000^2, in points
    assert sd_claim["estimate"] == pytest.approx(0.1 / sampling)  # 1.22 <= 1.25
    assert sd_claim["verdict"] == "held"


def test_feature_pi_prices_the_input_feature_gates_on_their_own():
    model = tiny_net()
    method = attached(model, theta_init=0.5, gate_inputs=True, pi=0.2, feature_pi=0.45)
    assert method.feature_sites == ["0"]
    set_theta(method, {"0": [0.3, 1.0, 0.0, 0.7], **THETA})
    method.step = 10
    scale = method.penalty_scale * method.gate_cost_factor() / method._n()
    got = method.penalty(model) - method._weight_prior(model) / method._n()
    expected = _reference_gate_penalty(method, method.gamma, {"0": 0.45}) * scale
    assert torch.allclose(got, expected, rtol=1e-12)
    same_pi = _reference_gate_penalty(method, method.gamma) * scale
    assert not torch.allclose(got, same_pi)  # the features' cost did change
    # a kept feature costs log((1 - pi) / pi) more than a removed one
    r0, r1 = method._fixed_costs(torch.zeros(()), 0.45)
    assert float(r1 - r0) == pytest.approx(math.log(0.55 / 0.45))


@pytest.mark.parametrize("options, message", [
    ({"feature_pi": 0.3}, "needs gate_inputs=True"),
    ({"feature_pi": 1.0, "gate_inputs": True}, "feature_pi"),
])
def test_feature_pi_refuses_bad_settings(options, message):
    with pytest.raises(ConfigError, match=message):
        BernoulliGating(**options)


def test_reproduction_interleaves_dense_and_x1_runs_of_the_same_seed():
    from prunelab.experiments.bernoulli import _schedule

    order = _schedule([0, 1, 2], [(1, 0), (1, 1), (2, 0), (4, 0), (1, 3)])
    assert order == [("dense", 1, 0), ("bernoulli", 1, 0),
                     ("bernoulli", 1, 1), ("dense", 1, 1),
                     ("dense", 1, 2),
                     ("bernoulli", 2, 0), ("bernoulli", 4, 0), ("bernoulli", 1, 3)]
