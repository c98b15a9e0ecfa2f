"""Callbacks: every event of the training loop, for the loop's own services and users.

As in Keras, what ``fit`` does besides stepping is itself a callback that ``fit``
installs by default: :class:`History` records each epoch's figures,
:class:`ProgressLogger` draws the bar or lines, :class:`Checkpoint` writes the state
for an exact resume. A user's callbacks see the same events, in this order per epoch:
``on_epoch_begin``, then per batch ``on_batch_begin`` / ``on_batch_end``, then
``on_epoch_end``; ``on_train_begin`` / ``on_train_end`` around the run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import metrics, owned, validate
from .errors import ConfigError
from .progress import Progress

if TYPE_CHECKING:
    from .training import Trainer


class Callback:
    """Hooks into the training loop; override the events you need.

    ``trainer`` is the running :class:`~transferkit.Trainer`: ``trainer.model``,
    ``trainer.epoch``, ``trainer.step``, ``trainer.history``; setting
    ``trainer.stop = True`` ends the run after the current epoch (set in
    ``on_batch_end``: after the current batch, the epoch ending there). In
    ``on_batch_end``, ``logs`` holds ``loss`` (the batch loss: call ``float()`` on it;
    it stays lazy so that steps stay asynchronous) and ``lr`` (the step's base rate).
    """

    def on_train_begin(self, trainer: Trainer) -> None: ...

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None: ...

    def on_batch_begin(self, trainer: Trainer, batch: int) -> None: ...

    def on_batch_end(self, trainer: Trainer, batch: int, logs: dict[str, Any]) -> None: ...

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...


class History(Callback):
    """One dict of figures per epoch; ``history.history["val_accuracy"]`` as in Keras.
    ``fit`` returns it, after recording every epoch as a callback."""

    def __init__(self, epochs: Sequence[dict[str, Any]] = ()):
        self.epochs: list[dict[str, Any]] = [dict(e) for e in epochs]
        #: with ``fit(lr="auto")``: the learning-rate range test that chose ``lr``
        self.lr_finder: Any = None

    def append(self, logs: dict[str, Any]) -> None:
        self.epochs.append(dict(logs))

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        self.append(logs)

    def on_train_end(self, trainer: Trainer) -> None:
        trainer.model.history = self.epochs

    @property
    def history(self) -> dict[str, list[Any]]:
        keys = dict.fromkeys(k for e in self.epochs for k in e)
        return {k: [e.get(k) for e in self.epochs] for k in keys}

    def __len__(self) -> int:
        return len(self.epochs)

    def __getitem__(self, key: str) -> list[Any]:
        history = self.history
        if key not in history:
            raise KeyError(
                f"history has no {key!r}; it logs {', '.join(history) or 'nothing yet'} "
                "(val_* figures need fit(..., val=...)); history.epochs[i] is epoch i's dict"
            )
        return history[key]

    def to_json(self, path: str | Path) -> None:
        owned.write_text(path, json.dumps(self.epochs, indent=2), "history")

    def to_csv(self, path: str | Path) -> None:
        keys = list(self.history)
        lines = [",".join(keys)] + [
            ",".join("" if e.get(k) is None else str(e.get(k)) for k in keys) for e in self.epochs
        ]
        owned.write_text(path, "\n".join(lines) + "\n", "history")


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs; by default put
    back the best epoch's weights (Keras's ``restore_best_weights``)."""

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 3,
        min_delta: float = 0.0,
        restore_best: bool = True,
    ):
        self.monitor = validate.string("EarlyStopping(monitor)", monitor)
        self.patience = validate.integer("EarlyStopping(patience)", patience, 0)
        self.min_delta = validate.number("EarlyStopping(min_delta)", min_delta, 0.0)
        self.restore_best = validate.boolean("EarlyStopping(restore_best)", restore_best)
        self.higher = metrics.HIGHER_IS_BETTER.get(monitor.removeprefix("val_"), False)

    def on_train_begin(self, trainer: Trainer) -> None:
        self.best, self.best_epoch, self.wait, self.best_weights = None, -1, 0, None

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        delta = value - self.best if self.higher else self.best - value
        return delta > self.min_delta

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        if self.monitor not in logs:
            raise ConfigError(
                f"EarlyStopping monitors {self.monitor!r}, which this run does not log "
                f"(it logs {', '.join(k for k in logs)}); pass val= or another monitor"
            )
        value = float(logs[self.monitor])
        if self._better(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_weights = trainer.model.get_weights()
        else:
            self.wait += 1
            if self.wait >= self.patience:
                trainer.stop = True

    def on_train_end(self, trainer: Trainer) -> None:
        if self.restore_best and self.best_weights is not None:
            trainer.model.set_weights(self.best_weights)


class ProgressLogger(Callback):
    """The progress display of ``fit(verbose=...)``: a bar on a terminal (1), one line
    per epoch (2), nothing (0); "auto" picks the bar on a terminal."""

    def __init__(self, verbose: int | str = "auto") -> None:
        self.verbose = verbose

    def on_train_begin(self, trainer: Trainer) -> None:
        self.progress = Progress(trainer.epochs, trainer.steps_per_epoch, self.verbose)

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        self.progress.epoch_start(epoch)

    def on_batch_end(self, trainer: Trainer, batch: int, logs: dict[str, Any]) -> None:
        self.progress.step(batch)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        self.progress.epoch_end(logs)


class Checkpoint(Callback):
    """Write the complete training state (weights, optimizer, random state, epoch,
    history) to ``path`` after every epoch, atomically, for ``fit(resume_from=path)``."""

    def __init__(self, path: str | Path) -> None:
        from .checkpoint import TrainState

        if not isinstance(path, (str, Path)):
            raise ConfigError(f"Checkpoint() needs a directory path, got {type(path).__name__}")
        self.path = Path(path)
        TrainState.check_target(self.path)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        state = trainer.state()  # every process computes (a model spread over them)
        if trainer.model.engine.rank == 0:  # one writer when processes train together
            state.save(self.path)


def overrides(callback: Callback, event: str) -> bool:
    """Whether ``callback`` implements ``event`` (so the loop can skip empty hooks)."""
    return getattr(type(callback), event) is not getattr(Callback, event)


def check_callbacks(callbacks: Sequence[Any]) -> list[Callback]:
    if isinstance(callbacks, Callback) or not all(isinstance(c, Callback) for c in callbacks):
        raise ConfigError("callbacks must be a list of tk.Callback objects")
    return list(callbacks)
