"""BatchNormalization with the canonical (PyTorch) running statistics.

Canonical weights have PyTorch's meaning, so the moving variance is updated with the
*unbiased* batch variance (``n/(n-1)`` times the biased one that normalises the batch),
where Keras's ``BatchNormalization`` uses the biased one: after one step on a 1x1 feature
map of a batch of 32, the two differ by 32/31. Normalisation itself is unchanged. The
``keras.applications`` models keep Keras's own layer (and so Keras's convention).
"""

from __future__ import annotations

from . import import_order  # noqa: F401  (before keras: see import_order.py)

# isort: split
import keras
from keras import layers, ops


class BatchNormalization(layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` whose moving variance follows PyTorch."""

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        mean, variance = self._moments(x, None)
        n = ops.cast(ops.size(x) // ops.size(mean), x.dtype)
        unbiased = variance * (n / ops.maximum(n - 1.0, 1.0))
        m = self.momentum
        self.moving_mean.assign(ops.cast(self.moving_mean, x.dtype) * m + mean * (1.0 - m))
        self.moving_variance.assign(
            ops.cast(self.moving_variance, x.dtype) * m + unbiased * (1.0 - m)
        )
        gamma = ops.cast(self.gamma, x.dtype) if self.scale else None
        beta = ops.cast(self.beta, x.dtype) if self.center else None
        out = ops.batch_normalization(
            x=x,
            mean=mean,
            variance=variance,
            axis=self.axis,
            offset=beta,
            scale=gamma,
            epsilon=self.epsilon,
        )
        return ops.cast(out, self.compute_dtype)
