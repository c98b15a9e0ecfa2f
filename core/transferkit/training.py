"""The training loop, written once for every framework.

The adapter's :class:`~transferkit.framework.Engine` supplies compiled per-batch
steps; everything else lives here: epochs, shuffling, learning-rate schedule, freeze
plans, feature caching, validation, metrics, callbacks, early stopping, progress,
checkpoints and exact resume.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import batchnorm as bn
from . import metrics, probe, scaling, validate
from . import weights as wio
from .batches import Inputs
from .callbacks import (
    Callback,
    Checkpoint,
    EarlyStopping,
    History,
    ProgressLogger,
    check_callbacks,
    overrides,
)
from .checkpoint import TrainState
from .data import Dataset, as_dataset, check_labels
from .errors import ConfigError, LabelError, ModelDirError, TrainingError, warn
from .freeze import FeatureExtraction, FreezePolicy, FullFineTune
from .model import Model
from .optimizers import OPTIMIZERS, OptimizerSpec
from .regularizers import Penalty, Regularizer
from .schedules import SCHEDULES, batch_bounds, learning_rate

DEFAULT_EPOCHS, DEFAULT_LR = 10, 1e-3

__all__ = ["Callback", "EarlyStopping", "History", "TrainState", "Trainer", "fit"]


class Trainer:
    """Fits a model under a freeze policy. See :func:`fit` for the options."""

    def __init__(
        self,
        model: Model,
        freeze: FreezePolicy | None = None,
        epochs: int | None = None,
        lr: float | None = None,
        batch_size: int = 32,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        schedule: str = "cosine",
        warmup_steps: int = 0,
        seed: int = 0,
        cache_features: bool | str = "auto",
        cache_dir: str | Path | None = None,
        augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        early_stopping: EarlyStopping | int | None = None,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: str | Path | None = None,
        verbose: int | str = "auto",
        regularizer: Regularizer | None = None,
        batchnorm: str | None = None,
        precision: str | None = None,
        strategy: str | None = None,
        timeout: float | None = None,
    ):
        if not isinstance(model, Model):
            raise ConfigError(
                f"fit() needs a model from tk.build or tk.load, got {type(model).__name__}"
            )
        # Neither given and a frozen backbone: the head is solved to its optimum (probe.py)
        self.solve_head = epochs is None and lr is None
        epochs = validate.integer("epochs", DEFAULT_EPOCHS if epochs is None else epochs, 1)
        batch_size = validate.integer("batch_size", batch_size, 1, 1 << 20)
        lr = validate.number("lr", DEFAULT_LR if lr is None else lr, 0.0, exclusive_minimum=True)
        weight_decay = validate.number("weight_decay", weight_decay, 0.0)
        momentum = validate.number("momentum", momentum, 0.0, 1.0)
        warmup_steps = validate.integer("warmup_steps", warmup_steps, 0)
        seed = validate.integer("seed", seed, 0, 2**32 - 1)
        validate.choice("optimizer", optimizer, OPTIMIZERS)
        if not callable(schedule):
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
            early_stopping = validate.integer("early_stopping (patience)", early_stopping, 0)
        callbacks = check_callbacks(callbacks)
        if regularizer is not None and not isinstance(regularizer, Regularizer):
            raise ConfigError(
                "regularizer= expects tk.regularizers.L2SP(...) or tk.regularizers.L2(...), "
                f"got {regularizer!r:.60}"
            )
        self.regularizer = regularizer
        self.batchnorm = bn.check(bn.DEFAULT if batchnorm is None else batchnorm)
        self.scaling = scaling.check(model._framework, precision, strategy, timeout)
        self.model = model
        self.policy = freeze if freeze is not None else FullFineTune()
        if not isinstance(self.policy, FreezePolicy):
            raise ConfigError(f"freeze= expects a tk.freeze policy, got {self.policy!r}")
        self.epochs, self.lr, self.batch_size = epochs, lr, batch_size
        self.optimizer = OptimizerSpec(optimizer, weight_decay, momentum)
        self.schedule, self.warmup_steps, self.seed = schedule, warmup_steps, seed
        self.cache_features, self.augment, self.cache_dir = cache_features, augment, cache_dir
        if isinstance(early_stopping, int) and not isinstance(early_stopping, bool):
            early_stopping = EarlyStopping(patience=early_stopping)
        self.user_callbacks = callbacks + ([early_stopping] if early_stopping else [])
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.checkpoint = Checkpoint(self.checkpoint_dir) if self.checkpoint_dir else None
        self.verbose = verbose
        self.steps_per_epoch = 0
        self.penalty: Penalty | None = None
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
            dict(self.penalty.anchors) if self.penalty is not None else {},
        )

    def _penalty(self, resumed: TrainState | None) -> Penalty | None:
        """The regulariser's penalty, anchored where this run started (or, resumed, where
        the interrupted run started)."""
        reg = self.regularizer
        if reg is None:
            return None
        frozen = self.policy.frozen_throughout(self.groups, self.epochs)
        if reg.backbone_strength and frozen and self.policy.peft is None:
            warn(
                f"{reg!r}: the backbone stays frozen for the whole run ({self.policy!r}), "
                "so only the head's term applies; train backbone layers for the rest"
            )
        weights = self.model.get_weights()
        penalty = reg.penalty(weights, self.model.spec.ignore_keys)
        if resumed is not None and resumed.anchors:
            penalty = Penalty(penalty.coefficients, resumed.anchors)
        return penalty

    def _inputs(self, data: Any, what: str) -> tuple[Any, np.ndarray]:
        data = as_dataset(data, what)
        self.model.check(data.x, f"{what}.x")
        names = self._check_classes(data.classes) if what == "train" else None
        y = check_labels(
            data.y, len(data), self.model.head.task, self.model.head.outputs, f"{what}.y"
        )
        if names is not None:
            self.model.classes = names
        return data.x, y

    def _check_classes(self, names: list[str] | None) -> list[str] | None:
        """The training data's class names (a Dataset's, an image folder's, string labels'
        in sorted order) become the model's, so predictions, saves and exports name them;
        names that contradict the head or the model's own are an error."""
        model = self.model
        if names is None or model.head.task != "classification":
            return None
        if len(names) < model.head.outputs:
            return None  # the data holds some of the head's classes: their names say nothing
        if len(names) > model.head.outputs:
            raise LabelError(
                f"the training data has {len(names)} classes ({', '.join(names[:5])}"
                f"{' ...' if len(names) > 5 else ''}) but the head has {model.head.outputs} "
                f"outputs; build the model with tk.Classifier({len(names)})"
            )
        if model.classes is not None and list(model.classes) != list(names):
            raise LabelError(
                f"the training data's classes {names[:5]} are not the model's "
                f"{list(model.classes)[:5]}; relabel the data or build a new model"
            )
        return list(names)

    def fit(
        self, train: Dataset, val: Dataset | None = None, resume_from: str | Path | None = None
    ) -> History:
        model, engine = self.model, self.model.engine
        # Every check runs before the framework does any work.
        x, y = self._inputs(train, "train")
        xv, yv = self._inputs(val, "val") if val is not None else (None, None)
        cached = self.uses_feature_cache()
        if self.batchnorm == "recalibrate" and bn.layers(
            model, bn.trained_groups(self, self.epochs)
        ):  # only a backbone with BatchNorm layers that train needs 2 examples
            bn.check_recalibration(len(y))
        st = TrainState.load(resume_from) if resume_from is not None else None
        if self.policy.peft is not None:
            model.add_peft(self.policy.peft)
        if st is not None:  # a checkpoint of another model is named before any step
            st.weights = wio.match(
                st.weights,
                engine.param_shapes(),
                f"this model ({model.spec.name!r}) from the checkpoint {str(resume_from)!r}",
            )
            if st.epoch > self.epochs:
                raise ConfigError(
                    f"resume_from={str(resume_from)!r} has completed {st.epoch} epochs, more "
                    f"than epochs={self.epochs}; ask for at least {st.epoch}"
                )
            engine.set_weights(st.weights)
            try:
                self.rng.bit_generator.state = st.rng
            except (TypeError, ValueError, KeyError, OverflowError) as e:
                raise ModelDirError(
                    f"training checkpoint {str(resume_from)!r}: its random state is not a "
                    f"numpy generator's ({type(e).__name__}: {e}); resume from another "
                    "checkpoint or start again"
                ) from None
            self.epoch, self.step, self.history = st.epoch, st.step, History(st.history)
        self.penalty = self._penalty(st)  # anchored before any step
        engine.set_scaling(self.scaling)  # batch_size stays the global batch
        engine.start_training(self.optimizer, self.seed)
        engine.set_penalty(self.penalty)
        engine.batchnorm = "frozen" if self.batchnorm == "frozen" else "train"
        model.batchnorm = self.batchnorm

        # cached: the backbone never trains; one forward pass, then the head on features
        inputs = Inputs(model, x, cached, self.augment, self.cache_dir)
        val_inputs = Inputs(model, xv, cached, None, self.cache_dir) if xv is not None else None
        predict_val = engine.head_predict if cached else engine.predict

        n = len(y)
        bounds = batch_bounds(n, self.batch_size)
        self.steps_per_epoch = steps_per_epoch = len(bounds)
        smallest = min(b - a for a, b in bounds)
        if smallest < engine.world:
            raise ConfigError(
                f"a batch of {smallest} examples cannot be split over {engine.world} "
                f"processes ({n} examples, batch_size={self.batch_size}); choose another "
                "batch_size or fewer processes"
            )
        total_steps = steps_per_epoch * self.epochs
        if not (cached and self.solve_head):
            self._warn_ineffective(cached, total_steps)
        # fit's own services first, so that user callbacks see this epoch in the history
        verbose = self.verbose if engine.rank == 0 else 0  # one progress display
        callbacks: list[Callback] = [self.history, ProgressLogger(verbose)]
        callbacks += self.user_callbacks + ([self.checkpoint] if self.checkpoint else [])
        per_batch = [c for c in callbacks if overrides(c, "on_batch_begin")]
        after_batch = [c for c in callbacks if overrides(c, "on_batch_end")]
        if verbose in (0, False):
            after_batch = [c for c in after_batch if not isinstance(c, ProgressLogger)]
        solving = cached and self.solve_head and st is None and self.policy.peft is None
        if solving:
            self.epochs = 1  # the solve is the run's one epoch
        for cb in callbacks:
            cb.on_train_begin(self)
        if solving:
            return probe.fit_head(self, inputs.x, y, val_inputs, yv, callbacks)
        # recalibrated BatchNorm statistics before anything looks at the model (below)
        looks = val_inputs is not None or len(callbacks) > 2
        recalibrated = self.epoch if st is not None else -1
        plan: dict[str, float] | None = None
        self.stop = False
        try:
            while self.epoch < self.epochs and not self.stop:
                new_plan = self.policy.plan(self.groups, self.epoch)
                if new_plan != plan:
                    plan = new_plan
                    engine.set_plan(plan, head_only=cached)
                    if st is not None:  # the optimizer state belongs to this first plan
                        _restore(engine, st.optimizer, resume_from)
                        st = None
                for cb in callbacks:
                    cb.on_epoch_begin(self, self.epoch)
                t0 = time.perf_counter()
                order = self.rng.permutation(n)
                losses, regs = [], []
                for i in range(steps_per_epoch):
                    for cb in per_batch:
                        cb.on_batch_begin(self, i)
                    idx = order[slice(*bounds[i])]
                    xb = inputs.train(idx, self.rng)
                    lr = learning_rate(
                        self.step, total_steps, self.lr, self.schedule, self.warmup_steps
                    )
                    out = engine.train_step(xb, y[idx], lr)
                    batch_logs = {"lr": lr}
                    if self.penalty is not None:
                        out, batch_logs["reg_loss"] = out
                        regs.append(batch_logs["reg_loss"])
                    losses.append(out)
                    batch_logs["loss"] = out
                    self.step += 1
                    for cb in after_batch:
                        cb.on_batch_end(self, i, batch_logs)
                    if self.stop:  # a callback ended the run after this batch
                        break
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
                if regs:
                    logs["reg_loss"] = float(np.mean([float(v) for v in regs]))
                if looks or self.epoch + 1 == self.epochs:
                    recalibrated = bn.after_epochs(self, inputs, bounds, self.epoch + 1)
                if val_inputs is not None:
                    logs.update(self._validate(val_inputs, yv, predict_val))
                logs["time"] = time.perf_counter() - t0
                self.epoch += 1
                for cb in callbacks:
                    cb.on_epoch_end(self, self.epoch - 1, logs)
            if recalibrated != self.epoch:
                bn.after_epochs(self, inputs, bounds, self.epoch)
        finally:
            engine.end_training()
        if engine.world > 1:  # not after a failure: the others may never arrive
            engine.barrier()
        bn.check_fit(self, inputs, y)
        for cb in callbacks:
            cb.on_train_end(self)
        return self.history

    def _warn_ineffective(self, cached: bool, total_steps: int) -> None:
        """Settings that cannot take effect in this run are said once, not ignored."""
        policy, groups = self.policy, self.groups
        if self.warmup_steps >= total_steps:
            warn(
                f"warmup_steps={self.warmup_steps} is not shorter than the run "
                f"({total_steps} steps): the learning rate never reaches lr={self.lr}"
            )
        n = getattr(policy, "n", None)
        if isinstance(n, int) and n > len(groups):
            warn(f"{policy!r}: the backbone has {len(groups)} layer groups; all of them train")
        trains = not isinstance(policy, FeatureExtraction) and policy.peft is None
        if trains and cached:
            warn(
                f"{policy!r} trains no backbone group within epochs={self.epochs}: the "
                "backbone stays frozen for the whole run"
            )

    def _validate(self, inputs: Inputs, y: np.ndarray, predict: Any) -> dict:
        outs = np.concatenate([np.asarray(predict(b)) for b in inputs.chunks()])
        return {f"val_{k}": v for k, v in metrics.compute(self.model.head.task, outs, y).items()}


