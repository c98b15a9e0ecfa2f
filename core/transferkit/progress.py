"""Progress display: a bar on a terminal, one line per epoch otherwise, or nothing."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(
        self, epochs: int, steps: int, verbose: int | str = "auto", stream: TextIO | None = None
    ):
        self.stream = stream or sys.stderr
        if verbose == "auto":
            self.mode = "bar" if self.stream.isatty() else "lines"
        else:
            self.mode = {0: "none", 1: "bar", 2: "lines"}.get(verbose, "lines")
        self.epochs, self.steps = epochs, steps
        self._t0 = time.perf_counter()

    def epoch_start(self, epoch: int) -> None:
        self._t0 = time.perf_counter()
        self._epoch = epoch

    def step(self, i: int) -> None:
        if self.mode != "bar":
            return
        done = int(24 * (i + 1) / max(1, self.steps))
        self.stream.write(
            f"\repoch {self._epoch + 1}/{self.epochs} [{'=' * done}{'.' * (24 - done)}] "
            f"{i + 1}/{self.steps}"
        )
        self.stream.flush()

    def epoch_end(self, logs: dict[str, float]) -> None:
        if self.mode == "none":
            return
        shown = "  ".join(
            f"{k} {v:.4f}"
            for k, v in logs.items()
            if k not in {"epoch", "time", "lr", "trainable_groups"} and isinstance(v, float)
        )
        end = "\r" if self.mode == "bar" else ""
        self.stream.write(
            f"{end}epoch {self._epoch + 1}/{self.epochs}  {shown}  "
            f"({time.perf_counter() - self._t0:.1f}s)\n"
        )
        self.stream.flush()
