"""Weighted-sum biobjective training: the penalty, intra-training pruning, the l1 set, bad input."""

from __future__ import annotations

import pytest
import torch

from prunelab.config import TrainConfig
from prunelab.data import Dataset
from prunelab.errors import ConfigError
from prunelab.methods import build_method, list_methods
from prunelab.methods.base import TrainContext
from prunelab.methods.biobjective import BiobjectiveTraining, l1_parameters, prune_small_
from prunelab.train import Trainer


def _attach(method, model, lr=0.1):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    method.attach(TrainContext(model, opt, 1, 1, 1))
    return opt


def _images(n=40):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean(dim=(1, 2)) > 0).long() + (x[:, 0, 4:].mean(dim=(1, 2)) > 0).long()
    return Dataset("toy", x, y, x[:10], y[:10], 3)


def test_registered_and_built_by_name():
    assert "biobjective" in list_methods()
    m = build_method("biobjective", weight=0.9, tau=0.01)
    assert isinstance(m, BiobjectiveTraining) and m.ratio == pytest.approx(0.1 / 0.9)


def test_l1_set_defaults_to_dense_kernels_and_is_configurable(tiny_cnn):
    assert list(l1_parameters(tiny_cnn)) == ["6.weight", "8.weight"]
    assert list(l1_parameters(tiny_cnn, ["Conv2d"])) == ["0.weight", "3.weight"]
    assert list(l1_parameters(tiny_cnn, ["8.weight", "8.bias"])) == ["8.weight", "8.bias"]
    with pytest.raises(ConfigError, match="l1_params entry 'Dense'"):
        l1_parameters(tiny_cnn, ["Dense"])


def test_penalty_realises_the_weighted_sum_up_to_the_factor_lambda(tiny_cnn):
    lam, beta = 0.8, 1e-2
    method = BiobjectiveTraining(weight=lam, tau=0.0, conv_l2=beta)
    _attach(method, tiny_cnn)
    x = torch.randn(5, 1, 10, 10)
    y = torch.tensor([0, 1, 2, 0, 1])
    ce = torch.nn.functional.cross_entropy(tiny_cnn(x), y)
    params = dict(tiny_cnn.named_parameters())
    l1 = params["6.weight"].abs().sum() + params["8.weight"].abs().sum()
    l2 = 0.5 * (params["0.weight"].pow(2).sum() + params["3.weight"].pow(2).sum())
    total = ce + method.penalty(tiny_cnn)
    weighted = lam * (ce + beta * l2) + (1 - lam) * l1
    torch.testing.assert_close(total, weighted / lam)
    g_total = torch.autograd.grad(total, list(params.values()), retain_graph=True)
    g_weighted = torch.autograd.grad(weighted, list(params.values()))
    for a, b in zip(g_total, g_weighted):
        torch.testing.assert_close(a * lam, b)


def test_weight_one_has_no_l1_term(tiny_cnn):
    method = BiobjectiveTraining(weight=1.0, conv_l2=0.0)
    _attach(method, tiny_cnn)
    assert method.penalty(tiny_cnn) is None


def test_pruning_before_training_leaves_exactly_the_expected_zeros(tiny_cnn):
    tau = 0.05
    params = dict(tiny_cnn.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    method = BiobjectiveTraining(weight=0.99, tau=tau)
    _attach(method, tiny_cnn)
    for name, p in params.items():
        if name in ("6.weight", "8.weight"):
            expected = torch.where(before[name].abs() <= tau, 0.0, before[name])
            assert torch.equal(p.detach(), expected)
            assert int((p == 0).sum()) == int((before[name].abs() <= tau).sum()) > 0
        else:  # conv kernels and biases are never threshold-pruned
            assert torch.equal(p.detach(), before[name])


def test_pruning_after_each_step_leaves_exactly_the_expected_zeros(tiny_cnn):
    tau = 0.02
    method = BiobjectiveTraining(weight=0.99, tau=tau)
    _attach(method, tiny_cnn)
    w = dict(tiny_cnn.named_parameters())["6.weight"]
    with torch.no_grad():
        w.copy_(torch.linspace(-0.05, 0.05, w.numel()).reshape(w.shape))
        w[0, 0] = tau  # the boundary: |w| <= tau is pruned
        w[0, 1] = -tau
        w[0, 2] = tau * 1.01
    expected = torch.where(w.detach().abs() <= tau, 0.0, w.detach())
    method.after_step(1)
    assert torch.equal(w.detach(), expected)
    assert w[0, 0] == 0 and w[0, 1] == 0 and w[0, 2] != 0


def test_prune_small_counts_zeros():
    t = {"a": torch.nn.Parameter(torch.tensor([0.0, 1e-4, -1e-3, 2e-3, -0.5]))}
    assert prune_small_(t, 1e-3) == 3
    assert t["a"].tolist() == pytest.approx([0.0, 0.0, 0.0, 2e-3, -0.5])


def test_training_keeps_no_small_nonzero_dense_weight():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(3 * 6 * 6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3),
    )
    method = BiobjectiveTraining(weight=0.95, tau=1e-3)
    cfg = TrainConfig(epochs=3, batch_size=8, optimizer="adam", lr=1e-2, eval_train=False)
    result = Trainer(model, _images(), cfg, method).fit()
    for name in ("3.weight", "5.weight"):
        w = dict(model.named_parameters())[name].detach()
        assert not torch.any((w != 0) & (w.abs() <= 1e-3))
    assert result.metrics[-1]["l1_set_sparsity"] > 0.1  # strong l1 prunes many weights
    assert result.masks is None  # no persistent mask by default


