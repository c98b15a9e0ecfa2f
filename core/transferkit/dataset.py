"""The data container: inputs, labels and class names, with few-shot sampling and splits.

Neutral data is numpy: images channels-last ``(N, H, W, C)`` (float32 in [0, 1] or
integers 0-255), vectors ``(N, D)``, text ``list[str]``, labels int64 ``(N,)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import validate
from .checks import check_stacked
from .errors import EmptyDataError, InputDTypeError, LabelError
from .lazy import is_lazy


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
        what = f"dataset {self.name!r}" if self.name else "the dataset"
        if is_lazy(self.x):
            pass  # decoded when a batch needs it
        elif isinstance(self.x, np.ndarray) or not isinstance(self.x, (list, tuple)):
            self.x = np.asarray(self.x)
            if self.x.ndim == 0:
                raise InputDTypeError(
                    f"{what}: x is a single {type(self.x.item()).__name__}, not a collection "
                    "of examples; pass an array (N, ...) or a list"
                )
        elif self.x and not isinstance(self.x[0], str):
            self.x = check_stacked(self.x, what)
        else:
            self.x = list(self.x)
        if self.y is not None:
            self.y = np.asarray(self.y)
            if self.y.ndim == 0:
                raise LabelError(f"{what}: y is a single value; give one label per input")
            if self.y.dtype.kind in "iub":
                self.y = self.y.astype(np.int64)
            elif self.y.dtype.kind in "USO":  # class names, as read_table maps them
                if self.y.ndim != 1:
                    raise LabelError(
                        f"{what}: class-name labels must be one name per input (shape (N,)), "
                        f"got shape {self.y.shape}"
                    )
                names = [str(v) for v in self.y.tolist()]
                if self.classes is None:
                    self.classes = sorted(set(names))
                unknown = sorted(set(names) - set(self.classes))
                if unknown:
                    raise LabelError(f"{what}: labels {unknown[:5]} are not in classes")
                self.y = np.array([self.classes.index(v) for v in names], dtype=np.int64)
            if len(self.y) != len(self.x):
                raise LabelError(
                    f"{what}: {len(self.x)} inputs but {len(self.y)} labels; give one label "
                    "per input"
                )
        if self.classes is not None:
            self.classes = [str(c) for c in self.classes]

    def __len__(self) -> int:
        return len(self.x)

    @property
    def num_classes(self) -> int:
        if self.classes is not None:
            return len(self.classes)
        if self.y is None or not len(self.y) or self.y.dtype.kind not in "iu":
            return 0
        return int(self.y.max()) + 1

    def subset(self, index: np.ndarray) -> Dataset:
        if is_lazy(self.x):
            x = self.x.subset(index)
        else:
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
    from . import interop  # the data sets users already have

    if interop.is_hf(data):
        return interop.from_hf(data)
    if not isinstance(data, list) and interop.is_pairs(data):
        return interop.from_pairs(data)
    raise InputDTypeError(
        f"{what} must be a tk.Dataset, an (x, y) tuple, a datasets.Dataset or a data set of "
        f"(x, y) pairs, got {type(data).__name__}; wrap "
        "arrays as tk.Dataset(x, y) (x alone has no labels to train or evaluate on)"
    )


def few_shot(data: Dataset, shots: int, seed: int = 0) -> Dataset:
    """A stratified sample of exactly ``shots`` examples per class.

    Raises :class:`EmptyDataError` naming each class that has fewer examples.
    """
    if data.y is None:
        raise LabelError("few-shot sampling needs labels")
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1:
        raise EmptyDataError(f"shots must be an integer >= 1, got {shots!r}")
    seed = validate.integer("seed", seed, 0)
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
    rng = np.random.default_rng(validate.integer("seed", seed, 0))
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
