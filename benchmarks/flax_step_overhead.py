"""transferkit's Flax training step against a hand-written jax/optax loop.

Same model (the reference ``cnn`` with a linear head), same data, batch 64, 32x32x3
inputs, Adam. Steps are timed alternately (one of each, repeated) so that machine noise
hits both sides alike; the report gives medians, the interquartile range and the ratio
of medians, plus the one-off compile time of each side.

    python benchmarks/flax_step_overhead.py [--steps 200] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from transferkit import owned
from transferkit.bench.stats import quartiles


def hand_written(x: np.ndarray, y: np.ndarray, weights: dict, batch: int):
    """What a JAX user writes: an nnx model split once, a jitted step, optax.adam."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from transferkit_flax.architectures import CNN

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.backbone = CNN(3, rngs)
            self.head = nnx.Linear(128, 5, rngs=rngs)

        def __call__(self, x):
            return self.head(self.backbone(x))

    model = Net(nnx.Rngs(0))
    model.train()
    graph, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    # Start from the transferkit model's weights (canonical -> flax layout).
    from transferkit.layout import kernel_from_canonical

    for state in (params, stats):
        for path, var in nnx.to_flat_state(state):
            leaf = str(path[-1])
            name = (
                ".".join(map(str, path[:-1]))
                + "."
                + {
                    "kernel": "weight",
                    "scale": "weight",
                    "bias": "bias",
                    "mean": "running_mean",
                    "var": "running_var",
                }[leaf]
            )
            name = name.replace("head.", "head.out.")
            value = weights[name]
            var.set_value(jnp.asarray(kernel_from_canonical(value) if leaf == "kernel" else value))
    tx = optax.adam(1e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, stats, opt, xb, yb):
        def loss_fn(params, stats):
            m = nnx.merge(graph, params, stats, copy=True)
            loss = optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()
            return loss, nnx.state(m, nnx.BatchStat)

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), stats, opt, loss

    state = {"p": params, "s": stats, "o": opt}

    def run(idx: np.ndarray) -> float:
        state["p"], state["s"], state["o"], loss = step(
            state["p"], state["s"], state["o"], jnp.asarray(x[idx]), jnp.asarray(y[idx])
        )
        return loss

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    steps = 40 if args.quick else args.steps

    import jax

    import transferkit as tk

    train, _ = tk.datasets.digits_transfer(shots=None)
    model = tk.build("flax:cnn", head=tk.Classifier(5), weights=None, seed=0)
    x = model.prepare(train.x)  # (N, 32, 32, 3), normalised
    y = train.y
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(x), args.batch, replace=False) for _ in range(steps + 5)]

    engine = model.engine
    engine.start_training(tk.OptimizerSpec("adam"), 0)
    engine.set_plan({g: 1.0 for g in model.spec.group_names}, head_only=False)
    hand = hand_written(x, y, engine.get_weights(), args.batch)

    def ours(idx):
        return engine.train_step(x[idx], y[idx], 1e-3)

    compile_s = {}
    for name, fn in (("transferkit", ours), ("hand-written", hand)):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(batches[0]))
        compile_s[name] = time.perf_counter() - t0
    for b in batches[1:5]:  # warm-up
        jax.block_until_ready(ours(b))
        jax.block_until_ready(hand(b))

    times = {"transferkit": [], "hand-written": []}
    for i, b in enumerate(batches[5:]):
        order = (("transferkit", ours), ("hand-written", hand))
        for name, fn in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            jax.block_until_ready(fn(b))
            times[name].append((time.perf_counter() - t0) * 1e3)

    def stats(v):
        q = quartiles(v)
        return {"median_ms": q["median"], "iqr_ms": q["iqr"]}

    result = {
        "benchmark": "flax_step_overhead",
        "model": "flax:cnn + Classifier(5)",
        "batch": args.batch,
        "input": [32, 32, 3],
        "steps": steps,
        "transferkit": {**stats(times["transferkit"]), "compile_s": compile_s["transferkit"]},
        "hand_written": {**stats(times["hand-written"]), "compile_s": compile_s["hand-written"]},
        "jax": jax.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor(),
    }
    result["ratio"] = result["transferkit"]["median_ms"] / result["hand_written"]["median_ms"]
    print(f"{'':14}{'median ms/step':>16}{'IQR':>8}{'compile s':>11}")
    for k in ("transferkit", "hand_written"):
        r = result[k]
        print(f"{k:14}{r['median_ms']:>16.2f}{r['iqr_ms']:>8.2f}{r['compile_s']:>11.2f}")
    print(f"ratio transferkit / hand-written: {result['ratio']:.3f}")
    out = Path(__file__).parent / "results" / "flax_step_overhead.json"
    owned.write_text(out, json.dumps(result, indent=2), "benchmark result")


if __name__ == "__main__":
    main()
