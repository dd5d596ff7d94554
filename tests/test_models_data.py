"""Model registry and the built-in synthetic datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunelab.data import load_dataset
from prunelab.data.base import stratified_split
from prunelab.errors import ConfigError, UnknownNameError
from prunelab.models import build_model, count_parameters


@pytest.mark.parametrize(
    "name, shape, params",
    [
        ("conv-small", (1, 28, 28), 20_522),
        ("lenet-300-100", (1, 28, 28), 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10),
        ("lenet5", (1, 28, 28), 431_080),
        ("lenet5-avg", (1, 28, 28), 6 * 9 + 6 + 16 * 6 * 9 + 16 + 58_920 + 120 + 84 + 10),
    ],
)
def test_registry_models_have_the_published_sizes(name, shape, params):
    model = build_model(name, shape, 10)
    assert count_parameters(model) == params
    assert model(torch.zeros(2, *shape)).shape == (2, 10)


def test_mlp_options_and_errors():
    m = build_model("mlp", (12,), 3, widths=[7, 5], activation="tanh")
    assert [x.out_features for x in m if isinstance(x, torch.nn.Linear)] == [7, 5, 3]
    assert isinstance(m[2], torch.nn.Tanh)
    with pytest.raises(UnknownNameError, match="valid models: .*lenet5"):
        build_model("resnet", (12,), 3)
    with pytest.raises(ConfigError, match="no option depth"):
        build_model("mlp", (12,), 3, depth=3)
    with pytest.raises(ConfigError, match="image input"):
        build_model("conv-small", (64,), 10)
    with pytest.raises(ConfigError, match="at least 12x12"):
        build_model("conv-small", (1, 8, 8), 10)


def test_xor_labels_and_relevant_features():
    d = load_dataset("xor", n_relevant=2, n_irrelevant=5, n_train=300, n_test=200, seed=3)
    assert d.x_train.shape == (300, 7) and d.x_test.shape == (200, 7)
    assert d.relevant_features == [0, 1] and len(d.feature_names) == 7
    y = (d.x_train[:, 0] * d.x_train[:, 1] > 0).long()
    assert torch.equal(y, d.y_train)
    d3 = load_dataset("xor", n_relevant=3, n_irrelevant=0, n_train=100, n_test=10, seed=0)
    assert torch.equal((d3.x_train.prod(dim=1) > 0).long(), d3.y_train)
    noisy = load_dataset("xor", n_irrelevant=5, n_train=2000, n_test=10, label_noise=0.2, seed=3)
    clean = (noisy.x_train[:, 0] * noisy.x_train[:, 1] > 0).long()
    assert 0.15 < (clean != noisy.y_train).float().mean() < 0.25
    again = load_dataset("xor", n_irrelevant=5, n_train=300, n_test=200, seed=3)
    assert torch.equal(again.x_train, d.x_train)  # seeded
    other = load_dataset("xor", n_irrelevant=5, n_train=300, n_test=200, seed=4)
    assert not torch.equal(other.x_train, d.x_train)


def test_builtin_sets_standardised_on_train_only():
    for name in ("blobs", "madelon-like", "digits"):
        d = load_dataset(name, seed=1)
        x = d.x_train.reshape(d.n_train, -1)
        assert x.mean(0).abs().max() < 1e-4
        stds = x.std(0, unbiased=False)
        assert ((stds - 1).abs() < 1e-3).logical_or(stds < 1e-6).all()
        assert d.num_classes == int(d.y_train.max()) + 1
    ml = load_dataset("madelon-like", n_features=100, n_informative=4, n_redundant=6)
    assert ml.relevant_features == list(range(10))
    assert load_dataset("digits").input_shape == (1, 8, 8)


def test_stratified_split_is_seeded_and_proportional():
    y = np.array([0] * 80 + [1] * 20)
    tr, te = stratified_split(y, 0.25, seed=5)
    assert len(te) == 25 and (y[te] == 1).sum() == 5
    assert set(tr) | set(te) == set(range(100)) and not set(tr) & set(te)
    tr2, te2 = stratified_split(y, 0.25, seed=5)
    assert np.array_equal(te, te2)
    assert not np.array_equal(te, stratified_split(y, 0.25, seed=6)[1])


def test_dataset_errors_list_valid_names():
    with pytest.raises(UnknownNameError, match="valid datasets: .*xor"):
        load_dataset("cifar")
    with pytest.raises(ConfigError, match="no option n_noise.*n_irrelevant"):
        load_dataset("xor", n_noise=3)
    with pytest.raises(ConfigError, match="label_noise"):
        load_dataset("xor", label_noise=0.7)


def test_validation_option_holds_out_part_of_the_training_set_and_drops_the_test_set():
    full = load_dataset("blobs", seed=3)
    val = load_dataset("blobs", seed=3, validation=0.25)
    assert val.n_train + val.n_test == full.n_train
    # every train and validation row comes from the original training set, none twice
    rows = {tuple(r.tolist()) for r in full.x_train}
    test_rows = {tuple(r.tolist()) for r in full.x_test}
    got = [tuple(r.tolist()) for r in torch.cat([val.x_train, val.x_test])]
    assert set(got) <= rows and len(set(got)) == len(got) and not set(got) & test_rows
    # stratified: each class is held out in proportion
    for c in range(full.num_classes):
        n_c = int((full.y_train == c).sum())
        assert abs(int((val.y_test == c).sum()) - 0.25 * n_c) <= 1
    assert val.meta["evaluation"] == "validation" and "(validation)" in val.name
    same = load_dataset("blobs", seed=3, validation="0.25")  # as the CLI passes it
    assert torch.equal(same.x_test, val.x_test)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, "half"])
def test_validation_fraction_outside_the_open_unit_interval_is_refused(bad):
    with pytest.raises(ConfigError, match="validation"):
        load_dataset("xor", validation=bad)


def test_unknown_dataset_option_lists_validation():
    with pytest.raises(ConfigError, match="valid options: .*validation"):
        load_dataset("xor", speed=2)