def fit(model: Model, train: Dataset, val: Dataset | None = None, **options: Any) -> History:
    """Fit ``model`` on ``train`` (validating on ``val`` after each epoch).

    Options: ``freeze`` (a ``tk.freeze`` policy; default FullFineTune), ``epochs`` (10),
    ``lr`` (1e-3), ``batch_size`` (32), ``optimizer`` ("adam" | "adamw" | "sgd"),
    ``weight_decay``, ``momentum`` (sgd), ``schedule`` ("cosine" | "constant"),
    ``warmup_steps``, ``seed`` (a run is repeatable), ``cache_features`` ("auto":
    compute frozen-backbone features once; on disk, under ``cache_dir``, for lazy data or
    when it is given), ``augment`` (``f(batch, rng) -> batch`` on raw images),
    ``early_stopping`` (patience or an ``EarlyStopping``), ``callbacks``,
    ``checkpoint_dir`` (state for an exact resume after every epoch), ``resume_from``,
    ``verbose`` (0, 1 bar, 2 lines, "auto"), ``lr="auto"`` (the learning-rate range test,
    ``tk.find_lr``, chooses it first; ``history.lr_finder`` holds the test), ``regularizer``
    (``tk.regularizers.L2SP(alpha, beta)`` or ``L2(beta)``; history then logs
    ``reg_loss`` beside the task ``loss``), ``batchnorm`` (``"recalibrate"``, the default,
    ``"frozen"`` or ``"train"``: how the BatchNorm layers of trained groups treat their
    running statistics; see ``transferkit.batchnorm``), ``precision`` (``"32"``,
    ``"bf16-mixed"``, ``"16-mixed"``), ``strategy`` (``None`` or ``"ddp"``, in processes
    started by the framework's launcher: ``transferkit fit --nproc N``) and ``timeout``
    (seconds a process waits for the others); see ``transferkit.scaling``.

    Example::

        history = tk.fit(model, train, val=test, freeze=tk.freeze.GradualUnfreeze(),
                         epochs=20, lr=1e-3, seed=0)
    """
    resume_from = options.pop("resume_from", None)
    finder = None
    if isinstance(options.get("lr"), str) and options["lr"] == "auto":
        from .lr_finder import auto_lr

        options["lr"], finder = auto_lr(model, train, options)
    try:
        trainer = Trainer(model, **options)
    except TypeError as e:
        import inspect

        known = [p for p in inspect.signature(Trainer).parameters if p != "model"]
        raise ConfigError(f"fit(): {e}; the options are {', '.join(known)}, resume_from") from None
    history = trainer.fit(train, val, resume_from=resume_from)
    history.lr_finder = finder
    return history


def _restore(engine: Any, state: dict[str, np.ndarray], path: Any) -> None:
    """Put a checkpoint's optimizer and random state into the engine. What the engine
    cannot take (a slot of another shape, a key of another model, a random state of
    another length) comes from the file, so it is named as the checkpoint's fault."""
    try:
        engine.load_training_state(state)
    except Exception as e:  # the engine's check or the framework's own error, on a file
        raise ModelDirError(
            f"training checkpoint {str(path)!r}: optimizer.safetensors does not fit this "
            f"model's optimizer ({type(e).__name__}: {str(e)[:300]}); resume from another "
            "checkpoint or start again"
        ) from None
