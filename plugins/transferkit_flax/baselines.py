"""What ``transferkit bench`` needs from JAX/Flax: the native baseline, device names, MACs.

The baseline is what a JAX user writes for the same model and data: transferkit's ``nnx``
module (backbone + head, ``model.native``) split once into parameters and batch
statistics (copied, so both sides start from the same weights), trained by one
``jax.jit``-compiled step with ``optax.adam`` and
``optax.softmax_cross_entropy_with_integer_labels``; the data is one device array made
up front. ``Jit`` is a :class:`transferkit.framework.Baseline` factory.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


def device_name(model) -> str:
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


def _jaxpr_macs(jaxpr) -> int:
    """Multiply-accumulates of every matrix product and convolution in a jaxpr (and the
    jaxprs it calls), from their operand and result shapes."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
        elif name == "conv_general_dilated":
            kernel = eqn.invars[1].aval.shape
            out_features = kernel[eqn.params["dimension_numbers"].rhs_spec[0]]
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(kernel) // out_features
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds a Jaxpr
                if hasattr(inner, "eqns"):
                    total += _jaxpr_macs(inner)
    return total


def count_macs(model) -> int:
    """MACs of one example through backbone and head at the model's input shape, read
    from the traced (never run) forward pass of a copy of the module."""
    graph, state = nnx.split(model.native)
    jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graph, s, copy=True)(x))(
        state, jnp.zeros((1, *model.input_shape), jnp.float32)
    )
    return _jaxpr_macs(jaxpr.jaxpr)
