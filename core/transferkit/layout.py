"""Canonical (PyTorch) <-> channels-last weight layouts, for every channels-last adapter.

Canonical weights are in PyTorch's layouts: dense ``(out, in)``, convolution
``(O, I, kH, kW)``, depthwise convolution ``(C, 1, kH, kW)``. Channels-last frameworks
(Flax, Keras) keep dense kernels ``(in, out)``, convolutions HWIO, and depthwise
kernels either as a grouped convolution ``(kH, kW, 1, C)`` (Flax) or as
``(kH, kW, C, multiplier)`` (Keras's ``DepthwiseConv2D``).
"""

from __future__ import annotations

import numpy as np


def kernel_to_canonical(value: np.ndarray, depthwise_multiplier: bool = False) -> np.ndarray:
    """A channels-last kernel -> PyTorch's layout. ``depthwise_multiplier``: the kernel
    is ``(kH, kW, C, m)`` (Keras's ``DepthwiseConv2D``), canonical ``(C*m, 1, kH, kW)``."""
    if value.ndim == 4:
        if depthwise_multiplier:
            k1, k2, c, m = value.shape
            return value.transpose(2, 3, 0, 1).reshape(c * m, 1, k1, k2)
        return value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    if value.ndim == 2:  # (in, out) -> (out, in)
        return value.T
    return value


def kernel_from_canonical(value: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """PyTorch's layout -> the channels-last kernel of native ``shape`` (given, a depthwise
    ``(kH, kW, C, m)`` target is recognised; without it, OIHW becomes HWIO)."""
    if value.ndim == 4:
        if shape is not None and value.shape[1] == 1 and shape[2] != 1:
            k1, k2, c, m = shape
            if c * m == value.shape[0]:  # depthwise with a channel multiplier
                return value.reshape(c, m, k1, k2).transpose(2, 3, 0, 1)
        return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if value.ndim == 2:
        return value.T
    return value


def canonical_shape(shape: tuple[int, ...], depthwise_multiplier: bool = False) -> tuple[int, ...]:
    """The canonical shape of a channels-last kernel of ``shape``."""
    if len(shape) == 4:
        if depthwise_multiplier:
            return (shape[2] * shape[3], 1, shape[0], shape[1])
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)
