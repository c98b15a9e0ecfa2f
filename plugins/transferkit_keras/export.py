"""Keras's deployment formats: a TensorFlow SavedModel (``"savedmodel"``) and a LiteRT
flatbuffer (``"tflite"``), both written from a serving ``keras.Model`` that wraps the
built model: inputs as a user has them (images in [0, 1], normalised inside), the
native model in inference mode, and a softmax for a classifier.

The SavedModel is Keras's own export (``format="tf_saved_model"``, one endpoint
``serve``); the LiteRT file is that SavedModel converted by ``tf.lite.TFLiteConverter``
with built-in operators only, so that the plain LiteRT interpreter (``ai-edge-litert``)
runs it, at any batch size (``resize_tensor_input`` before ``allocate_tensors``).

Under the jax backend Keras writes the SavedModel through ``jax2tf``: the computation
is embedded as StableHLO in an ``XlaCallModule`` op, lowered here for CPU, CUDA and TPU
(jax2tf's default is the exporting platform only); TensorFlow serves it and the LiteRT
converter lowers it to built-in operators. Under the torch backend Keras's SavedModel
export needs ``torch_xla`` and a static batch size, and neither format is written.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.errors import ConfigError
from transferkit.formats import Serving

SERVE_ENDPOINT = "serve"  # the name of the endpoint Keras's SavedModel export writes
# what TensorFlow accepts as a root name scope (a variable's path in a SavedModel)
_VALID_SCOPE = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*$")
_INVALID_CHARS = re.compile(r"[^A-Za-z0-9_.>-]")
#: under the jax backend, the platforms the SavedModel's computation is lowered for
JAX_PLATFORMS = ("cpu", "cuda", "tpu")


def _check_backend(fmt: str) -> None:
    import keras

    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):
        raise ConfigError(
            f"Keras cannot export to {fmt!r} under its {backend} backend (its SavedModel "
            "export there needs torch_xla and a static batch size); run under "
            "KERAS_BACKEND=tensorflow or KERAS_BACKEND=jax, for example save the model "
            "(model.save(dir)) and export it from a process with KERAS_BACKEND=tensorflow: "
            f"tk.load(dir, framework='keras').export(path, format={fmt!r})"
        )


def serving_model(model: Any, serving: Serving) -> Any:
    """A functional ``keras.Model`` computing ``serving`` with ``model``'s layers (shared,
    so with its current weights)."""
    import keras
    from keras import ops

    native = model.engine.native
    inputs = keras.Input(shape=tuple(serving.input_shape), dtype="float32", name="x")
    x = inputs
    if serving.input_kind == "image":
        mean = np.asarray(serving.mean, np.float32)
        std = np.asarray(serving.std, np.float32)
        x = ops.divide(ops.subtract(x, mean), std)
    out = native(x, training=False)
    if serving.output == "probabilities":
        out = ops.softmax(out, axis=-1)
    return keras.Model(inputs, out, name="transferkit_serving")


def _valid_names(keras_model: Any) -> Any:
    """``keras_model``, or a clone of it whose layers have names TensorFlow accepts.

    Under the tensorflow backend a SavedModel recreates each variable under its layer's
    name scope, and TensorFlow rejects scopes that start with ``_`` (EfficientNet-Lite's
    ``_blocks-0-_bn0``, the names of its checkpoint): those layers are renamed in a clone
    that holds the same weights (names inside the SavedModel only)."""
    import keras

    if keras.backend.backend() != "tensorflow" or all(
        _VALID_SCOPE.match(v.path) for v in keras_model.variables
    ):
        return keras_model

    def rename(layer: Any) -> Any:
        config = layer.get_config()
        if not _VALID_SCOPE.match(layer.name):
            config["name"] = "v" + _INVALID_CHARS.sub("_", layer.name)
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(keras_model, clone_function=rename, recursive=True)
    clone.set_weights(keras_model.get_weights())
    return clone


def _write_savedmodel(model: Any, path: Path, serving: Serving) -> None:
    import keras

    keras_model = _valid_names(serving_model(model, serving))
    if keras.backend.backend() == "jax":
        try:
            keras_model.export(
                str(path),
                format="tf_saved_model",
                verbose=False,
                jax2tf_kwargs={"native_serialization_platforms": JAX_PLATFORMS},
            )
            return
        except Exception:  # this jaxlib cannot lower for every platform: its own only
            shutil.rmtree(path, ignore_errors=True)
    keras_model.export(str(path), format="tf_saved_model", verbose=False)


def export(model: Any, path: Path, fmt: str, serving: Serving) -> None:
    """Write ``model`` as ``fmt`` (``"savedmodel"`` or ``"tflite"``) to ``path``."""
    _check_backend(fmt)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    path = Path(path)
    if fmt == "savedmodel":
        _write_savedmodel(model, path, serving)
        return
    if fmt != "tflite":
        raise ConfigError(f"Keras exports no format {fmt!r}")
    import tensorflow as tf

    tmp = Path(tempfile.mkdtemp(prefix="transferkit-savedmodel-"))
    try:
        _write_savedmodel(model, tmp / "model", serving)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(tmp / "model"), signature_keys=[SERVE_ENDPOINT]
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        flatbuffer = converter.convert()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    path.write_bytes(flatbuffer)


def run_exported(path: Path, fmt: str, x: np.ndarray) -> np.ndarray:
    """Run the export at ``path`` with its own runtime: TensorFlow for a SavedModel,
    the LiteRT interpreter for a ``.tflite`` file."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if fmt == "savedmodel":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        return np.asarray(getattr(loaded, SERVE_ENDPOINT)(tf.constant(x)))
    if fmt == "tflite":
        return run_tflite(path, x)
    raise ConfigError(f"Keras exports no format {fmt!r}")


def run_tflite(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    (inp,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(inp["index"], list(x.shape), strict=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    (out,) = interpreter.get_output_details()
    return np.array(interpreter.get_tensor(out["index"]))
