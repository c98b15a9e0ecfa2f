"""The ``torch:tinyconv`` backbone. Imported only when a model is built."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """3x3 convolution (no bias: BatchNorm follows), BatchNorm, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class TinyConv(nn.Module):
    """Two conv-BN-ReLU blocks (16 then 32 channels, the second at stride 2), then
    global average pooling: ``(N, C, H, W) -> (N, 32)``."""

    def __init__(self, in_channels: int = 3, widths: tuple[int, int] = (16, 32)) -> None:
        super().__init__()
        self.block1 = Block(in_channels, widths[0], stride=1)
        self.block2 = Block(widths[0], widths[1], stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.block1(x)).mean(dim=(2, 3))


def build(input_shape: tuple[int, ...]) -> nn.Module:
    """The factory named in the spec: ``input_shape`` is ``(H, W, C)``."""
    return TinyConv(in_channels=input_shape[-1])
