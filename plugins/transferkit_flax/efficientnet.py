"""EfficientNet-Lite0 backbone in Flax (nnx), with the canonical names of the ImageNet
checkpoint (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...), so the same canonical
safetensors file loads here and in PyTorch.

TensorFlow "same" padding (uneven on stride-2 layers) is XLA's ``"SAME"``.
"""

from __future__ import annotations

import jax
from flax import nnx

from transferkit.reference import LITE0_BLOCKS

from .norm import BatchNorm

# PyTorch momentum 0.01 (weight of the new statistic) is Flax momentum 0.99.
BN_MOMENTUM = 0.99
BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


def _conv(cin: int, cout: int, kernel: int, rngs: nnx.Rngs, stride: int = 1, groups: int = 1):
    return nnx.Conv(
        cin,
        cout,
        (kernel, kernel),
        (stride, stride),
        padding="SAME",
        feature_group_count=groups,
        use_bias=False,
        rngs=rngs,
    )


def _bn(channels: int, rngs: nnx.Rngs) -> BatchNorm:
    return BatchNorm(channels, momentum=BN_MOMENTUM, epsilon=BN_EPS, rngs=rngs)


class MBConvBlock(nnx.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 linear projection."""

    def __init__(
        self, cin: int, cout: int, expand: int, kernel: int, stride: int, rngs: nnx.Rngs
    ) -> None:
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = _conv(cin, mid, 1, rngs)
            self._bn0 = _bn(mid, rngs)
        self._depthwise_conv = _conv(mid, mid, kernel, rngs, stride=stride, groups=mid)
        self._bn1 = _bn(mid, rngs)
        self._project_conv = _conv(mid, cout, 1, rngs)
        self._bn2 = _bn(cout, rngs)
        self.has_residual = stride == 1 and cin == cout

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = nnx.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.has_residual else y


class EfficientNetLite0(nnx.Module):
    """Normalised NHWC input -> (N, 1280) features."""

    def __init__(self, in_channels: int, rngs: nnx.Rngs) -> None:
        self._conv_stem = _conv(in_channels, STEM_CHANNELS, 3, rngs, stride=2)
        self._bn0 = _bn(STEM_CHANNELS, rngs)
        blocks, cin = [], STEM_CHANNELS
        for expand, cout, repeats, kernel, stride in LITE0_BLOCKS:
            for i in range(repeats):
                blocks.append(MBConvBlock(cin, cout, expand, kernel, stride if i == 0 else 1, rngs))
                cin = cout
        self._blocks = nnx.List(blocks)
        self._conv_head = _conv(cin, HEAD_CHANNELS, 1, rngs)
        self._bn1 = _bn(HEAD_CHANNELS, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = nnx.relu6(self._bn1(self._conv_head(x)))
        return x.mean(axis=(1, 2))
