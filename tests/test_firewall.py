"""The test-set firewall: the test split is sealed until the selection is frozen, every hand-out
is recorded, and each reproduction runs its selection without touching test data."""

from __future__ import annotations

import json

import pytest
import torch

from prunelab.config import TrainConfig
from prunelab.data import load_dataset
from prunelab.firewall import Firewall, FirewallError, GuardedDataset
from prunelab.models import build_model
from prunelab.train import Trainer, evaluate


def _xor():
    return load_dataset("xor", n_irrelevant=2, n_train=120, n_test=60, seed=0)


def test_guarded_dataset_seals_only_the_test_split():
    fw = Firewall("toy")
    plain = _xor()
    data = fw.guard(plain)
    assert isinstance(data, GuardedDataset) and data.n_test == 60 and data.n_train == 120
    assert torch.equal(data.x_train, plain.x_train)
    assert data.summary()["n_test"] == 60 and "sealed" in repr(data)
    for name in ("x_test", "y_test"):
        with pytest.raises(FirewallError, match=f"{name} of 'xor' was read directly"):
            getattr(data, name)
    val = fw.validation(data, 0.25, seed=1)  # validation takes the test split's place
    assert not isinstance(val, GuardedDataset) and val.n_train + val.n_test == 120
    assert torch.equal(val.x_test, plain.holdout_validation(0.25, 1).x_test)
    sub = data.subset_train(50, seed=0)
    assert isinstance(sub, GuardedDataset) and sub.n_train == 50
    with pytest.raises(FirewallError):
        sub.x_test


def test_test_split_opens_after_the_freeze_and_each_access_is_recorded():
    fw = Firewall("toy")
    data = fw.load("xor", n_irrelevant=2, n_train=120, n_test=60, seed=0)
    with pytest.raises(FirewallError, match="before the selection was frozen"):
        fw.test(data, "model A")
    with pytest.raises(FirewallError):
        fw.record("census", "test accuracy")
    fw.freeze(lr=0.1, rule="best validation accuracy")
    test = fw.test(data, "model A", "test loss")
    assert torch.equal(test.x_test, _xor().x_test)
    fw.record("census restarts", "test accuracy", count=32)
    out = fw.to_results()
    assert out["selection"]["frozen"] and out["selection"]["choices"] == {
        "lr": 0.1, "rule": "best validation accuracy"}
    assert [(e["index"], e["what"], e["metric"], e["count"]) for e in out["test_evaluations"]] \
        == [(1, "model A", "test loss", 1), (2, "census restarts", "test accuracy", 32)]
    json.dumps(out)
    with pytest.raises(FirewallError, match="frozen twice"):
        fw.freeze(lr=0.2)
    with pytest.raises(FirewallError, match="another firewall"):
        Firewall("other").test(data, "x")


def test_trainer_on_guarded_data_fails_until_validation_data_is_used():
    """The Trainer evaluates the dataset's test split every epoch, so training on a guarded
    dataset during selection is caught; on the validation split it runs."""
    fw = Firewall("toy")
    data = fw.guard(_xor())
    cfg = TrainConfig(epochs=1, batch_size=32, optimizer="adam", lr=1e-2, eval_train=False)
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, data.num_classes, widths=[8])
    with pytest.raises(FirewallError, match="x_test"):
        Trainer(model, data, cfg, progress=False).fit()
    res = Trainer(model, fw.validation(data, 0.25), cfg, progress=False).fit()
    assert 0.0 <= res.final["test_accuracy"] <= 1.0
    fw.freeze(epochs=1)
    final = fw.test(data, "toy model", "test accuracy")
    assert evaluate(model, final.x_test, final.y_test)["accuracy"] >= 0.0
    assert len(fw.evaluations) == 1
