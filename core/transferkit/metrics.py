"""Metrics, computed in numpy from model outputs so every framework reports the same."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(-log_softmax(logits.astype(np.float64))[np.arange(len(y)), y].mean())


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float((pred == y).mean())


def macro_f1(pred: np.ndarray, y: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y`` or ``pred``."""
    scores = []
    for c in range(num_classes):
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def classification(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    pred = logits.argmax(axis=1)
    return {
        "loss": cross_entropy(logits, y),
        "accuracy": accuracy(pred, y),
        "macro_f1": macro_f1(pred, y, logits.shape[1]),
    }


def regression(out: np.ndarray, y: np.ndarray) -> dict[str, float]:
    err = out.astype(np.float64) - y
    return {
        "loss": float(np.mean(err**2)),
        "mse": float(np.mean(err**2)),
        "mae": float(np.mean(np.abs(err))),
    }


def compute(task: str, outputs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return classification(outputs, y) if task == "classification" else regression(outputs, y)


#: whether a larger value of a metric is better (for early stopping and checkpoints)
HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "loss": False, "mse": False, "mae": False}
