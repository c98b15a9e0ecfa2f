"""The data sets users already have, without converting them to numpy first.

- a Hugging Face ``datasets.Dataset``: :func:`from_hf` (an image or text column and a
  label column); images are decoded from its Arrow files when a batch needs them;
- any indexable data set of ``(x, y)`` pairs (a torchvision data set, a list):
  :func:`from_pairs`; images are read when a batch needs them;
- an iterable of ``(x_batch, y_batch)`` batches: :func:`from_batches` (read once, into
  memory).

``tk.fit``, ``evaluate`` and ``tk.rank`` take these directly (``as_dataset`` calls the
right one); the functions are there to name columns or options.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .dataset import Dataset
from .errors import (
    DataError,
    EmptyDataError,
    InputDTypeError,
    InputShapeError,
    NonFiniteInputError,
)
from .lazy import LazyImages

IMAGE_COLUMNS = ("image", "img", "pixel_values", "picture")
TEXT_COLUMNS = ("text", "sentence", "content", "document")
LABEL_COLUMNS = ("label", "labels", "target", "class")


def is_hf(data: Any) -> bool:
    return type(data).__module__.split(".")[0] == "datasets" and hasattr(data, "column_names")


def is_pairs(data: Any) -> bool:
    """An indexable data set whose items are ``(x, y)`` pairs (not an array, not texts)."""
    if isinstance(data, (np.ndarray, str)) or not hasattr(data, "__getitem__"):
        return False
    try:
        first = data[0] if len(data) else None
    except (TypeError, KeyError, IndexError):
        return False
    return isinstance(first, tuple) and len(first) == 2


def inputs_of(x: Any) -> Any:
    """The inputs of a data set a user passes where inputs go (``model.predict(ds)``)."""
    if is_hf(x):
        return from_hf(x).x
    if not isinstance(x, list) and is_pairs(x):
        return from_pairs(x).x
    return x


def _image(value: Any) -> np.ndarray:
    """One image as RGB float32 in [0, 1]: a PIL image, an array (0-255 integers or
    [0, 1] floats, (H, W) or (H, W, C), or channels-first (C, H, W) as torch tensors)."""
    from .loaders import _rgb01

    if hasattr(value, "convert") and hasattr(value, "mode"):  # a PIL image
        return _rgb01(value)
    if hasattr(value, "numpy") and callable(value.numpy):  # a tensor
        value = value.detach().cpu().numpy() if hasattr(value, "detach") else value.numpy()
        if value.ndim == 3 and value.shape[0] in (1, 3) and value.shape[-1] not in (1, 3):
            value = np.moveaxis(value, 0, -1)
    a = np.asarray(value)
    if a.dtype.kind not in "iubf":
        raise InputDTypeError(f"an image of dtype {a.dtype}; expected numbers")
    if a.dtype.kind in "iu":
        a = a.astype(np.float32) / 255.0
    a = a.astype(np.float32)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise InputShapeError(
            f"an image of shape {a.shape}; expected (H, W), (H, W, 1) or (H, W, 3) (RGB, "
            "channels last; drop an alpha channel first)"
        )
    if not np.isfinite(a).all():
        raise NonFiniteInputError("an image holds NaN or infinite values")
    if a.min() < 0 or a.max() > 1:
        raise InputDTypeError(
            f"an image's values span [{a.min():.3g}, {a.max():.3g}], outside [0, 1]: it looks "
            "normalised already (a Normalize transform?); give images in [0, 1] or 0-255, "
            "each backbone normalises them itself"
        )
    return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a


def _lazy_images(
    read_raw: Any, n: int, size: tuple[int, int] | None, identity: str | None
) -> LazyImages:
    from .preprocess import resize

    def read(j: int) -> np.ndarray:
        img = _image(read_raw(j))
        return resize(img[None], size)[0] if size is not None else img

    first = read(0)
    return LazyImages(read, n, first.shape, identity)


def _pick(columns: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise DataError(
                f"the data set has no column {wanted!r} (its columns: {', '.join(columns)}); "
                f"name the {what} column that exists"
            )
        return wanted
    found = [c for c in candidates if c in columns]
    if not found:
        raise DataError(
            f"cannot tell which column holds the {what} (columns: {', '.join(columns)}); "
            f"pass tk.data.from_hf(ds, x='...', y='...')"
        )
    return found[0]


def from_hf(
    ds: Any, x: str | None = None, y: str | None = None, size: tuple[int, int] | None = None
) -> Dataset:
    """A Hugging Face ``datasets.Dataset`` as a transferkit data set: column ``x`` (images,
    decoded per batch, resized to ``size`` (H, W) when given; or texts) and label column
    ``y`` (a ``ClassLabel`` gives the class names). Columns are found by their usual
    names (``image``/``img``, ``text``/``sentence``, ``label``/``labels``) when not given."""
    if not is_hf(ds):
        raise InputDTypeError(f"from_hf() takes a datasets.Dataset, got {type(ds).__name__}")
    if hasattr(ds, "keys") and not hasattr(ds, "features"):
        raise InputDTypeError("from_hf() takes one split: pass ds['train'], not the DatasetDict")
    if not hasattr(ds, "__len__") or not hasattr(ds, "_fingerprint"):
        raise InputDTypeError(
            f"from_hf() takes a datasets.Dataset with a length, got {type(ds).__name__} (a "
            "streamed IterableDataset?); load it without streaming=True, or pass batches "
            "to tk.data.from_batches"
        )
    cols = list(ds.column_names)
    xcol = _pick(cols, x, IMAGE_COLUMNS + TEXT_COLUMNS, "inputs")
    has_labels = y is not None or bool(set(cols) & set(LABEL_COLUMNS))
    ycol = _pick(cols, y, LABEL_COLUMNS, "labels") if has_labels else None
    if len(ds) == 0:
        raise EmptyDataError("the datasets.Dataset is empty")
    labels = np.asarray(ds[ycol]) if ycol else None
    feature = ds.features.get(ycol) if ycol else None
    classes = list(feature.names) if hasattr(feature, "names") else None
    kind = type(ds.features[xcol]).__name__
    if kind == "Value" and ds.features[xcol].dtype in ("string", "large_string"):
        return Dataset(list(ds[xcol]), labels, classes)
    column = ds.select_columns([xcol])
    return Dataset(
        _lazy_images(lambda j: column[int(j)][xcol], len(ds), size, f"hf:{ds._fingerprint}:{xcol}"),
        labels,
        classes,
    )


def from_pairs(
    data: Any, size: tuple[int, int] | None = None, classes: Sequence[str] | None = None
) -> Dataset:
    """Any indexable data set of ``(x, y)`` pairs (a torchvision data set, a list of
    tuples): images are read from it when a batch needs them (resized to ``size`` when
    given), texts at once. Labels come from a ``targets`` attribute where the data set
    has one (torchvision's do), else from reading each pair once."""
    try:
        n = len(data)
        x0, _ = data[0]
    except (TypeError, ValueError, IndexError, KeyError) as e:
        raise InputDTypeError(
            f"from_pairs() takes an indexable data set of (x, y) pairs, got "
            f"{type(data).__name__} ({e})"
        ) from None
    targets = getattr(data, "targets", None)
    if targets is None:
        targets = [data[i][1] for i in range(n)]
    labels = np.asarray(targets)
    classes = classes if classes is not None else getattr(data, "classes", None)
    if isinstance(x0, str):
        return Dataset([data[i][0] for i in range(n)], labels, classes)
    # no stable identity (its transform or contents may change): features stay in memory
    return Dataset(_lazy_images(lambda j: data[int(j)][0], n, size, None), labels, classes)


def from_batches(batches: Iterable[Any], classes: Sequence[str] | None = None) -> Dataset:
    """An iterable of ``(x_batch, y_batch)`` (a generator, a ``DataLoader``) read once into
    memory: for data that fits; use a lazy source for data that does not."""
    xs: list[Any] = []
    ys: list[np.ndarray] = []
    for item in batches:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise InputDTypeError(
                f"from_batches() takes (x_batch, y_batch) pairs, got {type(item).__name__}"
            )
        xb, yb = item
        if hasattr(xb, "detach"):  # a tensor: channels-first images become channels-last
            xb = xb.detach().cpu().numpy()
            if xb.ndim == 4 and xb.shape[1] in (1, 3) and xb.shape[-1] not in (1, 3):
                xb = np.moveaxis(xb, 1, -1)
        if hasattr(yb, "detach"):
            yb = yb.detach().cpu().numpy()
        if isinstance(xb, (list, tuple)):
            xs.extend(xb)
        else:
            xs.append(np.asarray(xb))
        ys.append(np.asarray(yb).reshape(-1))
    if not ys:
        raise EmptyDataError("from_batches() got no batches")
    x = xs if xs and isinstance(xs[0], str) else np.concatenate(xs)
    return Dataset(x, np.concatenate(ys), classes)
