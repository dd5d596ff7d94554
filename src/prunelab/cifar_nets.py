"""The field's CIFAR networks, written here (torchvision does not import with the CPU torch):
He et al.'s CIFAR ResNets (20/32/56), Zagoruyko & Komodakis' wide ResNets (WRN-16-4,
WRN-22-2) and the CIFAR variants of VGG-11/16 with BatchNorm.

Every network takes a `width` multiplier (channels scaled and rounded, at least 1) so CPU-scale
runs are possible, and works on 1- or 3-channel images of any size >= 28 (global average
pooling before the classifier; VGG's max-pools round up, so 28x28 reaches 1x1 after five).

ResNet shortcuts (`shortcut`): "A" (He et al.'s CIFAR choice: identity, with stride-2
subsampling and zero channels padded on both sides where the shape changes; no parameters)
or "B" (a 1x1 convolution with BatchNorm where the shape changes, identity elsewhere).
WRN blocks are pre-activation (BN-ReLU-conv) with a 1x1 projection where the shape changes,
as in the paper; `dropout` sits between the two convolutions.

Initialisation: convolutions Kaiming-normal (fan_out, ReLU), BatchNorm weight 1 and bias 0,
the classifier PyTorch's default.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torch.nn import functional as F

from prunelab.errors import ConfigError

MIN_SIDE = 28
SHORTCUTS = ("A", "B")


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def _check_common(input_shape: Sequence[int], model: str, width: float) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ConfigError(
            f"model '{model}' needs image input (channels, height, width); the dataset gives "
            f"shape {tuple(input_shape)}: use an image dataset such as mnist or cifar10"
        )
    c, h, w = (int(s) for s in input_shape)
    if min(h, w) < MIN_SIDE:
        raise ConfigError(
            f"model '{model}' needs images of at least {MIN_SIDE}x{MIN_SIDE}, got {h}x{w}"
        )
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not width > 0:
        raise ConfigError(f"model '{model}': width must be a number > 0, got {width!r}")
    return c, h, w


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


# ----------------------------------------------------------------------------- ResNet


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by `stride` and pad zero channels on both sides, so the
    input's channel i becomes output channel i + `left`."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.left = (out_channels - in_channels) // 2
        self.right = out_channels - in_channels - self.left

    def forward(self, x):
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.left, self.right))

    def extra_repr(self) -> str:
        return f"{self.in_channels}->{self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU (He et al. 2016)."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        if stride == 1 and cin == cout:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(cin, cout, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet of depth 6n+2: a 3x3 stem, three stages of n basic blocks at
    16/32/64 channels (times `width`, strides 1/2/2), global average pooling, a classifier."""

    def __init__(self, in_channels: int, num_classes: int, blocks: int, width: float = 1.0,
                 shortcut: str = "A"):
        super().__init__()
        widths = [_scaled(c, width) for c in (16, 32, 64)]
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        stages, cin = [], widths[0]
        for i, cout in enumerate(widths):
            layers = []
            for b in range(blocks):
                stride = 2 if i > 0 and b == 0 else 1
                layers.append(BasicBlock(cin, cout, stride, shortcut))
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)
        _init(self)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def _resnet(depth: int):
    blocks = (depth - 2) // 6

    def build(input_shape: Sequence[int], num_classes: int, width: float = 1.0,
              shortcut: str = "A") -> CifarResNet:
        name = f"resnet{depth}"
        c, _, _ = _check_common(input_shape, name, width)
        if shortcut not in SHORTCUTS:
            raise ConfigError(f"model '{name}': shortcut must be 'A' or 'B', got {shortcut!r}")
        return CifarResNet(c, num_classes, blocks, float(width), shortcut)

    build.__name__ = f"resnet{depth}"
    build.__doc__ = (f"He et al.'s CIFAR ResNet-{depth} ({blocks} blocks per stage); options "
                     "`width` (channel multiplier) and `shortcut` ('A' zero-pad, 'B' 1x1 conv).")
    return build


resnet20 = _resnet(20)
resnet32 = _resnet(32)
resnet56 = _resnet(56)


# ----------------------------------------------------------------------------- wide ResNet


class WideBlock(nn.Module):
    """Pre-activation block BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus the shortcut (a 1x1
    projection of the pre-activated input where the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = _conv3x3(cout, cout)
        self.projection = (nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        pre = self.relu1(self.bn1(x))
        out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(pre)))))
        return out + (x if self.projection is None else self.projection(pre))


class WideResNet(nn.Module):
    """WRN-d-k (Zagoruyko & Komodakis): a 3x3 stem of 16 channels, three stages of (d-4)/6
    blocks at 16k/32k/64k channels (times `width`), BN-ReLU, average pooling, a classifier."""

    def __init__(self, in_channels: int, num_classes: int, depth: int, k: int,
                 width: float = 1.0, dropout: float = 0.0):
        super().__init__()
        blocks = (depth - 4) // 6
        widths = [_scaled(c, width) for c in (16, 16 * k, 32 * k, 64 * k)]
        self.conv1 = _conv3x3(in_channels, widths[0])
        stages, cin = [], widths[0]
        for i, cout in enumerate(widths[1:]):
            layers = []
            for b in range(blocks):
                layers.append(WideBlock(cin, cout, 2 if i > 0 and b == 0 else 1, dropout))
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)
        _init(self)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(self.flatten(self.pool(self.relu(self.bn(x)))))


def _wrn(depth: int, k: int):
    def build(input_shape: Sequence[int], num_classes: int, width: float = 1.0,
              dropout: float = 0.0) -> WideResNet:
        name = f"wrn-{depth}-{k}"
        c, _, _ = _check_common(input_shape, name, width)
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"model '{name}': dropout must be in [0, 1), got {dropout}")
        return WideResNet(c, num_classes, depth, k, float(width), float(dropout))

    build.__name__ = f"wrn_{depth}_{k}"
    build.__doc__ = (f"WRN-{depth}-{k}; options `width` (channel multiplier on top of k) and "
                     "`dropout` (between the block's convolutions).")
    return build


wrn_16_4 = _wrn(16, 4)
wrn_22_2 = _wrn(22, 2)


# ----------------------------------------------------------------------------- VGG

VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
}


class VGG(nn.Module):
    """CIFAR VGG with BatchNorm: conv3x3-BN-ReLU blocks and 2x2 max-pools (rounding up), global
    average pooling, one linear classifier (the common CIFAR variant of Simonyan & Zisserman)."""

    def __init__(self, in_channels: int, num_classes: int, config: list[int | str],
                 width: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                cout = _scaled(int(v), width)
                layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                           nn.ReLU()]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(cin, num_classes)
        _init(self)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


def _vgg(name: str):
    def build(input_shape: Sequence[int], num_classes: int, width: float = 1.0) -> VGG:
        model = f"{name}-bn"
        c, _, _ = _check_common(input_shape, model, width)
        return VGG(c, num_classes, VGG_CONFIGS[name], float(width))

    build.__name__ = f"{name}_bn"
    build.__doc__ = f"CIFAR {name.upper()} with BatchNorm; option `width` (channel multiplier)."
    return build


vgg11_bn = _vgg("vgg11")
vgg16_bn = _vgg("vgg16")
