"""Native Keras 3 baseline: ``model.compile`` + ``model.fit``, as a Keras user writes it.

The Keras model is a second build of the same backbone + head with the same weights
(``twin()``), so transferkit's engine and Keras's own ``fit`` loop never share an
optimizer. Each round is one ``fit(epochs=1)`` call over ``steps_per_round`` batches
(Keras's per-call set-up is part of its idiom and is spread over those steps).
The backend is whatever ``KERAS_BACKEND`` says (the suite's ``keras[backend]``).
"""

from __future__ import annotations

import numpy as np


def device(model) -> str:
    import keras

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
    description = "Keras model.compile(Adam, sparse CE from logits) + model.fit, 8 steps a call"
    steps_per_round = 8

    def __init__(self, model, x, y, lr: float, twin=None) -> None:
        import keras

        self.net = twin().native if twin is not None else model.native
        self.net.compile(
            optimizer=keras.optimizers.Adam(learning_rate=lr),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        self.x, self.y = np.asarray(x), np.asarray(y)
        self.batch = None

    def run(self, batches: list[np.ndarray]) -> None:
        idx = np.concatenate(batches)
        self.net.fit(
            self.x[idx],
            self.y[idx],
            batch_size=len(batches[0]),
            epochs=1,
            shuffle=False,
            verbose=0,
        )  # fit returns when its steps are done


BASELINES = {"fit": Fit}
