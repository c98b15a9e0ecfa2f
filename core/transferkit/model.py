"""Models: a backbone with a head, realised in one framework; predict, evaluate, save.

``tk.build`` (``builder.py``) makes one, ``tk.load`` (``saving.py``) reads one back.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics, validate
from . import weights as wio
from .catalog import BackboneSpec, LayerGroup
from .data import Dataset, as_dataset, check_inputs, check_labels, check_stacked
from .errors import ConfigError, WeightsError
from .framework import Engine, Framework
from .heads import Classifier, Head
from .interop import inputs_of
from .lazy import is_lazy
from .preprocess import prepare_images

FORMAT = "transferkit-model"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ASSETS = "assets"
PRETRAINED = "pretrained"
PREDICT_OUTPUTS = ("probabilities", "labels", "indices")


@dataclass(frozen=True)
class Backbone:
    """A built backbone: its metadata, the native object and its layer groups."""

    spec: BackboneSpec
    native: Any
    input_shape: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def framework(self) -> str:
        return self.spec.framework

    @property
    def feature_size(self) -> int:
        return self.spec.feature_size

    @property
    def groups(self) -> tuple[LayerGroup, ...]:
        return self.spec.groups


class Model:
    """A backbone with a head, realised in one framework. Made by :func:`build` or
    :func:`load`; trained by :func:`transferkit.fit`."""

    def __init__(
        self,
        spec: BackboneSpec,
        head: Head,
        framework: Framework,
        engine: Engine,
        input_shape: tuple[int, ...],
        classes: list[str] | None = None,
        weights_origin: str | None = None,
    ):
        self.spec = spec
        self.head = head
        self._framework = framework
        self.engine = engine
        self.input_shape = tuple(input_shape)
        self.classes = classes
        self.weights_origin = weights_origin
        self.history: list[dict[str, Any]] = []
        #: parameter-efficient modules inserted into the backbone (LoRA), or None
        self.peft: dict[str, Any] | None = None
        #: the ``batchnorm`` mode of the last fit (None: never fitted here)
        self.batchnorm: str | None = None

    def add_peft(self, peft: dict[str, Any]) -> None:
        """Insert trainable parameter-efficient modules (LoRA) into the frozen backbone;
        ``tk.freeze.LoRA`` calls this for you. No ``target``: the backbone's own."""
        from .freeze import check_peft
        from .plugins import registry

        check_peft(registry().framework(self.framework), peft.get("kind"))
        if peft.get("target") is None:
            if not self.spec.lora_target:
                raise ConfigError(
                    f"{self.spec.name!r} names no default LoRA target modules; pass "
                    "tk.freeze.LoRA(target=[...]) with names of its linear or convolution layers"
                )
            peft = {**peft, "target": list(self.spec.lora_target)}
        if self.peft is not None:
            if dict(peft) != self.peft:
                raise ConfigError(f"this model already has the LoRA modules {self.peft}")
            return
        self.engine.add_peft(dict(peft))
        self.peft = dict(peft)

    def reset_head(self, seed: int = 0) -> None:
        """Put the head back to its seeded initial weights (the backbone is untouched)."""
        self.engine.set_weights(self.head.initial_weights(self.spec.feature_size, seed))

    def __repr__(self) -> str:
        return (
            f"Model({self.spec.name!r}, head={self.head!r}, input_shape={self.input_shape}, "
            f"weights={self.weights_origin!r})"
        )

    @property
    def framework(self) -> str:
        """The name of the framework the model is realised in (``"torch"``)."""
        return self.spec.framework

    @property
    def backbone(self) -> Backbone:
        return Backbone(self.spec, self.engine.backbone, self.input_shape)

    # --- weights ---------------------------------------------------------------------
    def get_weights(self) -> dict[str, np.ndarray]:
        """Every weight (BatchNorm statistics included) by canonical name, float32 in
        PyTorch's layout: the same names and values in every framework."""
        return self.engine.get_weights()

    def set_weights(self, arrays: dict[str, np.ndarray]) -> None:
        """Load some or all weights by canonical name; names the model lacks and shapes
        that differ are a :class:`~transferkit.errors.WeightsError`."""
        if not isinstance(arrays, Mapping):
            raise ConfigError(
                f"set_weights() takes a dict of canonical name -> array (as get_weights() "
                f"returns), got {type(arrays).__name__}"
            )
        bad = sorted(k for k, v in arrays.items() if not np.isfinite(np.asarray(v)).all())
        if bad:
            raise WeightsError(f"set_weights: {', '.join(bad[:4])} hold NaN or infinite values")
        shapes = self.engine.param_shapes()
        expected = {k: shapes[k] for k in arrays if k in shapes}
        name = f"model {self.spec.name!r}"
        self.engine.set_weights(wio.match(arrays, expected, name, warn_cast=False))

    @property
    def native(self) -> Any:
        """The framework's own object (backbone + head)."""
        return self.engine.native

    @property
    def task(self) -> str:
        return self.head.task

    # --- inputs ----------------------------------------------------------------------
    def check(self, x: Any, what: str = "x") -> None:
        check_inputs(x, self.spec.input_kind, self.input_shape, what)

    def prepare(self, x: Any) -> Any:
        """User inputs -> what the engine takes (normalised, resized, channels-last)."""
        if self.spec.input_kind == "image":
            return prepare_images(x, self.input_shape, self.spec.mean, self.spec.std)
        if self.spec.input_kind == "vector":
            return np.asarray(x, dtype=np.float32)
        return list(x)

    def prepared_batches(self, x: Any, batch_size: int) -> Iterator[Any]:
        if is_lazy(x):  # decoded a batch ahead, while this one runs
            yield from map(self.prepare, x.batches(batch_size))
            return
        for i in range(0, len(x), batch_size):
            yield self.prepare(x[i : i + batch_size])

    def _run(self, fn, x: Any, batch_size: int) -> np.ndarray:
        batch_size = validate.integer("batch_size", batch_size, 1, 1 << 20)
        if isinstance(x, Dataset):
            x = x.x
        x = inputs_of(x)  # a datasets.Dataset, or a data set of (x, y) pairs
        if is_lazy(x):
            pass
        elif isinstance(x, list) and x and not isinstance(x[0], str):
            x = np.asarray(check_stacked(x, "x"))
        self.check(x)
        outs = [np.asarray(fn(b)) for b in self.prepared_batches(x, batch_size)]
        return np.concatenate(outs)

    # --- inference ---------------------------------------------------------------------
    def features(self, x: Any, batch_size: int = 128) -> np.ndarray:
        """The backbone's feature vectors ``(N, feature_size)``."""
        return self._run(self.engine.features, x, batch_size)

    def logits(self, x: Any, batch_size: int = 128) -> np.ndarray:
        """Raw head outputs: logits for a classifier, values for a regressor."""
        return self._run(self.engine.predict, x, batch_size)

    def predict(self, x: Any, batch_size: int = 128, output: str = "probabilities") -> np.ndarray:
        """Class probabilities ``(N, num_classes)`` for a classifier, predicted values
        ``(N, outputs)`` for a regressor. ``output="labels"``: a classifier's predicted
        class names ``(N,)`` (indices as strings when the model has no names);
        ``"indices"``: the predicted class indices."""
        output = validate.choice("predict(output)", output, PREDICT_OUTPUTS)
        if output != "probabilities" and not isinstance(self.head, Classifier):
            raise ConfigError(
                f"predict(output={output!r}) needs a classifier; this model's head is a "
                f"{self.head.task} head: use the default output='probabilities' (values)"
            )
        out = self.logits(x, batch_size)
        if not isinstance(self.head, Classifier):
            return out
        if output == "indices":
            return out.argmax(1)
        if output == "labels":
            names = self.classes or [str(i) for i in range(self.head.outputs)]
            return np.asarray(names, dtype=object)[out.argmax(1)]
        return np.exp(metrics.log_softmax(out.astype(np.float64))).astype(np.float32)

    def evaluate(self, data: Dataset, batch_size: int = 128) -> dict[str, float]:
        """Loss and metrics on labelled data (a ``tk.Dataset`` or an ``(x, y)`` pair):
        accuracy, loss, macro_f1 (classification) or loss, mse, mae (regression)."""
        data = as_dataset(data, "evaluate(data)")
        self.check(data.x)
        y = check_labels(data.y, len(data), self.head.task, self.head.outputs)
        return metrics.compute(self.head.task, self.logits(data.x, batch_size), y)

    # --- persistence -------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": 1,
            "backbone": self.spec.name,
            "arch": self.spec.arch,
            "framework": self.spec.framework,
            "input_kind": self.spec.input_kind,
            "input_shape": list(self.input_shape),
            "feature_size": self.spec.feature_size,
            "head": self.head.to_config(),
            "classes": self.classes,
            "weights_origin": self.weights_origin,
            "groups": [[g.name, list(g.prefixes)] for g in self.spec.groups],
            "options": self.engine.options(),
            "peft": self.peft,
            "batchnorm": self.batchnorm,
        }

    def export(self, path: str | Path, format: str) -> Path:
        """Write the model for deployment (``"onnx"``, ``"torch-export"``,
        ``"savedmodel"``, ``"tflite"``, ``"jax"``), through whichever framework owns the
        format, and check its outputs against this model's; see ``transferkit.export``.

        >>> model.export("digits.onnx", format="onnx")  # doctest: +SKIP
        """
        from .export import export

        return export(self, path, format)

    def save(self, path: str | Path) -> Path:
        """Save backbone + head + config as a directory (safetensors + JSON).

        The directory is written beside the target and swapped in at the end: at every
        instant (a kill included) ``path`` holds the previous model or the new one,
        complete, or :func:`load` recovers it from beside ``path``.
        """
        from .saving import save

        return save(self, path)
