"""BatchNorm with the canonical (PyTorch) running statistics.

Canonical weights have PyTorch's meaning, so the running variance is updated with the
*unbiased* batch variance (``n/(n-1)`` times the biased one that normalises the batch),
where Flax's ``nnx.BatchNorm`` uses the biased one: after one step on a 1x1 feature map
of a batch of 32, the two differ by 32/31. Normalisation itself is unchanged.
"""

from __future__ import annotations

import math

import jax
from flax import nnx
from flax.nnx.nn.normalization import _canonicalize_axes, _compute_stats, _normalize


class BatchNorm(nnx.BatchNorm):
    """``nnx.BatchNorm`` whose running variance follows PyTorch (momentum as Flax's:
    the weight of the old statistic, ``1 - torch_momentum``)."""

    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        use_running_average = (
            self.use_running_average if use_running_average is None else use_running_average
        )
        if use_running_average or mask is not None:
            return super().__call__(x, use_running_average=use_running_average, mask=mask)
        feature_axes = _canonicalize_axes(x.ndim, self.axis)
        reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
        scale = self.scale[...] if self.scale is not None else None
        bias = self.bias[...] if self.bias is not None else None
        x, _, _, scale, bias = self.promote_dtype(
            (x, self.mean[...], self.var[...], scale, bias), dtype=self.dtype
        )
        mean, var = _compute_stats(
            x,
            reduction_axes,
            dtype=self.dtype,
            axis_name=self.axis_name,
            axis_index_groups=self.axis_index_groups,
            use_fast_variance=self.use_fast_variance,
        )
        n = math.prod(x.shape[i] for i in reduction_axes)
        unbiased = var * (n / max(n - 1, 1))
        m = self.momentum
        self.mean[...] = jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean)
        self.var[...] = jax.lax.stop_gradient(m * self.var[...] + (1 - m) * unbiased)
        return _normalize(
            x, mean, var, scale, bias, reduction_axes, feature_axes, self.dtype, self.epsilon
        )
