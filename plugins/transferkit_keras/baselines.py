"""What ``transferkit bench`` needs from Keras 3: the native baseline, device names, MACs.

The baseline is ``model.compile`` + ``model.fit`` as a Keras user writes it, on a second
build of the same backbone + head with the same weights (``twin()``), so transferkit's
engine and Keras's own ``fit`` loop never share an optimizer. Each round is one
``fit(epochs=1)`` call over ``steps_per_round`` batches. A callback times fit's
steady-state step inside the call: a real ``fit(epochs=N)`` pays its per-call set-up
(data adapter, callbacks, iterator) once, so spreading it over a few steps would flatter
transferkit. The call's whole wall time is reported as well. The backend is whatever
``KERAS_BACKEND`` says (the suite's ``keras[backend]`` variant).
"""

from __future__ import annotations

from . import import_order  # noqa: F401  (before keras: see import_order.py)

# isort: split
import math
import time

import keras
import numpy as np


def device_name(model) -> str:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return f"{jax.devices()[0].platform} (keras-jax)"
    if backend == "torch":
        import torch

        return f"{'cuda' if torch.cuda.is_available() else 'cpu'} (keras-torch)"
    if backend == "tensorflow":
        import tensorflow as tf

        return f"{'gpu' if tf.config.list_logical_devices('GPU') else 'cpu'} (keras-tensorflow)"
    return f"? (keras-{backend})"


class Fit:
    description = (
        "Keras model.compile(Adam, sparse CE from logits) + model.fit, 9 steps a call; "
        "the steady-state step is timed inside fit (batch ends 1 to 8)"
    )
    steps_per_round = 9

    def __init__(self, model, x, y, lr: float, twin=None) -> None:
        self.net = twin().native if twin is not None else model.native
        self.net.compile(
            optimizer=keras.optimizers.Adam(learning_rate=lr),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        self.x, self.y = np.asarray(x), np.asarray(y)
        ends = self.ends = []

        class Clock(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                float(logs["loss"])  # waits for the step (jax dispatches asynchronously)
                ends.append(time.perf_counter())

        self.clock = Clock()

    def run(self, batches: list[np.ndarray]) -> float:
        """One ``fit(epochs=1)`` call over the batches; returns its steady-state ms/step
        (from the first batch's end to the last's), leaving out fit's per-call set-up,
        which a many-epoch ``fit`` pays once."""
        idx = np.concatenate(batches)
        self.ends.clear()
        self.net.fit(
            self.x[idx],
            self.y[idx],
            batch_size=len(batches[0]),
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[self.clock],
        )
        return (self.ends[-1] - self.ends[0]) * 1e3 / (len(self.ends) - 1)


def _layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers(layer)
        else:
            yield layer


def count_macs(model) -> int | None:
    """MACs of one example through backbone and head: for every layer with a kernel
    (convolutions, depthwise convolutions, dense layers), the kernel's size times the
    number of output positions. ``None`` where a layer's output shape is unknown (a
    subclassed model)."""
    total = 0
    for layer in _layers(model.native):
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        try:
            positions = math.prod(layer.output.shape[1:-1])  # None: a variable size
        except (AttributeError, ValueError, TypeError):
            return None
        total += positions * math.prod(kernel.shape)
    return total
