"""Freeze policies: which layer groups train, when, and at what learning rate.

Pure Python. A policy sees the backbone's ordered layer groups (input to output)
and the epoch, and returns a plan: group name -> learning-rate multiple, where 0
means frozen (no gradient, no update, no optimizer state, BatchNorm in inference
mode). The head always trains at multiple 1. Adapters only apply plans.

Every policy takes ``lr_decay`` (layer-wise learning-rate decay, fastai's
discriminative learning rates): the topmost trainable group trains at
``lr * lr_decay``, the next one down at ``lr * lr_decay**2``, and so on.

Example::

    tk.fit(model, train, freeze=tk.freeze.GradualUnfreeze(every=2, lr_decay=0.7))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from . import validate
from .errors import ConfigError

__all__ = [
    "FreezePolicy",
    "FeatureExtraction",
    "FullFineTune",
    "TrainLast",
    "UnfreezeAt",
    "GradualUnfreeze",
    "LoRA",
    "from_name",
]


@dataclass(frozen=True)
class FreezePolicy:
    """Base class: subclasses say how many groups, counted from the output end,
    train in a given (0-based) epoch."""

    lr_decay: float = field(default=1.0, kw_only=True)

    def __post_init__(self) -> None:
        name = type(self).__name__
        decay = validate.number(
            f"{name}(lr_decay)", self.lr_decay, 0.0, 1.0, exclusive_minimum=True
        )
        object.__setattr__(self, "lr_decay", decay)

    def trainable(self, num_groups: int, epoch: int) -> int:
        raise NotImplementedError

    def plan(self, groups: Sequence[str], epoch: int) -> dict[str, float]:
        """Learning-rate multiple per group for ``epoch`` (0 = frozen)."""
        n = len(groups)
        k = max(0, min(n, self.trainable(n, epoch)))
        plan = {}
        for i, g in enumerate(groups):
            depth = n - i  # 1 for the topmost group
            plan[g] = self.lr_decay**depth if depth <= k else 0.0
        return plan

    def frozen_throughout(self, groups: Sequence[str], epochs: int) -> bool:
        """True when no backbone group trains in any epoch: features can be cached."""
        return all(not any(self.plan(groups, e).values()) for e in range(max(1, epochs)))

    #: parameter-efficient modules the policy inserts into the backbone (see ``LoRA``);
    #: None for most
    peft: ClassVar[dict | None] = None


@dataclass(frozen=True)
class FeatureExtraction(FreezePolicy):
    """The backbone stays frozen; only the head trains (a linear probe with a linear head)."""

    def trainable(self, num_groups: int, epoch: int) -> int:
        return 0


@dataclass(frozen=True)
class FullFineTune(FreezePolicy):
    """Everything trains from the first epoch."""

    def trainable(self, num_groups: int, epoch: int) -> int:
        return num_groups


@dataclass(frozen=True)
class TrainLast(FreezePolicy):
    """The last ``n`` layer groups (and the head) train; the first ones stay frozen."""

    n: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        validate.integer("TrainLast(n)", self.n, 0)

    def trainable(self, num_groups: int, epoch: int) -> int:
        return self.n


@dataclass(frozen=True)
class UnfreezeAt(FreezePolicy):
    """Head only until ``epoch``, then the last ``n`` groups (all when ``n`` is None)
    train too: Lightning Flash's ``freeze_unfreeze`` / ``unfreeze_milestones``."""

    epoch: int = 1
    n: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        validate.integer("UnfreezeAt(epoch)", self.epoch, 0)
        if self.n is not None:
            validate.integer("UnfreezeAt(n)", self.n, 0)

    def trainable(self, num_groups: int, epoch: int) -> int:
        if epoch < self.epoch:
            return 0
        return num_groups if self.n is None else self.n


