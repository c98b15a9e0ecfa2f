"""Steady-state training-step time of one reference architecture in several frameworks.

Same architecture, same weights (the torch initialisation, moved through a saved model),
same batches; steps are timed alternately across frameworks after warm-up.

    python benchmarks/framework_step.py --arch resnet18 --batch 64 --size 32
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from transferkit import owned
from transferkit.bench.stats import quartiles


def _block(value) -> None:
    float(value)  # waits for the step (torch returns a tensor, jax a lazy array)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--frameworks", default="torch,flax")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    steps = 10 if args.quick else args.steps

    import transferkit as tk

    frameworks = args.frameworks.split(",")
    shape = (args.size, args.size, 3)
    first = tk.build(
        f"{frameworks[0]}:{args.arch}", head=tk.Classifier(10), weights=None, input_shape=shape
    )
    models = {frameworks[0]: first}
    with tempfile.TemporaryDirectory() as d:
        first.save(Path(d) / "m")
        for fw in frameworks[1:]:
            models[fw] = tk.load(Path(d) / "m", framework=fw)
    rng = np.random.default_rng(0)
    x = first.prepare(rng.random((args.batch * 4, *shape), dtype=np.float32))
    y = rng.integers(0, 10, len(x))
    batches = [rng.choice(len(x), args.batch, replace=False) for _ in range(steps + 3)]

    compile_s = {}
    for fw, m in models.items():
        m.engine.start_training(tk.OptimizerSpec("adam"), 0)
        m.engine.set_plan({g: 1.0 for g in m.spec.group_names}, head_only=False)
        t0 = time.perf_counter()
        _block(m.engine.train_step(x[batches[0]], y[batches[0]], 1e-3))
        compile_s[fw] = time.perf_counter() - t0
        for b in batches[1:3]:
            _block(m.engine.train_step(x[b], y[b], 1e-3))

    times = {fw: [] for fw in models}
    for i, b in enumerate(batches[3:]):
        order = list(models.items())
        for fw, m in order[i % len(order) :] + order[: i % len(order)]:
            t0 = time.perf_counter()
            _block(m.engine.train_step(x[b], y[b], 1e-3))
            times[fw].append((time.perf_counter() - t0) * 1e3)

    result = {
        "benchmark": "framework_step",
        "arch": args.arch,
        "batch": args.batch,
        "input": list(shape),
        "steps": steps,
        "cpu_count": os.cpu_count(),
        "frameworks": {},
    }
    print(f"{args.arch}, batch {args.batch}, {args.size}x{args.size}x3, Adam, {steps} steps")
    print(f"{'framework':10}{'median ms':>11}{'IQR':>8}{'first step s':>14}{'samples/s':>11}")
    for fw, v in times.items():
        q = quartiles(v)
        med = q["median"]
        result["frameworks"][fw] = {
            "median_ms": med,
            "iqr_ms": q["iqr"],
            "first_step_s": compile_s[fw],
            "samples_per_s": args.batch / med * 1e3,
        }
        print(
            f"{fw:10}{med:>11.1f}{q['iqr']:>8.1f}{compile_s[fw]:>14.2f}"
            f"{args.batch / med * 1e3:>11.0f}"
        )
    out = Path(__file__).parent / "results" / f"framework_step_{args.arch}.json"
    owned.write_text(out, json.dumps(result, indent=2), "benchmark result")


if __name__ == "__main__":
    main()
