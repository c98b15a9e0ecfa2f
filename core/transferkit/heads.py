"""Task heads: framework-neutral descriptions that every adapter realises natively.

A head is a stack of dense layers on the backbone's feature vector. Its
canonical parameter names are ``head.hidden.<i>.weight|bias`` and
``head.out.weight|bias``, weights stored ``(out_features, in_features)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from . import validate
from .errors import ConfigError

#: more classes, outputs or hidden units than this is a mistake, not a model
MAX_UNITS = 1_000_000
#: a head of more parameters than this (4 GB of float32) is a mistake, not a model; it is
#: refused before any framework allocates it
MAX_PARAMETERS = 1_000_000_000


@dataclass(frozen=True)
class DenseLayer:
    """One dense layer of a head: ``name`` is its canonical prefix under ``head.``."""

    name: str
    in_features: int
    out_features: int
    activation: str | None  # "relu" or None
    dropout: float  # applied to this layer's input while training


@dataclass(frozen=True)
class Head:
    """Base class of heads; subclasses are frozen dataclasses with ``hidden`` and
    ``dropout`` fields and an ``outputs`` size."""

    kind: ClassVar[str] = ""
    task: ClassVar[str] = ""
    loss: ClassVar[str] = ""

    # Subclasses define: hidden: tuple[int, ...], dropout: float, and outputs.

    def _check(self) -> None:
        name = type(self).__name__
        hidden = self.hidden
        if isinstance(hidden, int) and not isinstance(hidden, bool):
            hidden = (hidden,)  # hidden=64 means one hidden layer of 64
        if isinstance(hidden, (str, bytes)) or not hasattr(hidden, "__iter__"):
            raise ConfigError(
                f"{name}(hidden=...) must be a tuple of layer sizes such as (256,), got {hidden!r}"
            )
        hidden = tuple(
            validate.integer(f"{name}(hidden[{i}])", h, 1, MAX_UNITS) for i, h in enumerate(hidden)
        )
        object.__setattr__(self, "hidden", hidden)
        dropout = validate.number(f"{name}(dropout)", self.dropout, 0.0)
        if dropout >= 1.0:
            raise ConfigError(f"{name}(dropout) must be in [0, 1), got {dropout}")
        object.__setattr__(self, "dropout", dropout)
        self._check_size(None)  # the layers after the first are known without the backbone

    def _check_size(self, feature_size: int | None) -> int:
        widths = (*(() if feature_size is None else (feature_size,)), *self.hidden, self.outputs)
        total = sum((a + 1) * b for a, b in zip(widths, widths[1:], strict=False))
        if total > MAX_PARAMETERS:
            on = "" if feature_size is None else f" on {feature_size} features"
            raise ConfigError(
                f"{type(self).__name__}(hidden={self.hidden!r}){on} has "
                f"{'at least ' if feature_size is None else ''}{total:,} parameters, over the "
                f"{MAX_PARAMETERS:,} a head may have; use smaller hidden layers (a few hundred "
                "units is usual)"
            )
        return total

    def dense_layers(self, feature_size: int) -> list[DenseLayer]:
        """The layers an adapter builds, input to output (their size checked first)."""
        self._check_size(feature_size)
        layers, width = [], feature_size
        for i, h in enumerate(self.hidden):
            layers.append(DenseLayer(f"hidden.{i}", width, h, "relu", self.dropout))
            width = h
        layers.append(DenseLayer("out", width, self.outputs, None, self.dropout))
        return layers

    def initial_weights(self, feature_size: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Seeded initial weights in canonical names and layout, the same in every
        framework: uniform in +-1/sqrt(fan_in), as PyTorch's ``nn.Linear``."""
        rng = np.random.default_rng(seed)
        out = {}
        for d in self.dense_layers(feature_size):
            bound = 1.0 / np.sqrt(d.in_features)
            out[f"head.{d.name}.weight"] = rng.uniform(
                -bound, bound, (d.out_features, d.in_features)
            ).astype(np.float32)
            out[f"head.{d.name}.bias"] = rng.uniform(-bound, bound, d.out_features).astype(
                np.float32
            )
        return out

    def to_config(self) -> dict[str, Any]:
        cfg = asdict(self)
        cfg["hidden"] = list(self.hidden)
        return {"kind": self.kind, **cfg}

    @staticmethod
    def from_config(cfg: dict[str, Any]) -> Head:
        if not isinstance(cfg, dict):
            raise ConfigError(f"a head configuration is a JSON object, got {cfg!r:.60}")
        cfg = dict(cfg)
        kind = cfg.pop("kind", None)
        for cls in (Classifier, Regressor):
            if cls.kind == kind:
                try:
                    return cls(**cfg)
                except (TypeError, ConfigError) as e:
                    raise ConfigError(f"bad {kind} head configuration {cfg}: {e}") from None
        raise ConfigError(f"unknown head kind {kind!r}; expected 'classifier' or 'regressor'")


@dataclass(frozen=True)
class Classifier(Head):
    """Classification head: ``hidden`` dense ReLU layers, then ``num_classes`` logits,
    trained on cross-entropy. ``dropout`` applies to each dense layer's input.

    Example::

        tk.Classifier(5)                                # linear probe
        tk.Classifier(10, hidden=(1024,), dropout=0.5)  # Dense(1024, relu) -> Dense(10)
    """

    kind: ClassVar[str] = "classifier"
    task: ClassVar[str] = "classification"
    loss: ClassVar[str] = "cross_entropy"

    num_classes: int
    hidden: tuple[int, ...] = ()
    dropout: float = 0.0

    def __post_init__(self) -> None:
        n = validate.integer("Classifier(num_classes)", self.num_classes, 2, MAX_UNITS)
        object.__setattr__(self, "num_classes", n)
        self._check()

    @property
    def outputs(self) -> int:  # type: ignore[override]
        return self.num_classes


@dataclass(frozen=True)
class Regressor(Head):
    """Regression head with ``outputs`` real-valued targets, trained on mean squared error."""

    kind: ClassVar[str] = "regressor"
    task: ClassVar[str] = "regression"
    loss: ClassVar[str] = "mse"

    outputs: int = 1  # type: ignore[misc]
    hidden: tuple[int, ...] = ()
    dropout: float = 0.0

    def __post_init__(self) -> None:
        n = validate.integer("Regressor(outputs)", self.outputs, 1, MAX_UNITS)
        object.__setattr__(self, "outputs", n)
        self._check()
