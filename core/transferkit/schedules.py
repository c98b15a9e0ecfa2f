"""What an epoch is made of: its batches, and the learning rate of each step."""

from __future__ import annotations

import math
from typing import Any

from .errors import ConfigError

SCHEDULES = ("constant", "cosine")


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each batch of an epoch. A last batch of one example is merged
    into the batch before it, in every framework: BatchNorm cannot train on one example
    (PyTorch refuses, others would normalise it to zero)."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return list(zip(starts, [*starts[1:], n], strict=True))


def learning_rate(step: int, total: int, lr: float, schedule: Any, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then constant or cosine decay to 0, or
    ``lr`` times what a callable ``schedule(step, total)`` returns (PyTorch's
    ``LambdaLR``, given the run's length too)."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if callable(schedule):
        factor = schedule(step, total)
        if not isinstance(factor, int | float) or not math.isfinite(factor) or factor < 0:
            raise ConfigError(
                f"schedule function returned {factor!r} at step {step}; it must return a "
                "finite number >= 0 (the factor the learning rate is multiplied by)"
            )
        return lr * float(factor)
    if schedule == "constant":
        return lr
    progress = (step - warmup) / max(1, total - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
