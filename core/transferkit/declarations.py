"""What a framework declares for the benchmark: its native baseline loops and its
per-process variants (re-exported by :mod:`transferkit.framework`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Baseline:
    """A native loop that ``transferkit bench`` times the engine step against: what a user
    of the framework writes for the same model, weights and batches. Declared by a
    framework (:attr:`Framework.baselines`); the factory is imported in the case process.

    ``factory``: ``"module:attr"`` of a callable ``(model, x, y, lr, twin) -> runner``.
    ``model`` is the built :class:`~transferkit.Model` (use ``model.native`` and the
    public API: copy its weights before either side trains), ``x`` the task's training
    inputs as ``model.prepare`` returns them, ``y`` their labels, ``lr`` Adam's learning
    rate, and ``twin()`` builds another model with the same weights (for a loop that
    needs a model of its own). The runner has ``description`` (one line for the report),
    ``steps_per_round`` (batches per call, usually 1) and ``run(batches)``: one training
    step per index array in ``batches``, waiting for the last; it returns ``None`` (the
    wall time is measured) or its own steady-state ms per step.

    ``isolated``: run in a process of its own (a compiler that may hang or crash).
    ``default``: run when a suite does not name this framework's baselines.
    """

    name: str
    factory: str
    isolated: bool = False
    default: bool = True


@dataclass(frozen=True)
class Variant:
    """One way of running a framework that is fixed per process (Keras's backend, say),
    benchmarked as ``framework[variant]``: the modules it needs besides the framework's
    own ``requires``, and the environment variables that select it in a fresh process."""

    name: str
    requires: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
