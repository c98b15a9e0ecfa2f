"""Turn user images into a backbone's input: channels, size, normalisation.

Done once in numpy for every framework, so that all frameworks see identical
inputs (the basis of cross-framework parity and fair benchmarks).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=64)
def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Linear-interpolation weights (n_out, n_in), antialiased when shrinking (as PIL)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centers = (np.arange(n_out) + 0.5) * scale
    pos = np.arange(n_in) + 0.5
    w = np.maximum(0.0, 1.0 - np.abs(pos[None, :] - centers[:, None]) / support)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``(N, H, W, C)`` images to ``size`` = (H', W')."""
    h, w = x.shape[1:3]
    if (h, w) == tuple(size):
        return x
    ry, rx = _resize_matrix(h, size[0]), _resize_matrix(w, size[1])
    return np.einsum("ah,nhwc,bw->nabc", ry, x.astype(np.float32), rx, optimize=True)


def prepare_images(
    x: np.ndarray,
    input_shape: tuple[int, ...],
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> np.ndarray:
    """Images in [0, 1], any size, grey or RGB -> normalised float32 ``(N, *input_shape)``.

    Integer images (0-255, what image loaders return) are scaled by 1/255. Grey images
    are repeated to 3 channels for RGB backbones; RGB images are averaged for grey
    backbones.
    """
    x = np.asarray(x)
    x = x.astype(np.float32) / 255.0 if x.dtype.kind in "iu" else x.astype(np.float32)
    if x.ndim == 3:
        x = x[..., None]
    channels = input_shape[-1]
    if x.shape[-1] != channels:
        x = np.repeat(x, channels, axis=-1) if x.shape[-1] == 1 else x.mean(-1, keepdims=True)
        if x.shape[-1] != channels:
            x = np.repeat(x, channels, axis=-1)
    x = resize(x, input_shape[:2])
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray((x - m) / s, dtype=np.float32)
