"""Bernoulli gates on channel groups of graph models: a closed gate is exactly the shrunk
network, channels leave mid-training with the optimizer state, and the method trains ResNet-20
and VGG end to end to a smaller deterministic network."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import tiny_images
from prunelab.config import TrainConfig
from prunelab.errors import ConfigError
from prunelab.group_gates import GroupGates
from prunelab.groups import channel_groups
from prunelab.methods.base import TrainContext
from prunelab.methods.bernoulli import BernoulliGating
from prunelab.models import build_model, count_parameters
from prunelab.shrink import from_architecture
from prunelab.train import Trainer

SHAPE = (3, 28, 28)


def attached(model, optimizer="sgd", **options) -> BernoulliGating:
    options.setdefault("shrink_every", 1)
    method = BernoulliGating(n_train=100, **options)
    opt = (torch.optim.Adam(model.parameters(), lr=1e-2) if optimizer == "adam"
           else torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    method.attach(TrainContext(model, opt, 10, 50, 5))
    return method


NETS = [("resnet20", {"width": 0.25, "shortcut": "A"}), ("vgg11-bn", {"width": 0.125})]


@pytest.mark.parametrize("name,opts", NETS)
def test_closed_gates_are_the_shrunk_network(name, opts):
    torch.manual_seed(0)
    model = build_model(name, SHAPE, 4, **opts).double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.0  # train-mode passes leave the running statistics alone
    method = attached(model, theta_init=0.5)
    assert isinstance(method.gates, GroupGates)
    assert set(method.gates.theta) == {g.name for g in channel_groups(model)}
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for t in method.gates.theta.values():
            t.copy_(torch.randint(0, 2, t.shape, generator=g).to(t))
            t[0] = 1.0
    x = torch.randn(4, *SHAPE, dtype=torch.float64)
    model.eval()
    gated_eval = model(x)
    model.train()
    gated_train = model(x)  # theta in {0, 1}: the sampled gates are deterministic
    kept = {n: int(t.sum()) for n, t in method.gates.theta.items()}
    final = method.finalize_network()
    assert method.gates is None and method.widths() == kept
    assert all(not m._forward_pre_hooks for m in final.modules())
    torch.testing.assert_close(final(x), gated_train, rtol=1e-9, atol=1e-9)
    final.eval()
    torch.testing.assert_close(final(x), gated_eval, rtol=1e-9, atol=1e-9)
    assert {g.name: g.size for g in channel_groups(final)} == kept
    assert count_parameters(final) < count_parameters(model)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_removing_channels_mid_training_keeps_optimizer_state(optimizer):
    torch.manual_seed(0)
    model = build_model("resnet20", SHAPE, 4, width=0.25, shortcut="B")
    method = attached(model, optimizer=optimizer, theta_init=0.9)
    x, y = torch.randn(8, *SHAPE), torch.randint(0, 4, (8,))
    for step in range(1, 3):
        loss = method.batch_loss(method.ctx.model, x, y, F.cross_entropy)
        loss = loss + method.penalty(method.ctx.model)
        method.ctx.optimizer.zero_grad()
        loss.backward()
        method.ctx.optimizer.step()
        method.after_step(step)
    old_model, old_opt = method.ctx.model, method.ctx.optimizer
    key = "exp_avg" if optimizer == "adam" else "momentum_buffer"
    old_state = {n: old_opt.state[p][key].clone() for n, p in old_model.named_parameters()}
    with torch.no_grad():
        method.gates.theta["conv1"][1] = 0.01  # a channel of the stage-1 residual stream
        method.gates.theta["layer3.1.conv1"][[0, 5]] = 0.01  # two of a block's inner channels
    method.after_step(3)
    new_model, new_opt = method.ctx.model, method.ctx.optimizer
    assert new_model is not old_model and new_opt is not old_opt
    assert method.widths()["conv1"] == 3 and method.widths()["layer3.1.conv1"] == 14
    params = dict(new_model.named_parameters())
    assert {id(p) for g in new_opt.param_groups for p in g["params"]} == {
        id(p) for p in params.values()}
    keep = torch.tensor([0, 2, 3])
    for b in range(3):  # the stream channel left every block of the stage
        assert new_model.layer1[b].conv2.out_channels == 3
        assert torch.equal(new_opt.state[params[f"layer1.{b}.conv1.weight"]][key],
                           old_state[f"layer1.{b}.conv1.weight"][:, keep])
        assert torch.equal(new_opt.state[params[f"layer1.{b}.bn2.weight"]][key],
                           old_state[f"layer1.{b}.bn2.weight"][keep])
    inner = torch.tensor([i for i in range(16) if i not in (0, 5)])
    assert torch.equal(new_opt.state[params["layer3.1.conv2.weight"]][key],
                       old_state["layer3.1.conv2.weight"][:, inner])
    assert method.orig_index["layer3.1.conv1"].tolist() == inner.tolist()
    loss = method.batch_loss(new_model, x, y, F.cross_entropy)  # training goes on
    new_opt.zero_grad()
    loss.backward()
    new_opt.step()
    assert method.gates.theta["conv1"].grad is not None


@pytest.mark.parametrize("name,opts", NETS)
def test_bernoulli_trains_graph_models_to_a_smaller_deterministic_network(name, opts):
    data = tiny_images(n_train=32, n_test=16)
    torch.manual_seed(0)
    model = build_model(name, data.input_shape, data.num_classes, **opts)
    dense_params = count_parameters(model)
    method = BernoulliGating(penalty_scale=20.0, lr_theta=5.0, theta_init=0.8,
                             shrink_every=2, n_train=32)
    cfg = TrainConfig(epochs=3, batch_size=16, optimizer="sgd", lr=0.01, eval_train=False)
    result = Trainer(model, data, cfg, method, progress=False).fit()
    final = method.ctx.model
    assert method.gates is None and method.shrink_events >= 1
    assert result.sparsity["global"]["params"] == count_parameters(final) < dense_params
    assert {g.name: g.size for g in channel_groups(final)} == method.widths()
    s = method.summary()
    assert s["train_flops"] < s["train_flops_dense"]
    rebuilt = from_architecture(method.state_dict()["architecture"])
    rebuilt.load_state_dict(final.state_dict())
    rebuilt.eval(), final.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(data.x_test), final(data.x_test))


def test_graph_gate_options_are_refused_in_one_line():
    torch.manual_seed(0)
    for options, match in (({"gate_inputs": True}, "gate_inputs"),
                           ({"gate_at": "layer"}, "gate_at='layer'"),
                           ({"layers": ["fc"]}, "'fc' cannot carry gates")):
        model = build_model("resnet20", SHAPE, 4, width=0.25)
        with pytest.raises(ConfigError, match=match) as err:
            attached(model, **options)
        assert "\n" not in str(err.value)