@dataclass(frozen=True)
class GradualUnfreeze(FreezePolicy):
    """ULMFiT's gradual unfreezing: the head alone first, then one more group from the
    top every ``every`` epochs, until all train."""

    every: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        validate.integer("GradualUnfreeze(every)", self.every, 1)

    def trainable(self, num_groups: int, epoch: int) -> int:
        return epoch // self.every


@dataclass(frozen=True)
class LoRA(FreezePolicy):
    """Parameter-efficient fine-tuning: the backbone stays frozen and low-rank adapters
    (LoRA, through the ``peft`` library) train with the head. ``target`` names the
    modules to adapt (a name matches a module whose name ends with it); by default, the
    backbone's own choice (``BackboneSpec.lora_target``): the attention query and value
    projections of a transformer, the convolutions of ``cnn`` and ``resnet18``, the 1x1
    convolutions of ``efficientnet_lite0``, the layers of ``mlp``. ``r`` is the rank and
    ``alpha`` the scaling. The adapters and the head are saved with the model.

    Example::

        tk.fit(model, train, freeze=tk.freeze.LoRA(r=8, alpha=16), epochs=5, lr=1e-3)
    """

    r: int = 8
    alpha: float = 16.0
    target: tuple[str, ...] | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        validate.integer("LoRA(r)", self.r, 1, 4096)
        validate.number("LoRA(alpha)", self.alpha, 0.0, exclusive_minimum=True)
        if validate.number("LoRA(dropout)", self.dropout, 0.0) >= 1:
            raise ConfigError(f"LoRA(dropout) must be in [0, 1), got {self.dropout}")
        if self.target is None:
            return
        if isinstance(self.target, str):
            object.__setattr__(self, "target", (self.target,))
        object.__setattr__(self, "target", tuple(self.target))
        if not self.target or not all(isinstance(t, str) and t for t in self.target):
            raise ConfigError(
                f"LoRA(target) must name modules (non-empty strings), got {self.target!r}"
            )

    def trainable(self, num_groups: int, epoch: int) -> int:
        return 0

    @property
    def peft(self) -> dict:  # checked against the framework by ``check_peft``
        return {
            "kind": "lora",
            "r": self.r,
            "alpha": self.alpha,
            "target": None if self.target is None else list(self.target),
            "dropout": self.dropout,
        }

    def plan(self, groups: Sequence[str], epoch: int) -> dict[str, float]:
        return {**super().plan(groups, epoch), "peft": 1.0}

    def frozen_throughout(self, groups: Sequence[str], epochs: int) -> bool:
        return False  # the adapters change the backbone's output


_NAMES = {
    "feature_extraction": FeatureExtraction,
    "features": FeatureExtraction,
    "full": FullFineTune,
    "full_fine_tune": FullFineTune,
    "train_last": TrainLast,
    "unfreeze_at": UnfreezeAt,
    "gradual": GradualUnfreeze,
    "gradual_unfreeze": GradualUnfreeze,
    "lora": LoRA,
}


def from_name(name: str, **options: float) -> FreezePolicy:
    """A policy from its CLI/TOML name (``"gradual"``, ``"train_last"``, ...)."""
    key = name.lower().replace("-", "_")
    if key not in _NAMES:
        raise ConfigError(
            f"unknown freeze policy {name!r}; choose one of {', '.join(sorted(_NAMES))}"
        )
    import dataclasses

    cls = _NAMES[key]
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"freeze policy {name!r} has no option {', '.join(map(repr, unknown))}; its options "
            f"are {', '.join(known)}"
        )
    return cls(**options)


def check_peft(framework: Any, kind: str) -> None:
    """Refuse parameter-efficient modules a framework does not insert, naming those that
    do, before any work."""
    if kind in framework.peft_kinds:
        return
    from .plugins import registry
    from .scaling import offering

    others = list(registry().frameworks.values())
    raise ConfigError(
        f"the {framework.name} framework has no {kind!r} modules (tk.freeze.LoRA)"
        + offering(kind, "peft_kinds", others)
    )
