"""Native JAX/Flax baseline: what a JAX user writes for the same model and data.

transferkit's ``nnx`` module (backbone + head) is split once into parameters and batch
statistics (copied, so both sides start from the same weights), and trained by one
``jax.jit``-compiled step with ``optax.adam`` and
``optax.softmax_cross_entropy_with_integer_labels``; the data is one device array made
up front.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


def device(model) -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')}".rstrip(":")


class Jit:
    description = "jax.jit step on nnx.split state, optax.adam, data on device up front"
    steps_per_round = 1

    def __init__(self, model, x, y, lr: float, twin=None) -> None:
        graph, params, stats = nnx.split(model.native, nnx.Param, nnx.BatchStat)
        params = jax.tree.map(jnp.array, params)  # copies: the engine donates its buffers
        stats = jax.tree.map(jnp.array, stats)
        tx = optax.adam(lr)
        self.xs, self.ys = jnp.asarray(x), jnp.asarray(y)

        @jax.jit
        def step(params, stats, opt, idx):
            xb, yb = self.xs[idx], self.ys[idx]

            def loss_fn(params, stats):
                m = nnx.merge(graph, params, stats, copy=True)
                m.train()
                loss = optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()
                return loss, nnx.state(m, nnx.BatchStat)

            (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
            updates, opt = tx.update(grads, opt, params)
            return optax.apply_updates(params, updates), stats, opt, loss

        self.state = [params, stats, tx.init(params)]
        self.step = step

    def run(self, batches: list[np.ndarray]) -> None:
        loss = None
        for idx in batches:
            p, s, o = self.state
            p, s, o, loss = self.step(p, s, o, jnp.asarray(idx))
            self.state = [p, s, o]
        jax.block_until_ready(loss)


BASELINES = {"jit": Jit}
