"""Precision and multi-process data parallel on JAX's own machinery: a bfloat16 compute
dtype on every Flax layer (parameters and optimizer state stay float32), and
``jax.distributed`` with one global device mesh, over which each step's batch is
sharded and its gradients reduced by XLA's collectives (gloo between CPU processes)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from transferkit.errors import ConfigError
from transferkit.launch import coordinates

COMPUTE = {"32": None, "bf16-mixed": jnp.bfloat16}


def initialize_from_env() -> None:
    """In a process that ``transferkit.launch`` started: join the others before JAX
    computes anything (``jax.distributed.initialize`` must come first)."""
    where = coordinates()
    if where is None or jax.distributed.is_initialized():
        return
    if jax.config.jax_platforms in (None, "", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    address, n, index = where
    jax.distributed.initialize(coordinator_address=address, num_processes=n, process_id=index)


def join() -> tuple[int, int]:
    """This process's index and the number of processes, once ``jax.distributed`` runs."""
    if jax.process_count() == 1:
        raise ConfigError(
            "strategy='ddp' in JAX runs in processes that called jax.distributed.initialize() "
            "before building the model: `transferkit fit ... --nproc N` does it, or call it "
            "first in your script"
        )
    return jax.process_index(), jax.process_count()


@contextmanager
def compute_dtype(module: nnx.Module, dtype: Any) -> Iterator[None]:
    """Every layer of ``module`` that has a compute ``dtype`` computes in ``dtype`` inside
    the block (a graph split there keeps it); their parameters keep their own dtype."""
    layers = [m for _, m in nnx.iter_graph(module) if isinstance(m, nnx.Module)]
    layers = [m for m in layers if hasattr(m, "dtype") and hasattr(m, "param_dtype")]
    saved = [m.dtype for m in layers]
    try:
        if dtype is not None:
            for m in layers:
                m.dtype = dtype
        yield
    finally:
        for m, d in zip(layers, saved, strict=True):
            m.dtype = d


def fetch(out: jax.Array) -> np.ndarray:
    """A step's output as numpy, gathered from every process when the rows are spread
    over them."""
    if jax.process_count() > 1 and not out.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(out, tiled=True))
    return np.asarray(out)
