"""Input and label checks, run before any framework code sees the data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import (
    EmptyDataError,
    InputDTypeError,
    InputShapeError,
    LabelError,
    NonFiniteInputError,
)
from .lazy import is_lazy


def check_stacked(items: Sequence[Any], what: str) -> np.ndarray:
    """A list of same-shape arrays as one array; a ragged list is named, not a numpy error."""
    shapes = {np.shape(a) for a in items}
    if len(shapes) > 1:
        raise InputShapeError(
            f"{what}: the inputs have different shapes ({', '.join(map(str, sorted(shapes)[:3]))}"
            f"{', ...' if len(shapes) > 3 else ''}); resize them to one size first, or load "
            "them with tk.data.image_folder(root, size=(H, W))"
        )
    return np.asarray(items)


def check_inputs(x: Any, input_kind: str, input_shape: tuple[int, ...], what: str = "x") -> None:
    """Raise a transferkit error for inputs a backbone of this kind cannot take."""
    if input_kind == "text":
        if isinstance(x, str) or not isinstance(x, (list, tuple, np.ndarray)):
            raise InputDTypeError(f"{what} must be a list of strings, got {type(x).__name__}")
        if len(x) == 0:
            raise EmptyDataError(f"{what} is empty (0 texts)")
        for i, t in enumerate(x):
            if not isinstance(t, str):
                raise InputDTypeError(
                    f"{what}[{i}] is {type(t).__name__} {t!r:.40}, not a string; every input "
                    "of a text backbone must be a str"
                )
            if not t.strip():
                raise EmptyDataError(f"{what}[{i}] is an empty string; drop it or give it text")
        return
    if is_lazy(x):  # decodes to float32 [0, 1] images of one shape, checked per file
        if input_kind != "image":
            raise InputDTypeError(f"{what} holds images; this backbone takes {input_kind}s")
        if len(x) == 0:
            raise EmptyDataError(f"{what} is empty (0 examples)")
        return
    if isinstance(x, (list, tuple)):
        x = check_stacked(x, what) if len(x) else np.zeros((0,))
    if not isinstance(x, np.ndarray):
        raise InputDTypeError(f"{what} must be a numpy array, got {type(x).__name__}")
    if x.dtype.kind not in "fiub":
        raise InputDTypeError(
            f"{what} has dtype {x.dtype}; expected numbers (float32 images in [0, 1], or "
            "integer images in 0-255)"
        )
    if len(x) == 0:
        raise EmptyDataError(f"{what} is empty (0 examples)")
    if input_kind == "image":
        channels = input_shape[-1]
        if x.ndim == 3 and x.shape[-1] in (1, 3) and x.shape[1] > 4 * x.shape[-1]:
            raise InputShapeError(
                f"{what} has shape {x.shape}, which looks like one (H, W, C) image rather "
                f"than a batch; pass x[None] for one image (a batch of grey images is "
                "(N, H, W) or (N, H, W, 1))"
            )
        if x.ndim == 3:  # (N, H, W) grey
            pass
        elif x.ndim != 4 or x.shape[-1] not in {1, 3, channels}:
            raise InputShapeError(
                f"{what} has shape {x.shape}; this backbone takes images (N, H, W, C) with "
                f"C in (1, 3), channels last, e.g. (N, {', '.join(map(str, input_shape))})"
            )
        if min(x.shape[1:3]) < 1:
            raise InputShapeError(f"{what} has empty images: shape {x.shape}")
    elif input_kind == "vector" and (x.ndim != 2 or x.shape[1] != input_shape[0]):
        raise InputShapeError(
            f"{what} has shape {x.shape}; this backbone takes vectors (N, {input_shape[0]})"
        )
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).reshape(len(x), -1).any(axis=1).sum())
        raise NonFiniteInputError(
            f"{what} contains NaN or infinite values in {bad} example(s); clean or drop them"
        )
    if input_kind == "image":
        check_image_range(x, what)


#: float images may stray this far outside [0, 1] (rounding in the user's own resizing)
RANGE_SLACK = 1e-3


def check_image_range(x: np.ndarray, what: str = "x") -> None:
    """Images are floats in [0, 1] or integers in 0-255 (scaled by 1/255 in the pipeline,
    as Keras and torchvision users expect); anything else is named, not guessed at."""
    if x.dtype.kind == "b" or x.size == 0:
        return
    lo, hi = float(x.min()), float(x.max())
    if x.dtype.kind in "iu":
        if lo < 0 or hi > 255:
            raise InputDTypeError(
                f"{what} holds integer images with values {lo:g}..{hi:g}; integer images must "
                "be 0-255 (uint8). Convert others to float32 in [0, 1]"
            )
        return
    if lo < -RANGE_SLACK or hi > 1 + RANGE_SLACK:
        hint = (
            " (looks like 0-255: pass the uint8 array, or divide by 255)"
            if hi > 1.5 and hi <= 255
            else " (looks normalised already: pass images before normalisation; the pipeline "
            "applies each backbone's mean and std)"
            if lo < 0
            else ""
        )
        raise InputDTypeError(
            f"{what} holds float images with values {lo:.4g}..{hi:.4g}, outside [0, 1]{hint}"
        )


def check_labels(y: Any, n: int, task: str, outputs: int, what: str = "y") -> np.ndarray:
    """Validate labels (classification) or targets (regression); returns them converted."""
    if y is None:
        raise LabelError(f"{what} is missing: training and evaluation need labels")
    y = np.asarray(y)
    if len(y) != n:
        raise LabelError(f"{what} has {len(y)} entries for {n} inputs")
    if task == "classification":
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        if y.dtype.kind not in "iu" or y.ndim != 1:
            raise LabelError(
                f"{what} must be integer class indices of shape (N,), got dtype {y.dtype} "
                f"shape {y.shape}"
            )
        bad = (y < 0) | (y >= outputs)
        if bad.any():
            raise LabelError(
                f"{what} holds labels outside [0, {outputs}) "
                f"(e.g. {sorted(set(y[bad].tolist()))[:5]}): the head has {outputs} classes; "
                "build it with Classifier(num_classes=...) matching your labels"
            )
        return y.astype(np.int64)
    y = y.astype(np.float32)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[1] != outputs:
        raise LabelError(f"{what} has shape {y.shape}; the regressor has {outputs} outputs")
    if not np.isfinite(y).all():
        raise NonFiniteInputError(f"{what} contains NaN or infinite targets")
    return y


def check_augmented(augment: Any, raw: Any, out: Any, check: Any) -> None:
    """An augment function that returns the wrong thing is named here, not inside a
    framework's step; ``check`` is the model's input check."""
    from .errors import ConfigError, TransferkitError

    name = getattr(augment, "__name__", "augment")
    if isinstance(raw, np.ndarray):
        ok = isinstance(out, np.ndarray) and len(out) == len(raw) and out.ndim == raw.ndim
        if not ok:
            got = f"{type(out).__name__} {getattr(out, 'shape', '')}".strip()
            raise ConfigError(
                f"augment function {name!r} must return an array of the batch's "
                f"{len(raw)} examples with shape like {raw.shape}; it returned {got}"
            )
    elif not isinstance(out, (list, tuple)) or len(out) != len(raw):
        raise ConfigError(
            f"augment function {name!r} must return a list of {len(raw)} inputs, like "
            f"its argument; it returned {type(out).__name__}"
        )
    try:
        check(out, f"the output of augment function {name!r}")
    except TransferkitError as e:
        raise ConfigError(str(e)) from None
