"""The training loop, written once for every framework.

The adapter's :class:`~transferkit.framework.Engine` supplies compiled per-batch
steps; everything else lives here: epochs, shuffling, learning-rate schedule, freeze
plans, feature caching, validation, metrics, callbacks, early stopping, progress,
checkpoints and exact resume.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import atomic, metrics, validate
from . import weights as wio
from .data import Dataset, as_dataset, check_labels
from .errors import ConfigError, ModelDirError, TrainingError, TransferkitError, WeightsError
from .framework import OPTIMIZERS, OptimizerSpec
from .freeze import FreezePolicy, FullFineTune
from .model import Model
from .progress import Progress

SCHEDULES = ("constant", "cosine")
STATE_FILE = "state.json"


def learning_rate(step: int, total: int, lr: float, schedule: str, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then constant or cosine decay to 0."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    progress = (step - warmup) / max(1, total - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class History:
    """One dict of figures per epoch; ``history.history["val_accuracy"]`` as in Keras."""

    def __init__(self, epochs: Sequence[dict[str, Any]] = ()):
        self.epochs: list[dict[str, Any]] = [dict(e) for e in epochs]

    def append(self, logs: dict[str, Any]) -> None:
        self.epochs.append(dict(logs))

    @property
    def history(self) -> dict[str, list[Any]]:
        keys = dict.fromkeys(k for e in self.epochs for k in e)
        return {k: [e.get(k) for e in self.epochs] for k in keys}

    def __len__(self) -> int:
        return len(self.epochs)

    def __getitem__(self, key: str) -> list[Any]:
        return self.history[key]

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.epochs, indent=2))

    def to_csv(self, path: str | Path) -> None:
        keys = list(self.history)
        lines = [",".join(keys)] + [
            ",".join("" if e.get(k) is None else str(e.get(k)) for k in keys) for e in self.epochs
        ]
        Path(path).write_text("\n".join(lines) + "\n")


class Callback:
    """Hooks into the loop. ``on_epoch_end`` may set ``trainer.stop = True``."""

    def on_train_begin(self, trainer: Trainer) -> None: ...

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...


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
                self.best_weights = trainer.model.engine.get_weights()
        else:
            self.wait += 1
            if self.wait >= self.patience:
                trainer.stop = True

    def on_train_end(self, trainer: Trainer) -> None:
        if self.restore_best and self.best_weights is not None:
            trainer.model.engine.set_weights(self.best_weights)


@dataclass
class TrainState:
    """Everything an exact resume needs, in one place."""

    epoch: int  # epochs completed
    step: int
    weights: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    rng: dict[str, Any]  # numpy generator state (shuffling, augmentation)
    history: list[dict[str, Any]] = field(default_factory=list)

    @staticmethod
    def check_target(path: Path) -> None:
        """Refuse to overwrite a directory that is not a training checkpoint."""
        if path.exists() and (
            not path.is_dir() or (any(path.iterdir()) and not (path / "state.json").is_file())
        ):
            raise ModelDirError(
                f"checkpoint_dir {str(path)!r} exists and is not a training checkpoint "
                "(a saved model, say); choose another directory"
            )

    def save(self, path: str | Path) -> None:
        """Write to a directory atomically (the previous checkpoint survives a crash at
        any instant; see :mod:`transferkit.atomic`)."""

        def fill(tmp: Path) -> None:
            wio.save(self.weights, tmp / "weights.safetensors")
            wio.save(
                self.optimizer or {"_empty": np.zeros(0, np.float32)}, tmp / "optimizer.safetensors"
            )
            meta = {
                "epoch": self.epoch,
                "step": self.step,
                "rng": self.rng,
                "history": self.history,
            }
            (tmp / STATE_FILE).write_text(json.dumps(meta, indent=2))  # the marker: last

        atomic.write_dir(Path(path), fill, STATE_FILE, self.check_target, "training checkpoint")

    @classmethod
    def load(cls, path: str | Path) -> TrainState:
        path = Path(path)
        atomic.recover(path, STATE_FILE)
        if not (path / STATE_FILE).is_file():
            raise ModelDirError(f"{str(path)!r} holds no training checkpoint ({STATE_FILE})")
        try:
            meta = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError(f"expected a JSON object, found {type(meta).__name__}")
            epoch, step = meta["epoch"], meta["step"]
            if not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (epoch, step)
            ):
                raise ValueError(f"epoch {epoch!r} and step {step!r} must be counts")
            if not isinstance(meta["rng"], dict) or not isinstance(meta["history"], list):
                raise ValueError("rng must be an object and history a list")
        except (ValueError, KeyError, UnicodeDecodeError) as e:
            raise ModelDirError(
                f"training checkpoint {str(path / STATE_FILE)!r} is corrupt ({e}); resume from "
                "another checkpoint or start again"
            ) from None
        try:
            opt = wio.read(path / "optimizer.safetensors")
            weights = wio.read(path / "weights.safetensors")
        except WeightsError as e:
            raise ModelDirError(f"training checkpoint {str(path)!r}: {e}") from None
        opt.pop("_empty", None)
        return cls(epoch, step, weights, opt, meta["rng"], meta["history"])


class Trainer:
    """Fits a model under a freeze policy. See :func:`fit` for the options."""

    def __init__(
        self,
        model: Model,
        freeze: FreezePolicy | None = None,
        epochs: int = 10,
        lr: float = 1e-3,
        batch_size: int = 32,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        schedule: str = "cosine",
        warmup_steps: int = 0,
        seed: int = 0,
        cache_features: bool | str = "auto",
        augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        early_stopping: EarlyStopping | int | None = None,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: str | Path | None = None,
        verbose: int | str = "auto",
    ):
        if not isinstance(model, Model):
            raise ConfigError(
                f"fit() needs a model from tk.build or tk.load, got {type(model).__name__}"
            )
        epochs = validate.integer("epochs", epochs, 1, 1_000_000)
        batch_size = validate.integer("batch_size", batch_size, 1, 1 << 20)
        lr = validate.number("lr", lr, 0.0, exclusive_minimum=True)
        weight_decay = validate.number("weight_decay", weight_decay, 0.0)
        momentum = validate.number("momentum", momentum, 0.0, 1.0)
        warmup_steps = validate.integer("warmup_steps", warmup_steps, 0)
        seed = validate.integer("seed", seed, 0, 2**32 - 1)
        validate.choice("optimizer", optimizer, OPTIMIZERS)
        validate.choice("schedule", schedule, SCHEDULES)
        if cache_features not in (True, False, "auto"):
            raise ConfigError(
                f"cache_features must be True, False or 'auto', got {cache_features!r}"
            )
        if augment is not None and not callable(augment):
            raise ConfigError(
                f"augment must be a function f(batch, rng) -> batch, got {type(augment).__name__}"
            )
        if verbose not in (0, 1, 2, "auto", False, True):
            raise ConfigError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}")
        if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
            early_stopping = validate.integer("early_stopping (patience)", early_stopping, 1)
        if isinstance(callbacks, Callback) or not all(isinstance(c, Callback) for c in callbacks):
            raise ConfigError("callbacks must be a list of tk.Callback objects")
        self.model = model
        self.policy = freeze if freeze is not None else FullFineTune()
        if not isinstance(self.policy, FreezePolicy):
            raise ConfigError(f"freeze= expects a tk.freeze policy, got {self.policy!r}")
        self.epochs, self.lr, self.batch_size = epochs, lr, batch_size
        self.optimizer = OptimizerSpec(optimizer, weight_decay, momentum)
        self.schedule, self.warmup_steps, self.seed = schedule, warmup_steps, seed
        self.cache_features, self.augment = cache_features, augment
        if isinstance(early_stopping, int) and not isinstance(early_stopping, bool):
            early_stopping = EarlyStopping(patience=early_stopping)
        self.callbacks = list(callbacks) + ([early_stopping] if early_stopping else [])
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        if self.checkpoint_dir is not None:
            TrainState.check_target(self.checkpoint_dir)
        self.verbose = verbose
        self.stop = False
        self.history = History()
        self.epoch = 0
        self.step = 0
        self.rng = np.random.default_rng(seed)

    @property
    def groups(self) -> tuple[str, ...]:
        return self.model.spec.group_names

    def uses_feature_cache(self) -> bool:
        if self.cache_features is False or self.augment is not None:
            return False
        frozen = self.policy.frozen_throughout(self.groups, self.epochs)
        if self.cache_features is True and not frozen:
            raise ConfigError(
                "cache_features=True needs a backbone frozen for the whole run "
                f"(FeatureExtraction); {self.policy!r} trains backbone layers"
            )
        return frozen

    def state(self) -> TrainState:
        engine = self.model.engine
        return TrainState(
            self.epoch,
            self.step,
            engine.get_weights(),
            engine.training_state(),
            self.rng.bit_generator.state,
            self.history.epochs,
        )

    def _inputs(self, data: Any, what: str) -> tuple[Any, np.ndarray]:
        data = as_dataset(data, what)
        self.model.check(data.x, f"{what}.x")
        y = check_labels(
            data.y, len(data), self.model.head.task, self.model.head.outputs, f"{what}.y"
        )
        return data.x, y

    def fit(
        self, train: Dataset, val: Dataset | None = None, resume_from: str | Path | None = None
    ) -> History:
        model, engine = self.model, self.model.engine
        # Every check runs before the framework does any work.
        x, y = self._inputs(train, "train")
        xv, yv = self._inputs(val, "val") if val is not None else (None, None)
        cached = self.uses_feature_cache()
        st = TrainState.load(resume_from) if resume_from is not None else None
        if self.policy.adapter is not None:
            model.add_adapter(self.policy.adapter)
        if st is not None:  # a checkpoint of another model is named before any step
            st.weights = wio.match(
                st.weights, engine.param_shapes(), f"this model ({model.spec.name!r})"
            )
            if st.epoch > self.epochs:
                raise ConfigError(
                    f"resume_from={str(resume_from)!r} has completed {st.epoch} epochs, more "
                    f"than epochs={self.epochs}; ask for at least {st.epoch}"
                )
        engine.start_training(self.optimizer, self.seed)
        if st is not None:
            engine.set_weights(st.weights)
            engine.load_training_state(st.optimizer)
            self.rng.bit_generator.state = st.rng
            self.epoch, self.step, self.history = st.epoch, st.step, History(st.history)

        if cached:
            # The backbone never trains: one forward pass, then train the head on features.
            inputs = model.features(x)
            val_inputs = model.features(xv) if xv is not None else None
            predict_val = engine.head_predict
        else:
            inputs = self._prepare_once(x)
            val_inputs = self._prepare_once(xv) if xv is not None else None
            predict_val = engine.predict

        n = len(y)
        steps_per_epoch = math.ceil(n / self.batch_size)
        total_steps = steps_per_epoch * self.epochs
        progress = Progress(self.epochs, steps_per_epoch, self.verbose)
        for cb in self.callbacks:
            cb.on_train_begin(self)
        plan: dict[str, float] | None = None
        self.stop = False
        try:
            while self.epoch < self.epochs and not self.stop:
                new_plan = self.policy.plan(self.groups, self.epoch)
                if new_plan != plan:
                    plan = new_plan
                    engine.set_plan(plan, head_only=cached)
                progress.epoch_start(self.epoch)
                t0 = time.perf_counter()
                order = self.rng.permutation(n)
                losses = []
                for i in range(steps_per_epoch):
                    idx = order[i * self.batch_size : (i + 1) * self.batch_size]
                    xb = self._batch(inputs, idx, cached)
                    lr = learning_rate(
                        self.step, total_steps, self.lr, self.schedule, self.warmup_steps
                    )
                    losses.append(engine.train_step(xb, y[idx], lr))
                    self.step += 1
                    progress.step(i)
                loss = float(np.mean([float(v) for v in losses]))
                if not math.isfinite(loss):
                    raise TrainingError(
                        f"the training loss became {loss} in epoch {self.epoch + 1}; lower the "
                        f"learning rate (lr={self.lr}) or check the inputs"
                    )
                logs: dict[str, Any] = {
                    "epoch": self.epoch + 1,
                    "loss": loss,
                    "lr": lr,
                    "trainable_groups": sum(1 for v in plan.values() if v),
                }
                if val_inputs is not None:
                    outs = np.concatenate(
                        [
                            np.asarray(predict_val(self._slice(val_inputs, i, cached)))
                            for i in range(0, len(yv), 128)
                        ]
                    )
                    logs.update(
                        {
                            f"val_{k}": v
                            for k, v in metrics.compute(model.head.task, outs, yv).items()
                        }
                    )
                logs["time"] = time.perf_counter() - t0
                self.epoch += 1
                self.history.append(logs)
                progress.epoch_end(logs)
                for cb in self.callbacks:
                    cb.on_epoch_end(self, self.epoch - 1, logs)
                if self.checkpoint_dir is not None:
                    self.state().save(self.checkpoint_dir)
        finally:
            engine.end_training()
        for cb in self.callbacks:
            cb.on_train_end(self)
        model.history = self.history.epochs
        return self.history

    def _prepare_once(self, x: Any) -> Any:
        if self.augment is not None or not isinstance(x, np.ndarray):
            return x  # prepared per batch
        shape = self.model.input_shape
        if len(x) * int(np.prod(shape)) * 4 > 512 * 2**20:
            return x
        return _Prepared(self.model.prepare(x))

    def _slice(self, inputs: Any, start: int, cached: bool) -> Any:
        if cached:
            return inputs[start : start + 128]
        if isinstance(inputs, _Prepared):
            return inputs.x[start : start + 128]
        return self.model.prepare(inputs[start : start + 128])

    def _batch(self, inputs: Any, idx: np.ndarray, cached: bool) -> Any:
        if cached:
            return inputs[idx]
        if isinstance(inputs, _Prepared):
            return inputs.x[idx]
        raw = inputs[idx] if isinstance(inputs, np.ndarray) else [inputs[i] for i in idx]
        if self.augment is not None:
            out = self.augment(raw, self.rng)
            self._check_augmented(raw, out)
            raw = out
        return self.model.prepare(raw)

    def _check_augmented(self, raw: Any, out: Any) -> None:
        """An augment function that returns the wrong thing is named here, not inside a
        framework's step."""
        name = getattr(self.augment, "__name__", "augment")
        if isinstance(raw, np.ndarray):
            ok = isinstance(out, np.ndarray) and len(out) == len(raw) and out.ndim == raw.ndim
            if not ok:
                got = f"{type(out).__name__} {getattr(out, 'shape', '')}".strip()
                raise ConfigError(
                    f"augment function {name!r} must return an array of the batch's "
                    f"{len(raw)} examples with shape like {raw.shape}; it returned {got}"
                )
        elif not isinstance(out, (list, tuple)) or len(out) != len(raw):
            raise ConfigError(
                f"augment function {name!r} must return a list of {len(raw)} inputs, like "
                f"its argument; it returned {type(out).__name__}"
            )
        try:
            self.model.check(out, f"the output of augment function {name!r}")
        except TransferkitError as e:
            raise ConfigError(str(e)) from None


