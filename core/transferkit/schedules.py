"""What an epoch is made of: its batches, and the learning rate of each step."""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each batch of an epoch. A last batch of one example is merged
    into the batch before it, in every framework: BatchNorm cannot train on one example
    (PyTorch refuses, others would normalise it to zero)."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return list(zip(starts, [*starts[1:], n], strict=True))


def learning_rate(step: int, total: int, lr: float, schedule: str, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then constant or cosine decay to 0."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    progress = (step - warmup) / max(1, total - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
