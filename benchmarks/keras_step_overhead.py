"""transferkit's Keras training step against Keras's own ``model.fit``, on each Keras
backend, and ``keras:resnet18``'s steady-state step time per backend.

Overhead: the same model (the reference ``cnn`` with a linear head, same weights), same
data, batch 64, 32x32x3, Adam, the same ``jit_compile`` choice (Keras's "auto"). Chunks of
``--chunk`` steps are timed alternately (transferkit's ``train_step`` one chunk, then
``model.fit`` over the same number of batches), so machine noise hits both alike; the
report gives per-step medians over chunks and the ratio of medians. ResNet-18: batch 64,
32x32x3, Adam, median of steady-state steps. Each backend runs in its own process (the
backend is fixed per process); results go to ``benchmarks/results/keras_*.json``.

    python benchmarks/keras_step_overhead.py [--backends tensorflow,jax,torch] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from transferkit import owned
from transferkit.bench.stats import median, quartiles

RESULTS = Path(__file__).parent / "results"


def _stats(v: list[float]) -> dict[str, float]:
    q = quartiles(v)
    return {"median_ms": q["median"], "iqr_ms": q["iqr"]}


def overhead(chunks: int, chunk: int, batch: int) -> dict:
    import keras

    import transferkit as tk
    from transferkit_keras.architectures import cnn

    train, _ = tk.datasets.digits_transfer(shots=None)
    model = tk.build("keras:cnn", head=tk.Classifier(5), weights=None, seed=0)
    x = model.prepare(train.x)
    y = train.y
    n = chunk * batch
    rng = np.random.default_rng(0)

    engine = model.engine
    engine.start_training(tk.OptimizerSpec("adam"), 0)
    engine.set_plan({g: 1.0 for g in model.spec.group_names}, head_only=False)

    # What a Keras user writes: the same network, Dense head, Adam, compile, fit.
    inputs = keras.Input((32, 32, 3))
    native = keras.Model(inputs, keras.layers.Dense(5, name="out")(cnn((32, 32, 3))(inputs)))
    native.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile="auto",
    )

    def ours(idx: np.ndarray) -> None:
        for i in range(0, len(idx), batch):
            b = idx[i : i + batch]
            loss = engine.train_step(x[b], y[b], 1e-3)
        float(loss)

    def theirs(idx: np.ndarray) -> None:
        native.fit(x[idx], y[idx], batch_size=batch, epochs=1, shuffle=False, verbose=0)

    compile_s = {}
    for name, fn in (("transferkit", ours), ("keras_fit", theirs)):
        t0 = time.perf_counter()
        fn(rng.choice(len(x), n, replace=False))  # first chunk: tracing / compiling
        compile_s[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {"transferkit": [], "keras_fit": []}
    for i in range(chunks):
        idx = rng.choice(len(x), n, replace=False)
        order = (("transferkit", ours), ("keras_fit", theirs))
        for name, fn in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fn(idx)
            times[name].append((time.perf_counter() - t0) * 1e3 / chunk)
    out = {name: {**_stats(v), "first_chunk_s": compile_s[name]} for name, v in times.items()}
    out["ratio"] = out["transferkit"]["median_ms"] / out["keras_fit"]["median_ms"]
    return out


def resnet18(steps: int, batch: int) -> dict:
    import transferkit as tk

    model = tk.build(
        "keras:resnet18", head=tk.Classifier(10), weights=None, input_shape=(32, 32, 3)
    )
    rng = np.random.default_rng(0)
    x = model.prepare(rng.random((batch * 4, 32, 32, 3), dtype=np.float32))
    y = rng.integers(0, 10, len(x))
    engine = model.engine
    engine.start_training(tk.OptimizerSpec("adam"), 0)
    engine.set_plan({g: 1.0 for g in model.spec.group_names}, head_only=False)
    t0 = time.perf_counter()
    float(engine.train_step(x[:batch], y[:batch], 1e-3))
    first = time.perf_counter() - t0
    for _ in range(2):
        float(engine.train_step(x[:batch], y[:batch], 1e-3))
    times = []
    for _ in range(steps):
        b = rng.choice(len(x), batch, replace=False)
        t0 = time.perf_counter()
        float(engine.train_step(x[b], y[b], 1e-3))
        times.append((time.perf_counter() - t0) * 1e3)
    return {**_stats(times), "first_step_s": first, "samples_per_s": batch / median(times) * 1e3}


def child(args: argparse.Namespace) -> None:
    import keras

    result = {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "overhead": overhead(args.chunks, args.chunk, args.batch),
        "resnet18": resnet18(args.steps, args.batch),
    }
    print("RESULT " + json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", default="tensorflow,jax,torch")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.chunks, args.chunk, args.steps = 6, 5, 8
    if args.child:
        child(args)
        return
    results = {}
    for backend in args.backends.split(","):
        cmd = [sys.executable, __file__, "--child", "--batch", str(args.batch)]
        cmd += [
            "--chunks",
            str(args.chunks),
            "--chunk",
            str(args.chunk),
            "--steps",
            str(args.steps),
        ]
        run = subprocess.run(
            cmd, env={**os.environ, "KERAS_BACKEND": backend}, capture_output=True, text=True
        )
        if run.returncode != 0:
            print(f"{backend}: failed\n{run.stderr[-2000:]}")
            continue
        line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))
        results[backend] = json.loads(line[len("RESULT ") :])
    meta = {
        "batch": args.batch,
        "input": [32, 32, 3],
        "cpu_count": os.cpu_count(),
        "machine": platform.processor(),
    }
    print(f"keras:cnn + Classifier(5), batch {args.batch}, 32x32x3, Adam: ms per step")
    print(f"{'backend':11}{'transferkit':>13}{'model.fit':>11}{'ratio':>8}{'resnet18':>11}")
    for b, r in results.items():
        o = r["overhead"]
        print(
            f"{b:11}{o['transferkit']['median_ms']:>13.2f}{o['keras_fit']['median_ms']:>11.2f}"
            f"{o['ratio']:>8.3f}{r['resnet18']['median_ms']:>11.1f}"
        )
    RESULTS.mkdir(exist_ok=True)
    owned.write_text(
        RESULTS / "keras_step_overhead.json",
        json.dumps(
            {
                "benchmark": "keras_step_overhead",
                "model": "keras:cnn + Classifier(5)",
                **meta,
                "steps": args.chunks * args.chunk,
                "backends": {b: r["overhead"] | {"keras": r["keras"]} for b, r in results.items()},
            },
            indent=2,
        ),
        "benchmark result",
    )
    owned.write_text(
        RESULTS / "keras_step_resnet18.json",
        json.dumps(
            {
                "benchmark": "keras_step_resnet18",
                "arch": "resnet18",
                **meta,
                "steps": args.steps,
                "backends": {b: r["resnet18"] for b, r in results.items()},
            },
            indent=2,
        ),
        "benchmark result",
    )


if __name__ == "__main__":
    main()
