"""The learning-rate range test (Smith 2017; fastai's ``lr_find``) on any framework.

A short run of the real training step with the learning rate growing exponentially
from ``start`` to ``end``, one step per batch, recording the loss; it stops when the
smoothed loss exceeds ``diverge`` times its minimum (or stops being finite). The model's
weights, BatchNorm statistics included, are put back afterwards exactly (a model holds
no optimizer state between fits).

The suggestion follows fastai's default rule, ``"valley"``: the longest stretch over
which the smoothed loss keeps falling, and the learning rate two thirds of the way
down it (after dropping the first tenth of the steps and the last five). Also given:
``"steep"`` (where the smoothed loss falls fastest per decade of learning rate) and
``"minimum"`` (a tenth of the learning rate of the lowest loss).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import owned, validate
from .callbacks import Callback
from .errors import ConfigError, TrainingError
from .schedules import batch_bounds

RULES = ("valley", "steep", "minimum")


@dataclass
class LRFinder:
    """The result of :func:`find_lr`: ``lrs`` and (smoothed) ``losses`` per step,
    ``raw_losses``, the ``suggestion`` by ``rule`` and every rule's in ``suggestions``
    (``None`` where too few steps were recorded), and why it stopped."""

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    stopped: str
    rule: str = "valley"
    suggestions: dict[str, float | None] = field(default_factory=dict)

    @property
    def suggestion(self) -> float | None:
        return self.suggestions.get(self.rule)

    def __repr__(self) -> str:
        s = self.suggestion
        return (
            f"LRFinder({len(self.lrs)} steps, {self.lrs[0]:.1e} to {self.lrs[-1]:.1e}, "
            f"suggestion={'None' if s is None else f'{s:.2e}'} ({self.rule}), {self.stopped})"
        )

    def plot(self, path: str | Path) -> Path:
        """Loss against learning rate (log axis), every suggestion marked."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(self.lrs, self.raw_losses, color="0.75", lw=1, label="loss")
        ax.plot(self.lrs, self.losses, color="C0", label="smoothed loss")
        for i, (rule, lr) in enumerate(self.suggestions.items()):
            if lr is not None:
                at = float(np.interp(np.log(lr), np.log(self.lrs), self.losses))
                size = 9 if rule == self.rule else 6
                ax.plot([lr], [at], "o", color=f"C{i + 1}", ms=size, label=f"{rule}: {lr:.1e}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        low, high = min(self.raw_losses), max(self.losses)
        top = min(high, 4 * min(self.losses)) if min(self.losses) > 0 else high
        ax.set_ylim(low - 0.05 * (top - low), top + 0.05 * (top - low))
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(path)
        owned.save_figure(fig, path, "learning-rate plot", dpi=100)
        plt.close(fig)
        return path


def valley(lrs: list[float], losses: list[float]) -> float | None:
    """fastai's ``valley``: two thirds down the longest decreasing run of the loss."""
    n = len(losses)
    if n < 3:
        return None
    longest = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[end] < longest[i]:
            end, start = i, i - longest[i]
    third = (end - start) / 3
    return lrs[min(n - 1, start + int(third) + int(third / 2))]


def steep(lrs: list[float], losses: list[float]) -> float | None:
    if len(losses) < 3:
        return None
    slope = np.gradient(np.asarray(losses), np.log(np.asarray(lrs)))
    return lrs[int(np.argmin(slope))]


class _Recorder(Callback):
    def __init__(self, steps: int, smoothing: float, diverge: float) -> None:
        self.steps, self.beta, self.diverge = steps, smoothing, diverge
        self.lrs: list[float] = []
        self.raw: list[float] = []
        self.smooth: list[float] = []
        self.avg = 0.0
        self.stopped = f"ran all {steps} steps"

    def on_batch_end(self, trainer: Any, batch: int, logs: dict[str, Any]) -> None:
        loss = float(logs["loss"])
        if not math.isfinite(loss):
            self.stopped = f"the loss became {loss} at lr {logs['lr']:.1e}"
            trainer.stop = True
            return
        self.avg = self.beta * self.avg + (1 - self.beta) * loss
        smoothed = self.avg / (1 - self.beta ** (len(self.raw) + 1))
        self.lrs.append(float(logs["lr"]))
        self.raw.append(loss)
        self.smooth.append(smoothed)
        if len(self.raw) > 1 and smoothed > self.diverge * min(self.smooth):
            self.stopped = f"the loss diverged at lr {logs['lr']:.1e}"
            trainer.stop = True
        elif len(self.raw) >= self.steps:
            trainer.stop = True


def find_lr(
    model: Any,
    train: Any,
    freeze: Any = None,
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = 100,
    batch_size: int = 32,
    rule: str = "valley",
    smoothing: float = 0.98,
    diverge: float = 4.0,
    seed: int = 0,
    **fit_options: Any,
) -> LRFinder:
    """Run the learning-rate range test on ``model`` and ``train`` under ``freeze`` (as
    ``tk.fit`` would train them, with ``fit_options`` such as ``optimizer`` or
    ``weight_decay``) and put the model back as it was. Returns an :class:`LRFinder`.

    Example::

        finder = tk.find_lr(model, train, freeze=tk.freeze.TrainLast(2))
        finder.plot("lr.png")
        tk.fit(model, train, freeze=tk.freeze.TrainLast(2), lr=finder.suggestion)
    """
    from .data import as_dataset
    from .model import Model
    from .training import Trainer

    if not isinstance(model, Model):
        raise ConfigError(f"find_lr() needs a model from tk.build, got {type(model).__name__}")
    start = validate.number("start", start, 0.0, exclusive_minimum=True)
    end = validate.number("end", end, start, exclusive_minimum=True)
    steps = validate.integer("steps", steps, 5, 100_000)
    smoothing = validate.number("smoothing", smoothing, 0.0, 0.999)
    diverge = validate.number("diverge", diverge, 1.0, exclusive_minimum=True)
    validate.choice("rule", rule, RULES)
    for key in ("lr", "epochs", "schedule", "callbacks", "resume_from", "checkpoint_dir"):
        if key in fit_options:
            raise ConfigError(f"find_lr() sets {key} itself; it cannot be given")
    n = len(as_dataset(train, "train"))
    per_epoch = len(batch_bounds(n, validate.integer("batch_size", batch_size, 1, 1 << 20)))
    recorder = _Recorder(steps, smoothing, diverge)
    growth = math.log(end / start) / max(1, steps - 1)
    saved = model.get_weights()
    history, batchnorm = model.history, model.batchnorm
    try:
        trainer = Trainer(
            model, freeze=freeze, epochs=math.ceil(steps / per_epoch), lr=start,
            batch_size=batch_size, seed=seed, verbose=0, callbacks=[recorder],
            schedule=lambda step, total: math.exp(growth * step), batchnorm="train",
            **fit_options,
        )  # fmt: skip
        with warnings.catch_warnings():  # the real fit says what applies to it
            warnings.simplefilter("ignore")
            trainer.fit(train)
    except TrainingError:
        pass  # a diverging loss ends the test; the recorder says where
    finally:
        model.set_weights(saved)
        model.history, model.batchnorm = history, batchnorm
    if not recorder.raw:
        raise TrainingError(
            f"the learning-rate range test recorded no finite loss ({recorder.stopped}); "
            f"lower start= (now {start:g}) or check the inputs"
        )
    lrs, losses = recorder.lrs, recorder.smooth
    body = slice(len(lrs) // 10, max(len(lrs) // 10 + 1, len(lrs) - 5))
    best = int(np.argmin(losses))
    suggestions = {
        "valley": valley(lrs[body], losses[body]),
        "steep": steep(lrs[body], losses[body]),
        "minimum": lrs[best] / 10 if len(lrs) >= 3 else None,
    }
    return LRFinder(lrs, losses, recorder.raw, recorder.stopped, rule, suggestions)


#: fit options the range test passes on (the others describe the real run only)
_PASSED = (
    "freeze", "batch_size", "optimizer", "weight_decay", "momentum", "seed",
    "cache_features", "augment", "regularizer",
)  # fmt: skip


def auto_lr(model: Any, train: Any, options: dict[str, Any]) -> tuple[float, LRFinder | None]:
    """``tk.fit(..., lr="auto")``: the range test's suggestion for this fit, or the
    default learning rate, with a warning, where the test suggests nothing."""
    import sys

    from .errors import warn
    from .training import DEFAULT_LR

    passed = {k: options[k] for k in _PASSED if k in options}
    try:
        finder = find_lr(model, train, **passed)
    except TrainingError as e:
        finder, why = None, str(e)
    else:
        why = finder.stopped
    lr = finder.suggestion if finder is not None else None
    if lr is None:
        warn(
            f"lr='auto': the learning-rate range test found no falling stretch of the loss "
            f"({why}); using lr={DEFAULT_LR}. Look at tk.find_lr(...).plot('lr.png') and "
            "pass lr= yourself"
        )
        return DEFAULT_LR, finder
    if options.get("verbose", "auto") not in (0, False):
        print(
            f"lr='auto': the learning-rate range test chose lr={lr:.2e} ({finder.rule}; "
            f"{len(finder.lrs)} steps, {finder.stopped})",
            file=sys.stderr,
        )
    return lr, finder
