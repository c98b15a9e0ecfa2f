"""Order statistics of timings, and ratios of paired timings.

Every benchmark (``transferkit bench`` and the scripts under ``benchmarks/``) reports a
timing as its median with quartiles, and a comparison of two alternately timed sides as
the ratio of their medians with the quartiles of the per-pair ratios, which say how
noisy the machine was.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def quartiles(values: Sequence[float]) -> dict[str, float]:
    """Median, first and third quartile, interquartile range, extremes and count."""
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return {
        "median": float(med),
        "q1": float(q1),
        "q3": float(q3),
        "iqr": float(q3 - q1),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
        "n": len(values),
    }


def median(values: Sequence[float]) -> float:
    return float(np.median(values))


def ratio_of_medians(a: Sequence[float], b: Sequence[float]) -> float:
    """``median(a) / median(b)``: > 1 means side ``a`` is slower."""
    return median(a) / median(b)


def pair_ratio(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and extremes of the per-pair ratios ``a[i] / b[i]`` of two sides
    timed alternately (pair ``i`` ran under the same machine noise)."""
    r = np.asarray(a, dtype=float) / np.asarray(b, dtype=float)
    q1, med, q3 = np.percentile(r, [25, 50, 75])
    return {
        "median": float(med),
        "q1": float(q1),
        "q3": float(q3),
        "min": float(r.min()),
        "max": float(r.max()),
    }
