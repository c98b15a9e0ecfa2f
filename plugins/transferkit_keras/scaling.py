"""Precision on Keras's own machinery: its dtype policies (``mixed_bfloat16``,
``mixed_float16``: float32 variables, reduced compute; ``Model.compile`` wraps the
optimizer in a ``LossScaleOptimizer`` under ``mixed_float16``). Multi-process training
is not offered for Keras models yet (``Framework.strategies`` is empty)."""

from __future__ import annotations

import keras

POLICY = {"32": "float32", "bf16-mixed": "mixed_bfloat16", "16-mixed": "mixed_float16"}


def set_policy(model: keras.Model, precision: str) -> None:
    """Every layer of ``model`` (and the model) computes under ``precision``'s policy; the
    variables stay float32. Traced inference functions are dropped, to be traced again."""
    policy = POLICY[precision]
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if layer.dtype_policy.name != policy:
            layer.dtype_policy = policy
        if isinstance(layer, keras.Model):
            layer.predict_function = None
