"""BatchNorm when fine-tuning: the ``batchnorm=`` option of ``tk.fit``.

A BatchNorm layer normalises a training batch by the batch's own statistics and keeps
running averages of them for inference. With few labels a fit takes few steps, and a
layer whose running statistics move slowly (EfficientNet-Lite0's momentum is 0.01)
predicts at inference with statistics that are still mostly the pretraining data's,
while its weights were trained against the new data's. The modes:

- ``"train"``: batch statistics in training, running statistics updated with the
  layer's own momentum (what every framework does by default);
- ``"frozen"``: the backbone's BatchNorm layers stay in inference mode even where their
  group trains (running statistics used and never updated; scale and shift still learn),
  as the Keras transfer-learning guide prescribes;
- ``"recalibrate"``: train as ``"train"``, then re-estimate the running statistics of
  every BatchNorm that trained from one pass over the training data in training mode
  (a cumulative average over the pass, no momentum; no weight changes, no augmentation).
  It runs before anything looks at the model: at the end of each epoch when the fit
  validates, checkpoints or has callbacks, otherwise once after the last epoch.

A frozen layer group's BatchNorm is in inference mode whatever the mode. Running
statistics have canonical names ending in ``running_mean`` and ``running_var``, so core
knows every model's BatchNorm layers without asking the framework.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import numpy as np

from . import metrics, validate
from .errors import ConfigError, warn

if TYPE_CHECKING:
    from .batches import Inputs
    from .model import Model
    from .training import Trainer

MODES = ("train", "frozen", "recalibrate")
#: chosen by ``benchmarks/batchnorm.py`` (README, "BatchNorm when fine-tuning")
DEFAULT = "recalibrate"
MEAN, VAR = ".running_mean", ".running_var"
#: how many training examples the end-of-fit check predicts in inference mode
CHECKED = 256


def check(mode: Any) -> str:
    return validate.choice("batchnorm", mode, MODES)


def layers(model: Model, groups: Collection[str]) -> list[str]:
    """Canonical prefixes of the backbone's BatchNorm layers in ``groups``."""
    out = []
    for name in model.engine.param_shapes():
        if name.startswith("backbone.") and name.endswith(MEAN):
            prefix = name[: -len(MEAN)]
            if model.spec.group_of(prefix[len("backbone.") :] + ".weight") in groups:
                out.append(prefix)
    return out


def check_recalibration(n: int) -> None:
    if n < 2:
        raise ConfigError(
            f"batchnorm='recalibrate' estimates each BatchNorm's mean and variance from "
            f"batches of the training data, and a variance needs at least 2 examples; the "
            f"training data has {n}. Use batchnorm='frozen' (or 'train'), or more examples"
        )


def recalibrate(
    model: Model,
    groups: Collection[str],
    bounds: list[tuple[int, int]],
    batch: Callable[[np.ndarray], Any],
) -> None:
    """Replace the running statistics of every BatchNorm in ``groups`` with their average
    over one pass of the training batches ``bounds`` in order (each batch weighted by its
    size; ``batch(indices)`` gives the prepared inputs)."""
    if not layers(model, groups):
        return
    sums: dict[str, np.ndarray] = {}
    for lo, hi in bounds:
        stats = model.engine.batch_statistics(batch(np.arange(lo, hi)), tuple(groups))
        for key, value in stats.items():
            sums[key] = sums.get(key, 0.0) + (hi - lo) * np.asarray(value, np.float64)
    total = bounds[-1][1] - bounds[0][0]
    model.engine.set_weights({k: (v / total).astype(np.float32) for k, v in sums.items()})


def check_gap(model: Model, mode: str, loss: float, logits: np.ndarray, y: np.ndarray) -> None:
    """Warn once when the model predicts its own training data in inference mode much
    worse than the training loss says: a loss above twice the last epoch's plus 0.1, and
    for a classifier an accuracy below 0.9 (``logits``: inference-mode outputs on the
    first training examples, ``y`` their labels)."""
    got = metrics.compute(model.head.task, logits, y)
    # a classifier that gets 90% of its training examples right in inference mode is fine
    if not got["loss"] > 2 * loss + 0.1 or got.get("accuracy", 0.0) >= 0.9:
        return
    seen = f"accuracy {got['accuracy']:.2f}, " if "accuracy" in got else ""
    advice = (
        "refit with batchnorm='recalibrate' (re-estimates them from the training data) or "
        "batchnorm='frozen' (keeps BatchNorm in inference mode while fine-tuning)"
        if mode == "train"
        else "refit with batchnorm='frozen' (keeps BatchNorm in inference mode while "
        "fine-tuning), or train longer"
    )
    warn(
        f"in inference mode the fitted model predicts its own training examples much worse "
        f"than training says ({seen}loss {got['loss']:.3f} on {len(y)} of them, against a "
        f"training loss of {loss:.3f} in the last epoch): the running statistics of its "
        f"BatchNorm layers do not match the data. {advice}"
    )


def trained_groups(trainer: Trainer, epochs: int) -> set[str]:
    """Backbone groups trained in the first ``epochs`` epochs of a fit (their BatchNorm
    ran on batch statistics, unless ``batchnorm="frozen"``)."""
    if trainer.batchnorm == "frozen" or trainer.uses_feature_cache():
        return set()
    plans = [trainer.policy.plan(trainer.groups, e) for e in range(epochs)]
    return {g for p in plans for g, m in p.items() if m > 0 and g != "head"}


def after_epochs(trainer: Trainer, inputs: Inputs, bounds: list, epochs: int) -> int:
    """Recalibrate after ``epochs`` epochs when the fit asks for it; returns ``epochs``."""
    if trainer.batchnorm == "recalibrate":
        recalibrate(trainer.model, trained_groups(trainer, epochs), bounds, inputs.plain)
    return epochs


def check_fit(trainer: Trainer, inputs: Inputs, y: np.ndarray) -> None:
    """Warn when the fitted model, in inference mode, predicts its training data much
    worse than training says (the BatchNorm statistics do not match the data)."""
    model = trainer.model
    trained = trained_groups(trainer, trainer.epoch)
    if not trainer.history.epochs or not layers(model, trained):
        return
    k = min(len(y), CHECKED)
    predict = model.engine.predict
    logits = np.concatenate(
        [np.asarray(predict(inputs.plain(np.arange(i, min(i + 128, k))))) for i in range(0, k, 128)]
    )
    check_gap(model, trainer.batchnorm, trainer.history.epochs[-1]["loss"], logits, y[:k])
