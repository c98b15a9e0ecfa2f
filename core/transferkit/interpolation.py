"""Weight-space ensembling: interpolate a fine-tuned backbone back toward its start.

WiSE-FT (Wortsman et al., CVPR 2022, "Robust fine-tuning of zero-shot models") takes
``(1 − α)·θ_start + α·θ_finetuned``: a fine-tuned model that keeps part of what the
pretrained one knew. Because transferkit's weights are canonical, the two models may
come from different frameworks.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import validate
from .builder import build
from .errors import ConfigError, WeightsError
from .model import PRETRAINED, Model
from .saving import load


def interpolate(start: Model | str, finetuned: Model, alpha: float = 0.5) -> Model:
    """A new model, in ``finetuned``'s framework, whose backbone weights (BatchNorm
    statistics included) are ``(1 − alpha)·start + alpha·finetuned`` and whose head is
    ``finetuned``'s. ``start`` is a model of the same architecture (from any framework)
    or a backbone name, meaning its pretrained weights. ``alpha=0`` gives ``start``'s
    backbone exactly, ``alpha=1`` reproduces ``finetuned`` exactly.

    Example::

        pre = tk.build("torch:cnn", head=tk.Classifier(5))
        tuned = tk.load("runs/digits")
        mixed = tk.interpolate(pre, tuned, alpha=0.5)
    """
    if not isinstance(finetuned, Model):
        raise ConfigError(
            f"interpolate(finetuned=...) needs a model (tk.build, tk.load), got "
            f"{type(finetuned).__name__}"
        )
    alpha = validate.number("interpolate(alpha)", alpha, 0.0, 1.0)
    if isinstance(start, str):
        start = build(start, head=finetuned.head, weights=PRETRAINED)
    if not isinstance(start, Model):
        raise ConfigError(
            f"interpolate(start=...) needs a model or a backbone name, got {type(start).__name__}"
        )
    if start.head.outputs != finetuned.head.outputs or start.head.task != finetuned.head.task:
        raise ConfigError(
            f"interpolate: start has a {start.head.task} head with {start.head.outputs} "
            f"outputs, finetuned {finetuned.head.task} with {finetuned.head.outputs}; "
            "interpolate models of the same task"
        )
    if start.peft or finetuned.peft:
        raise ConfigError(
            "interpolate: LoRA models cannot be interpolated yet (their low-rank modules have "
            "no counterpart in the start model); interpolate fully fine-tuned models"
        )
    a, b = _backbone(start), _backbone(finetuned)
    _check_same_architecture(start, finetuned, a, b)
    mixed = {k: _mix(a[k], b[k], alpha) for k in b}
    result = _copy(finetuned)
    result.set_weights(mixed)
    result.weights_origin = (
        f"interpolate({start.weights_origin or start.spec.name}, "
        f"{finetuned.weights_origin or finetuned.spec.name}, alpha={alpha:g})"
    )
    return result


def _backbone(model: Model) -> dict[str, np.ndarray]:
    return {k: v for k, v in model.get_weights().items() if not k.startswith("head.")}


def _mix(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    if alpha == 0.0:
        return a.copy()
    if alpha == 1.0:
        return b.copy()
    return ((1.0 - alpha) * a.astype(np.float64) + alpha * b.astype(np.float64)).astype(np.float32)


def _check_same_architecture(start: Model, finetuned: Model, a: dict, b: dict) -> None:
    same_arch = start.spec.name == finetuned.spec.name or (
        start.spec.arch is not None and start.spec.arch == finetuned.spec.arch
    )
    missing, extra = sorted(set(b) - set(a)), sorted(set(a) - set(b))
    shapes = sorted(k for k in set(a) & set(b) if a[k].shape != b[k].shape)
    if not same_arch or missing or extra or shapes:
        detail = "; ".join(
            f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
            for label, items in (
                ("only in finetuned", missing),
                ("only in start", extra),
                ("shapes differ", shapes),
            )
            if items
        )
        raise WeightsError(
            f"interpolate: {start.spec.name!r} and {finetuned.spec.name!r} are not the same "
            f"architecture{' (' + detail + ')' if detail else ''}; interpolate a fine-tuned "
            "model with the model (or backbone name) it started from"
        )


def _copy(model: Model) -> Model:
    """An independent model equal to ``model``, in its framework (assets included)."""
    with tempfile.TemporaryDirectory(prefix="transferkit-interpolate-") as tmp:
        path = model.save(Path(tmp) / "model")
        copy: Any = load(path, **_device(model))
    copy.history = []
    return copy


def _device(model: Model) -> dict[str, Any]:
    device = getattr(model.engine, "device", None)
    return {"device": str(device)} if isinstance(device, str) else {}
