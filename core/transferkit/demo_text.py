"""``transferkit demo --text``: BBC News topics with 2-16 labelled articles per class.

TF-IDF + logistic regression (the classical baseline) against all-MiniLM-L6-v2 features
(embedded once, reused across shot counts and seeds) and MiniLM fine-tuned with LoRA
from the probe's head.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import datasets
from .builder import build
from .data import Dataset
from .demo import _report
from .errors import TruncationWarning
from .freeze import FeatureExtraction, LoRA
from .heads import Classifier
from .model import Model
from .training import fit

TEXT_SHOTS = (2, 4, 8, 16)


def _tfidf_lr(train: Dataset, test: Dataset, seed: int) -> float:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    clf = make_pipeline(
        TfidfVectorizer(sublinear_tf=True, stop_words="english"),
        LogisticRegression(max_iter=2000, C=10.0, random_state=seed),
    )
    clf.fit(train.x, train.y)
    return float(clf.score(test.x, test.y))


def run_text(
    quick: bool = False,
    shots: Sequence[int] = TEXT_SHOTS,
    seeds: int | None = None,
    out: str | Path = "demo-out",
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """BBC News topics with 2-16 labelled articles per class: TF-IDF + logistic regression
    against all-MiniLM-L6-v2 features (embedded once, reused across shots and seeds) and
    MiniLM fine-tuned with LoRA from the probe's head. Writes ``demo-text.{md,json,png}``.
    Articles are truncated to 256 tokens (128 for LoRA), without a warning each time."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=TruncationWarning)
        return _run_text(quick, shots, seeds, out, stream or sys.stdout)


def _run_text(
    quick: bool, shots: Sequence[int], seeds: int | None, out: str | Path, stream: TextIO
) -> dict[str, Any]:
    t_start = time.perf_counter()
    n_seeds = seeds or (1 if quick else 3)
    test_size = 250 if quick else None
    _, test = datasets.bbc_news(shots=1, test_size=test_size)
    print(
        f"BBC News: {len(test)} test articles, {n_seeds} seed(s); embedding with "
        "all-MiniLM-L6-v2 (once, then cached)...",
        file=stream,
        flush=True,
    )
    encoder = build("hf:all-MiniLM-L6-v2", head=Classifier(5))
    rows = []

    def record(label: str, transfer: bool, fn: Callable[[Dataset, int], float], n: int) -> None:
        accs: dict[int, list[float]] = {}
        t0 = time.perf_counter()
        for k in shots:
            for seed in range(n):
                train, _ = datasets.bbc_news(shots=k, seed=seed, test_size=test_size)
                accs.setdefault(k, []).append(fn(train, seed))
        rows.append(
            {
                "task": "bbc news",
                "method": label,
                "framework": "hf" if transfer else None,
                "transfer": transfer,
                "seeds": n,
                "accuracy": {k: float(np.mean(v)) for k, v in accs.items()},
                "std": {k: float(np.std(v)) for k, v in accs.items()},
                "seconds": time.perf_counter() - t0,
            }
        )
        print(
            f"  {label:<48} "
            + "  ".join(f"{np.mean(v):.3f}" for v in accs.values())
            + f"  ({time.perf_counter() - t0:.0f}s)",
            file=stream,
            flush=True,
        )

    record(
        "TF-IDF + logistic regression",
        False,
        lambda train, seed: _tfidf_lr(train, test, seed),
        n_seeds,
    )

    def probe(model: Model, train: Dataset, seed: int) -> None:
        fit(
            model,
            train,
            freeze=FeatureExtraction(),
            epochs=100,
            lr=1e-2,
            batch_size=16,
            seed=seed,
            verbose=0,
        )

    def features(train: Dataset, seed: int) -> float:
        encoder.reset_head(seed)
        probe(encoder, train, seed)
        return encoder.evaluate(test)["accuracy"]

    record("MiniLM features (frozen)", True, features, n_seeds)

    def lora(train: Dataset, seed: int) -> float:
        # LP-FT: start LoRA from the linear probe's head, so fine-tuning refines a good
        # classifier instead of pushing gradients through a random one.
        encoder.reset_head(seed)
        probe(encoder, train, seed)
        model = build("hf:all-MiniLM-L6-v2", head=Classifier(5), input_shape=(128,), seed=seed)
        model.set_weights({k: v for k, v in encoder.get_weights().items() if k.startswith("head.")})
        fit(
            model,
            train,
            freeze=LoRA(r=8, alpha=16),
            epochs=5,
            lr=1e-3,
            batch_size=8,
            seed=seed,
            verbose=0,
        )
        return model.evaluate(test)["accuracy"]

    record("MiniLM probe + LoRA fine-tuning (1 seed)", True, lora, 1)
    result = {"shots": list(shots), "seeds": n_seeds, "test_articles": len(test), "rows": rows}
    return _report(result, t_start, Path(out) / "demo-text", stream)
