"""A fit's inputs as the engine takes them, batch by batch: cached features, inputs
prepared once (resized and normalised), or raw inputs prepared per batch (augmented, if
an augment function is given, or too large to prepare at once)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import feature_store
from .checks import check_augmented
from .lazy import is_lazy, take
from .scaling import shard

if TYPE_CHECKING:
    from .model import Model

#: inputs larger than this (as float32) are prepared per batch
PREPARE_AT_ONCE = 512 * 2**20


def _features(model: Model, x: Any) -> np.ndarray:
    """The backbone's features of ``x``; under a strategy, each process computes those of
    its shard and they are gathered (unless the engine's inference spreads itself)."""
    engine = model.engine
    if engine.world == 1 or engine.spreads_inference or len(x) < engine.world:
        return model.features(x)  # (fewer examples than processes: each computes all)
    mine = np.arange(len(x))[shard(len(x), engine.rank, engine.world)]
    return engine.all_gather(np.asarray(model.features(take(x, mine)), np.float32))


class Inputs:
    """``kind``: ``"features"`` (the backbone's cached outputs), ``"prepared"`` or
    ``"raw"``."""

    def __init__(
        self,
        model: Model,
        x: Any,
        cached: bool,
        augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.model, self.augment = model, augment
        per_batch = augment is not None or not isinstance(x, np.ndarray)
        # on disk, memory mapped: lazy data (unless its source has no stable identity),
        # or any data when a cache directory is named
        on_disk = cached and (x.persistent if is_lazy(x) else cache_dir is not None)
        if on_disk:
            self.kind, self.x = "features", feature_store.features(model, x, cache_dir)
        elif cached:
            self.kind, self.x = "features", _features(model, x)
        elif per_batch or len(x) * int(np.prod(model.input_shape)) * 4 > PREPARE_AT_ONCE:
            self.kind, self.x = "raw", x
        else:
            self.kind, self.x = "prepared", model.prepare(x)

    def plain(self, idx: np.ndarray) -> Any:
        """The examples ``idx`` as the engine takes them, never augmented."""
        if self.kind != "raw":
            return self.x[idx]
        return self.model.prepare(take(self.x, idx))

    def train(self, idx: np.ndarray, rng: np.random.Generator) -> Any:
        """The training batch ``idx``: augmented with ``rng`` where an augment is given."""
        if self.augment is None or self.kind != "raw":
            return self.plain(idx)
        raw = take(self.x, idx)
        out = self.augment(raw, rng)
        check_augmented(self.augment, raw, out, self.model.check)
        return self.model.prepare(out)

    def chunks(self, size: int = 128):
        """Every example in order, ``size`` at a time, never augmented."""
        for start in range(0, len(self.x), size):
            yield self.plain(np.arange(start, min(start + size, len(self.x))))
