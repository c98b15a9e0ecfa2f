"""Scaling out and speeding up, on each framework's own machinery.

``tk.fit(..., precision=..., strategy=...)``:

- ``precision``: ``"32"`` (the default), ``"bf16-mixed"`` or ``"16-mixed"``: the steps
  compute in bfloat16 or float16 while the weights and the optimizer state stay float32
  (``torch.autocast``, a compute-dtype policy in Flax, Keras's dtype policies); float16
  scales the loss against underflow. Inference and saved weights are float32.
- ``strategy``: ``None`` (one process) or ``"ddp"``: multi-process data parallel under
  the framework's own launcher and collectives (``torchrun`` and
  ``DistributedDataParallel``; ``jax.distributed``; Keras's ``DataParallel``
  distribution on jax). Every process runs the same loop
  with the same seed and hands its engine the whole global batch; the engine computes on
  its shard (:func:`shard`) and reduces the gradients so that the update is the one a
  single process makes on the whole batch. Only rank 0 writes checkpoints, saved models
  and progress.

A framework declares what it offers (:attr:`Framework.precisions`,
:attr:`Framework.strategies`); core refuses the rest before any work, naming what would
work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .framework import Framework

PRECISIONS = ("32", "bf16-mixed", "16-mixed")
STRATEGIES = ("ddp",)
#: seconds a process waits in a collective for the others before the run fails
DEFAULT_TIMEOUT = 300.0


@dataclass(frozen=True)
class Scaling:
    """How one fit runs: compute precision, strategy, and the collectives' timeout."""

    precision: str = "32"
    strategy: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    @property
    def default(self) -> bool:
        return self.precision == "32" and self.strategy is None


def offering(wanted: str, attribute: str, frameworks: list[Framework]) -> str:
    """``"; a, b do"``: the frameworks that have ``wanted`` in their ``attribute``."""
    names = sorted(f.name for f in frameworks if wanted in getattr(f, attribute))
    return f"; {', '.join(names)} {'do' if len(names) > 1 else 'does'}" if names else ""


def _why_not(framework: Framework, strategy: str) -> str:
    return "".join(f" ({why})" for s, why in framework.strategy_notes if s == strategy)


def check(
    framework: Framework,
    precision: str | None,
    strategy: str | None,
    timeout: float | None = None,
) -> Scaling:
    """The fit's scaling, checked against what ``framework`` declares."""
    from .plugins import registry

    precision = "32" if precision is None else str(precision)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    others = [f for f in registry().frameworks.values() if f is not framework]
    if precision not in framework.precisions:
        raise ConfigError(
            f"the {framework.name} framework does not train in precision={precision!r}; it "
            f"offers {', '.join(framework.precisions)}" + offering(precision, "precisions", others)
        )
    if strategy is not None:
        if strategy not in STRATEGIES:
            raise ConfigError(
                f"strategy must be None or one of {', '.join(STRATEGIES)}; got {strategy!r}"
            )
        if strategy not in framework.strategies:
            raise ConfigError(
                f"the {framework.name} framework has no {strategy!r} strategy (one process "
                "only: leave strategy=None)"
                + _why_not(framework, strategy)
                + offering(strategy, "strategies", others)
            )
    if timeout is None:
        timeout = DEFAULT_TIMEOUT
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return Scaling(precision, strategy, float(timeout))


def shard(n: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous part of a global batch of ``n`` among ``world``
    processes; sizes differ by at most one, earlier ranks taking the extra rows."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def check_nproc(nproc: int, framework: Framework) -> None:
    """``--nproc`` before anything launches: at least 1, at most the cores here, and
    above 1 only for a framework that has a multi-process strategy."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"--nproc must be a whole number >= 1, got {nproc!r}")
    cores = os.cpu_count() or 1
    if nproc > cores:
        raise ConfigError(
            f"--nproc {nproc} is more processes than this machine's {cores} cores; "
            f"use --nproc {cores} or fewer"
        )
    if nproc > 1 and "ddp" not in framework.strategies:
        from .plugins import registry

        others = [f for f in registry().frameworks.values() if f is not framework]
        raise ConfigError(
            f"the {framework.name} framework trains in one process only; drop --nproc"
            + _why_not(framework, "ddp")
            + offering("ddp", "strategies", others)
        )
