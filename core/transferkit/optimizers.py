"""The optimizers every adapter implements with the same semantics."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass(frozen=True)
class OptimizerSpec:
    """Optimizer options every adapter implements with the same semantics.

    ``adam`` applies ``weight_decay`` as an L2 term added to the gradient (PyTorch's
    Adam), ``adamw`` decoupled (AdamW), ``sgd`` is SGD with heavy-ball momentum.
    """

    name: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.name!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
