"""The CIFAR networks: shapes, parameter counts of the papers, width, inputs, shortcuts, and
the first/last-layer policy of the weight methods."""

import pytest
import torch
from torch import nn

from prunelab.cifar_nets import PadShortcut
from prunelab.errors import ConfigError
from prunelab.masks import first_last_layers, full_masks, prunable_parameters
from prunelab.models import build_model, count_parameters

CIFAR_MODELS = ["resnet20", "resnet32", "resnet56", "wrn-16-4", "wrn-22-2", "vgg11-bn",
                "vgg16-bn"]


@pytest.mark.parametrize("name,expected", [
    # He et al. 2016 Table 6: 0.27M, 0.46M, 0.85M; Zagoruyko & Komodakis: WRN-16-4 2.7M
    ("resnet20", 269_722), ("resnet32", 464_154), ("resnet56", 853_018),
    ("wrn-16-4", 2_748_890), ("wrn-22-2", 1_079_642), ("vgg16-bn", 14_724_042),
])
def test_parameter_counts_match_the_papers(name, expected):
    assert count_parameters(build_model(name, (3, 32, 32), 10)) == expected


@pytest.mark.parametrize("name", CIFAR_MODELS)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 29, 35)])
def test_any_image_of_side_28_or_more(name, shape):
    model = build_model(name, shape, 7, width=0.125)
    assert model(torch.randn(2, *shape)).shape == (2, 7)


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_small_images_and_bad_width_are_refused(name):
    with pytest.raises(ConfigError, match="at least 28x28"):
        build_model(name, (3, 16, 16), 10)
    with pytest.raises(ConfigError, match="width"):
        build_model(name, (3, 32, 32), 10, width=0)
    with pytest.raises(ConfigError, match="image input"):
        build_model(name, (784,), 10)


def test_width_scales_channels():
    wide, narrow = build_model("resnet20", (3, 32, 32), 10), build_model(
        "resnet20", (3, 32, 32), 10, width=0.5)
    assert narrow.conv1.out_channels == 8 and wide.conv1.out_channels == 16
    assert narrow.fc.in_features == 32 and wide.fc.in_features == 64


def test_option_a_shortcut_is_parameter_free_padding():
    a = build_model("resnet20", (3, 32, 32), 10, shortcut="A")
    b = build_model("resnet20", (3, 32, 32), 10, shortcut="B")
    assert count_parameters(b) - count_parameters(a) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    pad = PadShortcut(4, 8, 2)
    x = torch.randn(1, 4, 6, 6)
    out = pad(x)
    assert out.shape == (1, 8, 3, 3)
    assert torch.equal(out[:, 2:6], x[:, :, ::2, ::2])
    assert out[:, :2].abs().sum() == 0 and out[:, 6:].abs().sum() == 0
    with pytest.raises(ConfigError, match="shortcut"):
        build_model("resnet20", (3, 32, 32), 10, shortcut="C")


def test_batchnorm_is_never_prunable_and_first_last_are_stem_and_classifier():
    model = build_model("resnet20", (3, 32, 32), 10, width=0.25)
    names = prunable_parameters(model)
    assert not any("bn" in n for n in names)
    assert all(isinstance(model.get_submodule(n.rpartition(".")[0]), (nn.Conv2d, nn.Linear))
               for n in names)
    assert first_last_layers(model) == ("conv1", "fc")
    kept = full_masks(model, keep_first_last=True)
    assert "conv1.weight" not in kept and "fc.weight" not in kept
    assert len(kept) == len(names) - 2


def test_keep_first_last_keeps_them_dense_under_gmp():
    from prunelab.config import TrainConfig
    from prunelab.data import load_dataset
    from prunelab.methods import build_method
    from prunelab.train import Trainer

    data = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, data.num_classes, widths=[32, 32])
    method = build_method("magnitude", sparsity=0.9, keep_first_last=True)
    result = Trainer(model, data, TrainConfig(epochs=2, batch_size=64, lr=0.05), method,
                     progress=False).fit()
    layers = {e["layer"]: e for e in result.sparsity["layers"]}
    assert layers["1"]["weight_sparsity"] == 0.0 and layers["5"]["weight_sparsity"] == 0.0
    assert layers["3"]["weight_sparsity"] == pytest.approx(0.9, abs=0.01)
