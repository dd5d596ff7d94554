"""Model registry. The MNIST-scale models are `nn.Sequential` chains; the CIFAR networks
(`prunelab.cifar_nets`) are graphs with BatchNorm and residual additions.

Models by name: `mlp` (any widths and activation), `lenet-300-100`, `lenet5` (Caffe
20-50-800-500, ReLU after each conv as in most PyTorch reimplementations), `conv-small`
(MNIST CNN 8-16-64 of Evci's thesis, 20,522 parameters on 28x28), `lenet5-avg` (6-16 conv 3x3,
avgpool, 120-84-10 of Reiners et al.), `resnet20`/`resnet32`/`resnet56` (He et al., option-A or
B shortcuts), `wrn-16-4`/`wrn-22-2` (Zagoruyko & Komodakis), `vgg11-bn`/`vgg16-bn` (CIFAR
variants); the CIFAR networks take a `width` multiplier. Input shapes come from the dataset.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from prunelab import cifar_nets
from prunelab.errors import ConfigError, UnknownNameError
from prunelab.typecheck import check_call

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "elu": nn.ELU,
}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UnknownNameError("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


def mlp(
    input_shape: Sequence[int],
    num_classes: int,
    widths: Sequence[int] | int = (100,),
    activation: str = "relu",
    bias: bool = True,
) -> nn.Sequential:
    """Fully connected net: flatten -> [Linear -> act] * len(widths) -> Linear."""
    if isinstance(widths, int):
        widths = [widths]
    if any(int(w) < 1 for w in widths):
        raise ConfigError(f"widths must all be >= 1, got {list(widths)}")
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = math.prod(input_shape)
    for w in widths:
        layers += [nn.Linear(fan_in, int(w), bias=bias), _activation(activation)]
        fan_in = int(w)
    layers.append(nn.Linear(fan_in, num_classes, bias=bias))
    return nn.Sequential(*layers)


def lenet_300_100(input_shape: Sequence[int], num_classes: int, activation: str = "relu"):
    """LeNet-300-100: the classic 784-300-100-10 MLP."""
    return mlp(input_shape, num_classes, (300, 100), activation)


def _image_shape(input_shape: Sequence[int], model: str, min_side: int) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ConfigError(
            f"model '{model}' needs image input (channels, height, width); the dataset gives "
            f"shape {tuple(input_shape)}: use an image dataset such as mnist or digits, or 'mlp'"
        )
    c, h, w = (int(s) for s in input_shape)
    if min(h, w) < min_side:
        raise ConfigError(
            f"model '{model}' needs images of at least {min_side}x{min_side}, got {h}x{w}"
        )
    return c, h, w


def _conv_chain(
    input_shape: Sequence[int],
    num_classes: int,
    model: str,
    channels: Sequence[int],
    kernel: int,
    pool: Callable[[], nn.Module],
    hidden: Sequence[int],
    min_side: int,
) -> nn.Sequential:
    c, h, w = _image_shape(input_shape, model, min_side)
    layers: list[nn.Module] = []
    for out in channels:
        layers += [nn.Conv2d(c, out, kernel), nn.ReLU(), pool()]
        c = out
    layers.append(nn.Flatten())
    with torch.no_grad():
        flat = nn.Sequential(*layers)(torch.zeros(1, *input_shape)).shape[1]
    fan_in = flat
    for width in hidden:
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    layers.append(nn.Linear(fan_in, num_classes))
    return nn.Sequential(*layers)


def lenet5(input_shape: Sequence[int], num_classes: int, width: float = 1.0) -> nn.Sequential:
    """Caffe LeNet-5: conv 20 (5x5) -> maxpool -> conv 50 (5x5) -> maxpool -> fc 500 -> fc;
    `width` multiplies the 20, 50 and 500 (rounded, at least 1): a small dense network of a
    sparse one's parameter count."""
    if not width > 0:
        raise ConfigError(f"width must be > 0, got {width}")
    c1, c2, h = (max(1, round(n * width)) for n in (20, 50, 500))
    return _conv_chain(input_shape, num_classes, "lenet5", (c1, c2), 5,
                       lambda: nn.MaxPool2d(2), (h,), 12)


def conv_small(input_shape: Sequence[int], num_classes: int) -> nn.Sequential:
    """Evci's MNIST CNN: conv 8 (5x5) -> pool -> conv 16 (5x5) -> pool -> fc 64 -> fc."""
    return _conv_chain(input_shape, num_classes, "conv-small", (8, 16), 5,
                       lambda: nn.MaxPool2d(2), (64,), 12)


def lenet5_avg(input_shape: Sequence[int], num_classes: int) -> nn.Sequential:
    """Reiners et al.'s LeNet-5 variant: conv 6 (3x3) -> avgpool -> conv 16 (3x3) -> avgpool
    -> dense 120 -> 84 -> classes (400-120-84-10 on 28x28 MNIST)."""
    return _conv_chain(input_shape, num_classes, "lenet5-avg", (6, 16), 3,
                       lambda: nn.AvgPool2d(2), (120, 84), 8)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "lenet-300-100": lenet_300_100,
    "lenet5": lenet5,
    "conv-small": conv_small,
    "lenet5-avg": lenet5_avg,
    "resnet20": cifar_nets.resnet20,
    "resnet32": cifar_nets.resnet32,
    "resnet56": cifar_nets.resnet56,
    "wrn-16-4": cifar_nets.wrn_16_4,
    "wrn-22-2": cifar_nets.wrn_22_2,
    "vgg11-bn": cifar_nets.vgg11_bn,
    "vgg16-bn": cifar_nets.vgg16_bn,
}


def list_models() -> list[str]:
    """Registered model names."""
    return list(MODELS)


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, **options: Any
) -> nn.Module:
    """Build a registered model for the given input shape; unknown options are named."""
    import inspect

    factory = MODELS.get(name)
    if factory is None:
        raise UnknownNameError("model", name, MODELS)
    params = list(inspect.signature(factory).parameters)[2:]
    unknown = sorted(set(options) - set(params))
    if unknown:
        valid = ", ".join(params) or "none"
        raise ConfigError(f"model '{name}' has no option {', '.join(unknown)}; valid: {valid}")
    check_call(factory, options, f"model '{name}' option ")
    model = factory(tuple(input_shape), int(num_classes), **options)
    # how to build it again (the channel grouping's default example input, saved shrunk graphs)
    model._prunelab_build = {"model": name, "input_shape": [int(s) for s in input_shape],
                             "num_classes": int(num_classes), "options": dict(options)}
    return model


def build_info(model: nn.Module) -> dict[str, Any] | None:
    """The registry name, input shape, class count and options `build_model` built `model`
    with (kept by copies and shrunk copies); None for models built otherwise."""
    info = getattr(model, "_prunelab_build", None)
    return dict(info) if isinstance(info, dict) else None


def count_parameters(model: nn.Module) -> int:
    """Total number of parameters (pruned or not)."""
    return sum(p.numel() for p in model.parameters())
