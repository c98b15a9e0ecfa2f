"""Precision and multi-process data parallel on Keras's own machinery.

Precision: its dtype policies (``mixed_bfloat16``, ``mixed_float16``: float32 variables,
reduced compute; ``Model.compile`` wraps the optimizer in a ``LossScaleOptimizer`` under
``mixed_float16``).

Several processes (jax backend): ``keras.distribution.initialize`` joins the processes
that ``transferkit.launch`` started, and a ``keras.distribution.DataParallel`` over every
process's devices is set before the model is built, so that its variables are
replicated on all of them. Each step then takes every process's rows
(``train_on_batch`` makes one global batch of them) and XLA's collectives (gloo between
CPU processes) reduce the gradients. Under tensorflow and torch, Keras offers no
multi-process strategy that its compiled steps run under (``KerasFramework``'s
``strategy_notes`` say why).
"""

from __future__ import annotations

from . import import_order  # noqa: F401  (before keras: see import_order.py)

# isort: split
from typing import Any

import keras
import numpy as np

from transferkit.errors import ConfigError
from transferkit.launch import coordinates

POLICY = {"32": "float32", "bf16-mixed": "mixed_bfloat16", "16-mixed": "mixed_float16"}


def set_policy(model: keras.Model, precision: str) -> None:
    """Every layer of ``model`` (and the model) computes under ``precision``'s policy; the
    variables stay float32. Traced inference functions are dropped, to be traced again."""
    policy = POLICY[precision]
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if layer.dtype_policy.name != policy:
            layer.dtype_policy = policy
        if isinstance(layer, keras.Model):
            layer.predict_function = None


def initialize_from_env() -> None:
    """In a process that ``transferkit.launch`` started (jax backend): join the others
    and replicate what is built next over every process's devices."""
    where = coordinates()
    if where is None or keras.backend.backend() != "jax" or keras.distribution.distribution():
        return
    import jax

    if not jax.distributed.is_initialized():
        if jax.config.jax_platforms in (None, "", "cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        keras.distribution.initialize(*where)
    devices = keras.distribution.list_devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))


def distribution() -> Any:
    """The ``DataParallel`` distribution in force (None: one process, one device)."""
    if keras.backend.backend() != "jax":
        return None
    d = keras.distribution.distribution()
    if d is not None and not isinstance(d, keras.distribution.DataParallel):
        raise ConfigError(
            f"transferkit trains Keras models under keras.distribution.DataParallel only, "
            f"not {type(d).__name__}; unset it (keras.distribution.set_distribution(None))"
        )
    return d


def join(dist: Any) -> tuple[int, int]:
    """This process's index and the number of processes, for ``strategy="ddp"``."""
    import jax

    if dist is None or jax.process_count() == 1:
        raise ConfigError(
            "strategy='ddp' in Keras runs in processes that called "
            "keras.distribution.initialize() and set a keras.distribution.DataParallel "
            "before building the model: `transferkit fit ... --nproc N` does both"
        )
    return jax.process_index(), jax.process_count()


def global_rows(x: np.ndarray, dist: Any) -> Any:
    """``x`` (the same on every process) as one array replicated over the
    distribution's devices, which every process's eager and jitted calls can take."""
    return _global(x, dist, replicated=True)


def spread_rows(x: np.ndarray, dist: Any) -> Any:
    """``x`` (the same on every process) padded to a multiple of the distribution's
    devices and spread over them by rows: each process places the rows of its own."""
    m = pad_to(len(x), dist)
    if m > len(x):
        x = np.concatenate([x, np.repeat(x[:1], m - len(x), axis=0)])
    return _global(x, dist, replicated=False)


def _global(x: np.ndarray, dist: Any, replicated: bool) -> Any:
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    spec = PartitionSpec() if replicated else PartitionSpec(dist.batch_dim_name)
    sharding = NamedSharding(dist.device_mesh.backend_mesh, spec)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def fetch(out: Any) -> np.ndarray:
    """A jitted output as float32 numpy, gathered from every process when its rows are
    spread over them."""
    if not out.is_fully_addressable:
        from jax.experimental import multihost_utils

        out = multihost_utils.process_allgather(out, tiled=True)
    return np.asarray(out, np.float32)


def pad_to(n: int, dist: Any) -> int:
    """The global batch ``n`` rounded up to a multiple of the distribution's devices."""
    k = int(np.prod(dist.device_mesh.shape))
    return -(-n // k) * k


def barrier() -> None:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("transferkit fit")