def test_persistent_mask_keeps_pruned_weights_dead():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 20), torch.nn.ReLU(),
                                torch.nn.Linear(20, 3))
    with torch.no_grad():
        model[1].weight[:, :32] = 0.0  # dead from the start
    method = BiobjectiveTraining(weight=0.999, tau=1e-3, persistent_mask=True, conv_l2=0.0)
    cfg = TrainConfig(epochs=2, batch_size=8, optimizer="adam", lr=1e-2, eval_train=False)
    result = Trainer(model, _images(), cfg, method).fit()
    assert torch.all(model[1].weight[:, :32] == 0)
    masks = result.masks
    assert masks is not None and set(masks) == {"1.weight", "3.weight"}
    for name, m in masks.items():  # the mask is exactly the nonzero pattern
        w = dict(model.named_parameters())[name].detach()
        assert torch.equal(m, w != 0)
    assert not torch.any(masks["1.weight"][:, :32])


def test_without_mask_weights_may_regrow():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 20), torch.nn.ReLU(),
                                torch.nn.Linear(20, 3))
    with torch.no_grad():
        model[1].weight[:, :32] = 0.0
    method = BiobjectiveTraining(weight=1.0, tau=1e-3, conv_l2=0.0)
    cfg = TrainConfig(epochs=2, batch_size=8, optimizer="adam", lr=1e-2, eval_train=False)
    Trainer(model, _images(), cfg, method).fit()
    assert torch.any(model[1].weight[:, :32] != 0)


class _Recorder(BiobjectiveTraining):
    """Records, per step, the l1 set's zero pattern and whether the penalty had an l1 term."""

    def penalty(self, model):  # no conv layers and conv_l2=0: any penalty is the l1 term
        out = super().penalty(model)
        self.l1_terms.append(out is not None)
        return out

    def after_step(self, step):
        super().after_step(step)
        self.zeros.append({n: (p.detach() == 0).clone() for n, p in self.l1_set.items()})


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 20), torch.nn.ReLU(),
                               torch.nn.Linear(20, 3))


def test_finetune_phase_keeps_exactly_the_zeros_and_drops_l1():
    model = _mlp()
    method = _Recorder(weight=0.99, tau=2e-2, conv_l2=0.0, finetune_epochs=2)
    method.l1_terms, method.zeros = [], []
    data = _images()
    cfg = TrainConfig(epochs=5, batch_size=8, optimizer="adam", lr=1e-2, eval_train=False)
    result = Trainer(model, data, cfg, method).fit()
    steps = len(method.zeros)
    switch = 3 * (steps // 5)  # steps of the 3 weighted-sum epochs
    assert method.l1_terms == [True] * switch + [False] * (steps - switch)
    frozen = method.zeros[switch - 1]
    assert sum(int(z.sum()) for z in frozen.values()) > 0  # the l1 phase pruned something
    for zeros in method.zeros[switch:]:  # the same zeros, no more and no fewer
        for name, z in zeros.items():
            assert torch.equal(z, frozen[name])
    assert result.masks is not None
    for name, m in result.masks.items():
        assert torch.equal(m, ~frozen[name])
    # Without the l1 pull, small weights are no longer thresholded: some survive below tau.
    params = dict(model.named_parameters())
    small = [(params[n].detach().abs() <= 2e-2) & (params[n].detach() != 0) for n in frozen]
    assert any(bool(s.any()) for s in small)


def test_finetune_epochs_must_leave_a_weighted_sum_epoch():
    with pytest.raises(ConfigError, match="finetune_epochs"):
        BiobjectiveTraining(finetune_epochs=-1)
    cfg = TrainConfig(epochs=2, batch_size=8, optimizer="adam", lr=1e-2, eval_train=False)
    with pytest.raises(ConfigError, match=r"finetune_epochs must be < the run's epochs \(2\)"):
        Trainer(_mlp(), _images(), cfg, BiobjectiveTraining(finetune_epochs=2)).fit()


@pytest.mark.parametrize(
    ("options", "needle"),
    [({"weight": 1.5}, r"weight must be in \[0, 1\]"),
     ({"weight": -0.1}, r"weight must be in \[0, 1\]"),
     ({"weight": 0.0}, "pure l1"),
     ({"tau": -1e-3}, r"tau must be in \[0, inf\]"),
     ({"conv_l2": -1.0}, "conv_l2"),
     ({"l1_params": []}, "l1_params")],
)
def test_bad_options_are_one_line_errors(options, needle):
    with pytest.raises(ConfigError, match=needle) as exc:
        BiobjectiveTraining(**options)
    assert "\n" not in str(exc.value)


def test_model_without_l1_parameters_is_an_error():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten())
    with pytest.raises(ConfigError, match="no parameters in the l1 set"):
        _attach(BiobjectiveTraining(), model)


def test_cli_train_and_bad_weight(tmp_path, capsys):
    from prunelab.cli import main

    out = tmp_path / "run"
    code = main(["train", "--model", "mlp", "--dataset", "xor", "--method", "biobjective",
                 "-o", "weight=0.999", "--epochs", "1", "--quiet", "--out", str(out)])
    assert code == 0 and (out / "results.json").is_file()
    code = main(["train", "--model", "mlp", "--dataset", "xor", "--method", "biobjective",
                 "-o", "weight=2", "--epochs", "1", "--quiet", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "weight must be in [0, 1]" in err[0]
    assert not (tmp_path / "bad").exists()
