"""Data containers, loaders, few-shot sampling and input checks.

Neutral data is numpy: images channels-last float32 ``(N, H, W, C)`` with values in
[0, 1], vectors ``(N, D)``, text ``list[str]``, labels int64 ``(N,)``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import (
    EmptyDataError,
    InputDTypeError,
    InputShapeError,
    LabelError,
    NonFiniteInputError,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclass
class Dataset:
    """Inputs ``x``, labels or targets ``y`` and optional class names.

    Example::

        data = tk.Dataset(images, labels, classes=["cat", "dog"])
        train, val = data.split(0.2, seed=0)
    """

    x: Any
    y: np.ndarray | None = None
    classes: list[str] | None = None
    name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.x, np.ndarray) or not isinstance(self.x, (list, tuple)):
            self.x = np.asarray(self.x)
        elif self.x and not isinstance(self.x[0], str):
            self.x = check_stacked(self.x, f"dataset {self.name}".strip())
        else:
            self.x = list(self.x)
        if self.y is not None:
            self.y = np.asarray(self.y)
            if self.y.dtype.kind in "iub":
                self.y = self.y.astype(np.int64)
            if len(self.y) != len(self.x):
                raise LabelError(
                    f"dataset {self.name or ''!s}: {len(self.x)} inputs but {len(self.y)} "
                    "labels; give one label per input"
                )

    def __len__(self) -> int:
        return len(self.x)

    @property
    def num_classes(self) -> int:
        if self.classes is not None:
            return len(self.classes)
        return int(self.y.max()) + 1 if self.y is not None and len(self.y) else 0

    def subset(self, index: np.ndarray) -> Dataset:
        x = self.x[index] if isinstance(self.x, np.ndarray) else [self.x[i] for i in index]
        y = None if self.y is None else self.y[index]
        return Dataset(x, y, self.classes, self.name, dict(self.meta))

    def split(
        self, fraction: float, seed: int = 0, stratify: bool = True
    ) -> tuple[Dataset, Dataset]:
        """Split into (rest, held_out) with ``fraction`` of the examples held out."""
        return train_val_split(self, fraction, seed=seed, stratify=stratify)

    def few_shot(self, shots: int, seed: int = 0) -> Dataset:
        """``shots`` examples of every class."""
        return few_shot(self, shots, seed=seed)


def as_dataset(data: Any, what: str = "data") -> Dataset:
    """A :class:`Dataset` from what a user passes: a Dataset, or an ``(x, y)`` pair."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        return Dataset(*data)
    raise InputDTypeError(
        f"{what} must be a tk.Dataset or an (x, y) tuple, got {type(data).__name__}; wrap "
        "arrays as tk.Dataset(x, y) (x alone has no labels to train or evaluate on)"
    )


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


def few_shot(data: Dataset, shots: int, seed: int = 0) -> Dataset:
    """A stratified sample of exactly ``shots`` examples per class.

    Raises :class:`EmptyDataError` naming each class that has fewer examples.
    """
    if data.y is None:
        raise LabelError("few-shot sampling needs labels")
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1:
        raise EmptyDataError(f"shots must be an integer >= 1, got {shots!r}")
    rng = np.random.default_rng(seed)
    picks, short = [], []
    for c in range(data.num_classes):
        idx = np.flatnonzero(data.y == c)
        if len(idx) < shots:
            name = data.classes[c] if data.classes else str(c)
            short.append(f"class {name!r} has {len(idx)}")
            continue
        picks.append(rng.choice(idx, size=shots, replace=False))
    if short:
        raise EmptyDataError(
            f"shots={shots} asks for {shots} examples per class, but "
            + "; ".join(short)
            + ". Ask for fewer shots or add examples."
        )
    index = np.concatenate(picks)
    return data.subset(np.sort(index))


def train_val_split(
    data: Dataset, fraction: float, seed: int = 0, stratify: bool = True
) -> tuple[Dataset, Dataset]:
    """Split into (train, val) with about ``fraction`` of each class in val."""
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not (0.0 < fraction < 1.0)
    ):
        raise EmptyDataError(f"split fraction must be a number in (0, 1), got {fraction!r}")
    rng = np.random.default_rng(seed)
    n = len(data)
    if stratify and data.y is not None and data.y.dtype.kind == "i":
        held = []
        for c in np.unique(data.y):
            idx = rng.permutation(np.flatnonzero(data.y == c))
            held.append(idx[: int(round(len(idx) * fraction))])
        val = np.sort(np.concatenate(held))
    else:
        val = np.sort(rng.permutation(n)[: int(round(n * fraction))])
    train = np.setdiff1d(np.arange(n), val)
    if len(train) == 0 or len(val) == 0:
        raise EmptyDataError(f"splitting {n} examples at {fraction} leaves one side empty")
    return data.subset(train), data.subset(val)


def from_arrays(x: Any, y: Any = None, classes: Sequence[str] | None = None) -> Dataset:
    """A :class:`Dataset` from arrays (or a list of strings)."""
    return Dataset(x, y, list(classes) if classes is not None else None)


