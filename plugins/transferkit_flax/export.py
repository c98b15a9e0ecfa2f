"""Flax's deployment format ``"jax"``: a serialized ``jax.export`` function.

The function is the model's inference pass (BatchNorm on its running statistics, no
dropout) with the current parameters closed over as constants, from inputs as a user
has them (images in [0, 1], normalised inside) to a classifier's softmax probabilities
or a regressor's values, for any batch size (a symbolic ``batch`` dimension). It is
lowered for CPU, CUDA GPUs and TPUs (for this jaxlib's own platform only where it
cannot lower for all three). Running it needs jax only, no flax and no transferkit::

    exported = jax.export.deserialize(bytearray(open("model.jax", "rb").read()))
    probabilities = exported.call(x)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from transferkit.errors import ConfigError
from transferkit.formats import Serving

#: platforms the function is lowered for, in order of preference; those this jaxlib
#: cannot lower for are dropped
PLATFORMS = ("cpu", "cuda", "tpu")


def serving_function(model: Any, serving: Serving):
    """A pure function ``x -> outputs`` computing ``serving`` with ``model``'s current
    parameters and statistics (copied to the host, closed over)."""
    graph, params, stats = model.engine._eval_state()  # BatchNorm: running averages
    params, stats = jax.device_get((params, stats))
    mean = np.asarray(serving.mean, np.float32)
    std = np.asarray(serving.std, np.float32)
    image = serving.input_kind == "image"
    probabilities = serving.output == "probabilities"

    def serve(x: jax.Array) -> jax.Array:
        x = jnp.asarray(x, jnp.float32)
        if image:
            x = (x - mean) / std
        out = nnx.merge(graph, params, stats, copy=True)(x)
        return jax.nn.softmax(out, axis=-1) if probabilities else out

    return serve


def exported_function(model: Any, serving: Serving) -> Any:
    """The ``jax.export.Exported`` of the serving function, batch size symbolic."""
    serve = jax.jit(serving_function(model, serving))
    (batch,) = jax.export.symbolic_shape("batch", constraints=("batch >= 1",))
    arg = jax.ShapeDtypeStruct((batch, *serving.input_shape), jnp.float32)
    try:
        return jax.export.export(serve, platforms=PLATFORMS)(arg)
    except Exception:  # this jaxlib cannot lower for every platform: its own only
        return jax.export.export(serve)(arg)


def export(model: Any, path: Path, fmt: str, serving: Serving) -> None:
    if fmt != "jax":
        raise ConfigError(f"Flax exports no format {fmt!r}")
    Path(path).write_bytes(bytes(exported_function(model, serving).serialize()))


def run_exported(path: Path, fmt: str, x: np.ndarray) -> np.ndarray:
    """Run the export at ``path`` with jax alone (``jax.export.deserialize``)."""
    if fmt != "jax":
        raise ConfigError(f"Flax exports no format {fmt!r}")
    exported = jax.export.deserialize(bytearray(Path(path).read_bytes()))
    return np.asarray(exported.call(np.asarray(x, np.float32)))
