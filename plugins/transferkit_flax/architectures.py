"""The reference architectures in Flax (nnx). Attribute paths are the canonical names.

Each factory takes the input shape ``(H, W, C)`` and an ``nnx.Rngs`` and returns an
``nnx.Module`` mapping normalised NHWC float32 input to ``(N, feature_size)`` features.
PyTorch's BatchNorm momentum 0.1 is Flax's 0.9; padding is written out explicitly
wherever PyTorch pads symmetrically.
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from .efficientnet import EfficientNetLite0
from .norm import BatchNorm

P1 = ((1, 1), (1, 1))


def _bn(channels: int, rngs: nnx.Rngs) -> BatchNorm:
    return BatchNorm(channels, momentum=0.9, epsilon=1e-5, rngs=rngs)


class MLP(nnx.Module):
    """Flatten -> Linear(128) -> ReLU -> Linear(64) -> ReLU."""

    def __init__(self, in_features: int, rngs: nnx.Rngs, hidden: int = 128, features: int = 64):
        self.fc1 = nnx.Linear(in_features, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, features, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)  # channels-last order, as the canonical fc1 weight
        return nnx.relu(self.fc2(nnx.relu(self.fc1(x))))


class ConvBNReLU(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, rngs: nnx.Rngs) -> None:
        self.conv = nnx.Conv(
            cin, cout, (3, 3), (stride, stride), padding=P1, use_bias=False, rngs=rngs
        )
        self.bn = _bn(cout, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.bn(self.conv(x)))


class CNN(nnx.Module):
    """Four 3x3 conv-BN-ReLU stages (32, 64, 128, 128; strides 1, 2, 2, 2), global pool."""

    def __init__(self, in_channels: int, rngs: nnx.Rngs) -> None:
        self.stage1 = ConvBNReLU(in_channels, 32, 1, rngs)
        self.stage2 = ConvBNReLU(32, 64, 2, rngs)
        self.stage3 = ConvBNReLU(64, 128, 2, rngs)
        self.stage4 = ConvBNReLU(128, 128, 2, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        return x.mean(axis=(1, 2))


class BasicBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(
            cin, cout, (3, 3), (stride, stride), padding=P1, use_bias=False, rngs=rngs
        )
        self.bn1 = _bn(cout, rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), padding=P1, use_bias=False, rngs=rngs)
        self.bn2 = _bn(cout, rngs)
        needs_projection = stride != 1 or cin != cout
        self.downsample = (
            nnx.List(
                [
                    nnx.Conv(
                        cin,
                        cout,
                        (1, 1),
                        (stride, stride),
                        padding="VALID",
                        use_bias=False,
                        rngs=rngs,
                    ),
                    _bn(cout, rngs),
                ]
            )
            if needs_projection
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
        return nnx.relu(out + identity)


class ResNet18(nnx.Module):
    """ResNet-18 with torchvision's names, without ``fc``: 512 features."""

    def __init__(self, in_channels: int, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(
            in_channels, 64, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False, rngs=rngs
        )
        self.bn1 = _bn(64, rngs)
        cin = 64
        for i, (cout, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
            setattr(
                self,
                f"layer{i}",
                nnx.List([BasicBlock(cin, cout, stride, rngs), BasicBlock(cout, cout, 1, rngs)]),
            )
            cin = cout

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=P1)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = block(x)
        return x.mean(axis=(1, 2))


def mlp(input_shape: tuple[int, ...], rngs: nnx.Rngs) -> nnx.Module:
    return MLP(math.prod(input_shape), rngs)


def cnn(input_shape: tuple[int, ...], rngs: nnx.Rngs) -> nnx.Module:
    return CNN(input_shape[-1], rngs)


def resnet18(input_shape: tuple[int, ...], rngs: nnx.Rngs) -> nnx.Module:
    return ResNet18(input_shape[-1], rngs)


def efficientnet_lite0(input_shape: tuple[int, ...], rngs: nnx.Rngs) -> nnx.Module:
    return EfficientNetLite0(input_shape[-1], rngs)