def image_folder(root: str | Path, size: tuple[int, int] | None = None) -> Dataset:
    """Load ``root/<class>/*.png|jpg`` as RGB float32 images in [0, 1].

    Classes are the sub-directory names in sorted order. Images are resized to
    ``size`` (H, W) when given, else all must share one size.
    """
    from PIL import Image  # pillow comes with matplotlib; imported only here

    from .preprocess import resize

    root = Path(root)
    if not root.is_dir():
        raise EmptyDataError(f"image folder {str(root)!r} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise EmptyDataError(
            f"image folder {str(root)!r} has no class sub-directories; expected root/<class>/*.png"
        )
    xs, ys = [], []
    for c, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise EmptyDataError(f"class folder {str(root / name)!r} holds no images")
        for f in files:
            try:
                with Image.open(f) as im:
                    arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
            except Exception as e:  # noqa: BLE001 - PIL raises many kinds on a bad file
                raise InputDTypeError(
                    f"cannot read image {str(f)!r} ({type(e).__name__}: {e}); remove or "
                    "replace the file"
                ) from None
            if size is not None:
                arr = resize(arr[None], size)[0]
            xs.append(arr)
            ys.append(c)
    shapes = {a.shape for a in xs}
    if len(shapes) > 1:
        raise InputShapeError(
            f"images in {str(root)!r} have different sizes {sorted(shapes)[:3]}...; "
            "pass size=(H, W) to resize them"
        )
    return Dataset(np.stack(xs), np.array(ys, dtype=np.int64), classes, name=root.name)


def read_table(
    path: str | Path,
    text: str = "text",
    label: str = "label",
    classes: Sequence[str] | None = None,
    encoding: str = "utf-8",
) -> Dataset:
    """Texts and labels from a CSV or JSONL file (one object per line), read as UTF-8
    (a byte-order mark is skipped) unless ``encoding`` says otherwise.

    Labels may be class names (mapped to indices in sorted order, or in the order of
    ``classes``) or integers. Every row must have a text and a label.
    """
    import csv
    import json

    path = Path(path)
    if not path.is_file():
        raise EmptyDataError(f"{str(path)!r} does not exist")
    try:
        content = path.read_bytes().decode("utf-8-sig" if encoding == "utf-8" else encoding)
    except UnicodeDecodeError as e:
        raise InputDTypeError(
            f"{str(path)!r} is not {encoding} text (byte {e.start}: {e.reason}); save it as "
            "UTF-8, or pass encoding='latin-1' (say) to read_table"
        ) from None
    except LookupError:
        raise InputDTypeError(f"unknown encoding {encoding!r}") from None
    rows: list[Any]
    if path.suffix.lower() in {".jsonl", ".ndjson"}:
        rows = []
        for n, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputDTypeError(f"{str(path)!r} line {n} is not valid JSON: {e}") from None
            if not isinstance(row, dict):
                raise InputDTypeError(
                    f"{str(path)!r} line {n} is a JSON {type(row).__name__}, not an object "
                    f'like {{"{text}": "...", "{label}": "..."}}'
                )
            rows.append((n, row))
    else:
        reader = csv.DictReader(io.StringIO(content, newline=""))
        rows = [(n, r) for n, r in enumerate(reader, start=2)]
    if not rows:
        raise EmptyDataError(f"{str(path)!r} holds no rows")
    for col in (text, label):
        if col not in rows[0][1]:
            raise LabelError(
                f"{str(path)!r} has no column {col!r} (columns: "
                f"{', '.join(map(str, rows[0][1]))}); pass text=... and label=... to name them"
            )
    texts, raw = [], []
    for n, r in rows:
        t, v = r.get(text), r.get(label)
        if v is None or (isinstance(v, str) and not v.strip()):
            raise LabelError(f"{str(path)!r} line {n} has no {label!r}: every row needs a label")
        if not isinstance(t, str):
            raise InputDTypeError(
                f"{str(path)!r} line {n}: {text!r} is {type(t).__name__} {t!r:.40}, not text"
            )
        if isinstance(v, (dict, list, float, bool)):
            raise LabelError(
                f"{str(path)!r} line {n}: label {v!r:.40} is not a class name or an integer"
            )
        texts.append(t)
        raw.append(v)
    if (
        all(
            isinstance(v, int) or (isinstance(v, str) and v.strip().lstrip("-").isdigit())
            for v in raw
        )
        and classes is None
    ):
        y = np.array([int(v) for v in raw], dtype=np.int64)
        names = None
    else:
        names = list(classes) if classes is not None else sorted({str(v) for v in raw})
        unknown = sorted({str(v) for v in raw} - set(names))
        if unknown:
            raise LabelError(f"labels {unknown[:5]} are not in classes {names}")
        y = np.array([names.index(str(v)) for v in raw], dtype=np.int64)
    return Dataset(texts, y, names, name=path.stem)


def load_npz(path: str | Path) -> Dataset:
    """Load ``x``, ``y`` (and optional ``classes``) arrays from an ``.npz`` file."""
    import zipfile

    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not named arrays x and y")
        with f:
            if "x" not in f:
                raise EmptyDataError(f"{str(path)!r} has no array named 'x' (found {list(f)})")
            classes = [str(c) for c in f["classes"]] if "classes" in f else None
            labels = f["y"] if "y" in f else None  # noqa: SIM401 - NpzFile has no .get
            return Dataset(f["x"], labels, classes, name=Path(path).stem)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        if isinstance(e, EmptyDataError):
            raise
        raise InputDTypeError(
            f"cannot read {str(path)!r} as an .npz of arrays x and y ({e}); write it with "
            "numpy.savez(path, x=..., y=...) (object arrays are not read)"
        ) from None


def load(path: str | Path, size: tuple[int, int] | None = None) -> Dataset:
    """Load a data set from an image folder or an ``.npz`` file."""
    p = Path(path)
    if p.is_dir():
        return image_folder(p, size=size)
    if p.suffix == ".npz" and p.is_file():
        return load_npz(p)
    if p.suffix.lower() in {".csv", ".jsonl", ".ndjson"} and p.is_file():
        return read_table(p)
    raise EmptyDataError(
        f"cannot load data from {str(p)!r}: expected an image folder (root/<class>/*.png), "
        "an .npz file with arrays x and y, or a .csv/.jsonl file with text and label columns"
    )


# --- checks, run before any framework code ------------------------------------------


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