@dataclass
class _Prepared:
    """Inputs already resized and normalised for the engine."""

    x: np.ndarray


def fit(model: Model, train: Dataset, val: Dataset | None = None, **options: Any) -> History:
    """Fit ``model`` on ``train`` (validating on ``val`` after each epoch).

    Options: ``freeze`` (a ``tk.freeze`` policy; default FullFineTune), ``epochs`` (10),
    ``lr`` (1e-3), ``batch_size`` (32), ``optimizer`` ("adam" | "adamw" | "sgd"),
    ``weight_decay``, ``momentum`` (sgd), ``schedule`` ("cosine" | "constant"),
    ``warmup_steps``, ``seed`` (a run is repeatable), ``cache_features`` ("auto":
    compute frozen-backbone features once), ``augment`` (``f(batch, rng) -> batch`` on
    raw images), ``early_stopping`` (patience or an ``EarlyStopping``), ``callbacks``,
    ``checkpoint_dir`` (state for an exact resume after every epoch), ``resume_from``,
    ``verbose`` (0, 1 bar, 2 lines, "auto").

    Example::

        history = tk.fit(model, train, val=test, freeze=tk.freeze.GradualUnfreeze(),
                         epochs=20, lr=1e-3, seed=0)
    """
    resume_from = options.pop("resume_from", None)
    try:
        trainer = Trainer(model, **options)
    except TypeError as e:
        import inspect

        known = [p for p in inspect.signature(Trainer).parameters if p != "model"]
        raise ConfigError(f"fit(): {e}; the options are {', '.join(known)}, resume_from") from None
    return trainer.fit(train, val, resume_from=resume_from)
