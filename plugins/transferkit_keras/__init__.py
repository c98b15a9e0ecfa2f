"""transferkit's Keras 3 adapter, registered through the ``transferkit`` entry point.

Importing this module imports no keras: the framework and the backbones (the reference
architectures and every ``keras.applications`` model) are registered as metadata; keras
is imported when a model is built. The Keras backend is Keras's own choice
(``KERAS_BACKEND=tensorflow|jax|torch``, fixed per process).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from transferkit import hookimpl
from transferkit.formats import ExportFormat
from transferkit.framework import Baseline, BuildOption, Framework, Variant
from transferkit.launch import group_launcher
from transferkit.reference import REFERENCE, reference_spec

from .applications import APPLICATIONS, application_spec, specialise

_BACKEND_MODULE = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def keras_backend() -> str:
    """The backend Keras will use, found as Keras finds it, without importing keras."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or str(Path.home() / ".keras")
    try:
        return json.loads((Path(home) / "keras.json").read_text()).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


WEIGHTS_FILE = BuildOption(
    "weights_file", (str, Path), None, "a Keras weights file instead of Keras's download cache"
)


class KerasFramework(Framework):
    """Keras 3 on its configured backend (tensorflow, jax or torch), Keras's compiled
    train steps (``jit_compile`` under tensorflow and jax).

    Backbone factories receive ``input_shape=(H, W, C)`` (and the build options the spec
    lists) and return a ``keras.Model`` mapping normalised NHWC input to
    ``(N, feature_size)``; layer names are canonical names with ``-`` for ``.``.
    Build options: ``device="cpu"|"gpu[:i]"`` (``keras.device`` placement); for
    ``keras.applications`` backbones also ``weights_file="path.h5"`` (a Keras weights file
    on disk, instead of Keras's download cache).
    """

    name = "keras"
    extra = "keras"
    requires = ("keras",)
    description = "Keras 3 (tensorflow, jax or torch backend), compiled Keras steps"
    precisions = ("32", "bf16-mixed", "16-mixed")
    baselines = (Baseline("fit", "transferkit_keras.baselines:Fit"),)
    libraries = ("keras", "tensorflow", "tensorflow-cpu")
    process_env = (("TF_CPP_MIN_LOG_LEVEL", "2"), ("XLA_PYTHON_CLIENT_PREALLOCATE", "false"))
    export_notes = (("onnx", "ONNX from Keras would need tf2onnx; export to savedmodel or tflite"),)
    exports = (
        ExportFormat(
            "savedmodel",
            "",
            requires=("tensorflow",),
            tolerance=1e-4,
            description="a TensorFlow SavedModel directory, endpoint 'serve' "
            "(tf.saved_model.load(dir).serve(x)); tensorflow or jax backend",
        ),
        ExportFormat(
            "tflite",
            ".tflite",
            requires=("tensorflow", "ai_edge_litert"),
            tolerance=1e-5,
            description="a LiteRT (TFLite) flatbuffer, built-in operators, any batch size "
            "(resize_tensor_input, then allocate_tensors); tensorflow or jax backend",
        ),
    )

    @property
    def strategies(self):
        """``"ddp"`` on the jax backend: ``keras.distribution.DataParallel`` over every
        process's devices."""
        return ("ddp",) if keras_backend() == "jax" else ()

    @property
    def strategy_notes(self):
        backend = keras_backend()
        if backend == "tensorflow":
            why = (
                "under tensorflow, Keras 3's compiled step fails in "
                "tf.distribute.MultiWorkerMirroredStrategy (tensorflow issue 72388)"
            )
        elif backend == "torch":
            why = "keras.distribution is implemented for the jax backend only"
        else:
            return ()
        return (("ddp", f"{why}; Keras trains on several processes with KERAS_BACKEND=jax"),)

    def launcher(self, nproc):
        """A coordinator on this machine for ``keras.distribution.initialize``."""
        return group_launcher(nproc)

    def export(self, model, path, fmt, serving):
        from .export import export

        export(model, path, fmt, serving)

    def run_exported(self, path, fmt, x, serving=None):
        from .export import run_exported

        return run_exported(path, fmt, x)

    def variants(self):
        """Keras's backends, one per process: ``keras[jax]`` sets ``KERAS_BACKEND=jax``."""
        return tuple(
            Variant(b, (module,), (("KERAS_BACKEND", b),)) for b, module in _BACKEND_MODULE.items()
        )

    def device_name(self, model):
        from .baselines import device_name

        return device_name(model)

    def count_macs(self, model):
        from .baselines import count_macs

        return count_macs(model)

    def missing(self) -> list[str]:
        missing = super().missing()
        backend = _BACKEND_MODULE.get(keras_backend())
        if backend and not missing and backend not in self.requires:
            import importlib.util

            if importlib.util.find_spec(backend) is None:
                missing.append(backend)
        return missing

    def build_options(self, spec):
        if spec.options.get("keras_application"):
            return (*super().build_options(spec), WEIGHTS_FILE)
        return super().build_options(spec)

    def specialise(self, spec, input_shape):
        return specialise(spec, input_shape)

    def build(self, spec, head, input_shape, seed=0, **options):
        from .engine import build_engine

        return build_engine(spec, head, input_shape, seed, **options)


@hookimpl
def transferkit_register_frameworks(register):
    register(KerasFramework())


@hookimpl
def transferkit_register_backbones(register):
    for arch in REFERENCE:
        register(reference_spec("keras", arch, f"transferkit_keras.architectures:{arch}"))
    for name in APPLICATIONS:
        register(application_spec(name))
