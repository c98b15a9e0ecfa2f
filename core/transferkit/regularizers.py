"""Regularisers: the λ·Ω(θ) term of fine-tuning, as specifications every adapter realises.

Fine-tuning minimises L(f(x; θ), y) + Ω(θ). ``weight_decay`` pulls weights toward
zero, which for a pretrained backbone means away from what pretraining learned;
:class:`L2SP` (Li, Grandvalet and Davoine, ICML 2018, "Explicit inductive bias for
transfer learning with convolutional networks", arXiv 1802.01483) pulls the backbone
toward its starting point instead::

    Ω(w) = α/2 · ‖w_S − w_S⁰‖² + β/2 · ‖w_S̄‖²

where ``w_S`` are the backbone weights that train (and LoRA modules, if any), ``w_S⁰``
their values when the fit started (or those of ``anchor``), and ``w_S̄`` the new head's
weights. BatchNorm running statistics are not weights and are left out; BatchNorm scale
and shift are in ``w_S`` (as in the reference implementations, which regularise every
backbone parameter). Frozen weights contribute nothing and cost nothing. :class:`L2`
is plain ``β/2 · ‖w‖²`` on everything that trains: the explicit term, to compare with
L2-SP on equal terms (``weight_decay`` is the optimizer's own, decoupled or not).

Core turns a regulariser into a :class:`Penalty` (a coefficient and an anchor per
canonical weight name); each adapter adds ``Σ c/2 · ‖w − a‖²`` over the weights that
train to the loss its framework differentiates, inside its compiled step.

Example::

    tk.fit(model, train, regularizer=tk.regularizers.L2SP(alpha=0.01, beta=0.01))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import validate
from . import weights as wio
from .errors import ConfigError

__all__ = ["L2", "L2SP", "Penalty", "Regularizer", "from_name"]

#: canonical names of buffers that are statistics, not weights (PyTorch's names)
STATISTICS = (".running_mean", ".running_var", ".num_batches_tracked")


@dataclass(frozen=True)
class Penalty:
    """What an engine adds to its loss: ``Σ coefficients[n]/2 · ‖w_n − anchors[n]‖²`` over
    the weights ``n`` that train now; a name without an anchor is anchored at zero."""

    coefficients: Mapping[str, float]
    anchors: Mapping[str, np.ndarray] = field(default_factory=dict)

    def value(self, weights: Mapping[str, np.ndarray], names: Any = None) -> float:
        """The penalty of ``weights`` (canonical arrays), over ``names`` (default: all)."""
        total = 0.0
        for n in self.coefficients if names is None else names:
            c = self.coefficients.get(n, 0.0)
            if c:
                a = self.anchors.get(n)
                d = weights[n].astype(np.float64) - (0.0 if a is None else a)
                total += c / 2 * float(np.sum(d * d))
        return total


@dataclass(frozen=True)
class Regularizer:
    """Base class: a regulariser says, for a model's weights, what to pull where."""

    def penalty(self, weights: Mapping[str, np.ndarray], ignore: tuple[str, ...] = ()) -> Penalty:
        """The penalty for a model whose weights (canonical names, BatchNorm statistics
        included) are ``weights`` when the fit starts."""
        raise NotImplementedError

    def to_config(self) -> dict[str, Any]:
        cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        return {"kind": type(self).__name__.lower(), **cfg}

    @property
    def backbone_strength(self) -> float:
        """The coefficient on backbone weights (0: the regulariser never touches them)."""
        return 0.0


def _is_weight(name: str) -> bool:
    return not name.endswith(STATISTICS)


@dataclass(frozen=True)
class L2SP(Regularizer):
    """L2-SP: ``α/2 ‖w_S − w_S⁰‖²`` on the backbone (toward its starting point, or the
    weights of the safetensors file ``anchor``), ``β/2 ‖w_head‖²`` on the new head."""

    alpha: float = 0.01
    beta: float = 0.01
    anchor: str | Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", validate.number("L2SP(alpha)", self.alpha, 0.0))
        object.__setattr__(self, "beta", validate.number("L2SP(beta)", self.beta, 0.0))
        if self.anchor is not None and not isinstance(self.anchor, (str, Path)):
            raise ConfigError(
                f"L2SP(anchor=...) is the path of a safetensors file, got {self.anchor!r:.60}"
            )

    @property
    def backbone_strength(self) -> float:
        return self.alpha

    def anchors(
        self, weights: Mapping[str, np.ndarray], ignore: tuple[str, ...] = ()
    ) -> dict[str, np.ndarray]:
        """The anchor of every backbone weight: its start value, or the ``anchor`` file's
        (checked against the model's names and shapes; ``ignore``: prefixes of keys the
        file may hold that are not the backbone's, as ``BackboneSpec.ignore_keys``)."""
        own = {n: w for n, w in weights.items() if not n.startswith("head.") and _is_weight(n)}
        start = {n: np.array(w, np.float32) for n, w in own.items()}
        if self.anchor is None:
            return start
        arrays = wio.read(self.anchor)
        if not any(k.startswith("backbone.") for k in arrays):
            arrays = {f"backbone.{k}": v for k, v in arrays.items()}
        given = {k: v for k, v in arrays.items() if not k.startswith("head.") and _is_weight(k)}
        expected = {n: np.shape(w) for n, w in own.items() if n.startswith("backbone.")}
        checked = wio.match(
            given,
            expected,
            f"the L2SP anchor {str(self.anchor)!r} for this model",
            tuple(f"backbone.{p}" for p in ignore),
        )
        return {**start, **checked}  # LoRA modules (not in a backbone file) start as anchor

    def penalty(self, weights: Mapping[str, np.ndarray], ignore: tuple[str, ...] = ()) -> Penalty:
        coefficients = {
            n: (self.beta if n.startswith("head.") else self.alpha)
            for n in weights
            if _is_weight(n)
        }
        return Penalty(coefficients, self.anchors(weights, ignore) if self.alpha else {})


@dataclass(frozen=True)
class L2(Regularizer):
    """Plain L2: ``β/2 ‖w‖²`` on every weight that trains, backbone and head."""

    beta: float = 0.01

    def __post_init__(self) -> None:
        object.__setattr__(self, "beta", validate.number("L2(beta)", self.beta, 0.0))

    @property
    def backbone_strength(self) -> float:
        return self.beta

    def penalty(self, weights: Mapping[str, np.ndarray], ignore: tuple[str, ...] = ()) -> Penalty:
        return Penalty({n: self.beta for n in weights if _is_weight(n)})


_NAMES = {"l2sp": L2SP, "l2-sp": L2SP, "l2": L2}


def from_name(name: str, **options: Any) -> Regularizer:
    """A regulariser from its CLI/TOML name: ``"l2sp"`` (alpha, beta, anchor) or ``"l2"``
    (beta)."""
    key = str(name).lower().replace("_", "")
    if key not in _NAMES:
        raise ConfigError(f"unknown regularizer {name!r}; choose 'l2sp' or 'l2'")
    try:
        return _NAMES[key](**options)
    except TypeError as e:
        raise ConfigError(f"regularizer {name!r}: {e}") from None


def from_config(cfg: Mapping[str, Any] | None) -> Regularizer | None:
    if not cfg:
        return None
    cfg = dict(cfg)
    return from_name(cfg.pop("kind"), **cfg)
