"""The reference architectures in PyTorch. Parameter names are the canonical names.

Each factory takes the input shape ``(H, W, C)`` and returns an ``nn.Module`` mapping
normalised NCHW float32 input to ``(N, feature_size)`` features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .efficientnet import EfficientNetLite0


class MLP(nn.Module):
    """Flatten -> Linear(128) -> ReLU -> Linear(64) -> ReLU."""

    def __init__(self, in_features: int, hidden: int = 128, features: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Flatten channels-last (N, H, W, C) order so the canonical fc1 weight means the
        # same thing in every framework.
        x = x.permute(0, 2, 3, 1).flatten(1)
        return F.relu(self.fc2(F.relu(self.fc1(x))))


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class CNN(nn.Module):
    """Four 3x3 conv-BN-ReLU stages (32, 64, 128, 128 channels; strides 1, 2, 2, 2),
    then global average pooling: 128 features. Any input from 8x8 up."""

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (32, 64, 128, 128)) -> None:
        super().__init__()
        strides = (1, 2, 2, 2)
        cin = in_channels
        for i, (w, s) in enumerate(zip(widths, strides, strict=True), start=1):
            setattr(self, f"stage{i}", ConvBNReLU(cin, w, s))
            cin = w
        self.depth = len(widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.depth + 1):
            x = getattr(self, f"stage{i}")(x)
        return x.mean(dim=(2, 3))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 with torchvision's names (``conv1``, ``bn1``, ``layer1.0.conv1``, ...),
    without ``fc``: 512 features."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (cout, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
            setattr(
                self,
                f"layer{i}",
                nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)),
            )
            cin = cout
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, 3, 2, 1)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return x.mean(dim=(2, 3))


def mlp(input_shape: tuple[int, ...]) -> nn.Module:
    return MLP(int(torch.tensor(input_shape).prod()))


def cnn(input_shape: tuple[int, ...]) -> nn.Module:
    return CNN(input_shape[-1])


def resnet18(input_shape: tuple[int, ...]) -> nn.Module:
    return ResNet18(input_shape[-1])


def efficientnet_lite0(input_shape: tuple[int, ...]) -> nn.Module:
    return EfficientNetLite0(input_shape[-1])
