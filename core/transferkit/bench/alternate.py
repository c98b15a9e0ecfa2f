"""transferkit's engine step against a framework's native baseline, timed alternately in
one process on the same model, weights and batches (one round of each, the order
swapped every round), so both sides run under the same machine noise."""

from __future__ import annotations

import importlib
import time
from typing import Any

import numpy as np

from ..framework import Framework
from .probe import peak_rss_mb
from .stats import pair_ratio, quartiles, ratio_of_medians
from .workload import batches, build, speed_data, start, take, task_data


def load_baseline(fw: Framework, name: str):
    """The factory of the baseline ``name`` that ``fw`` declares."""
    declared = {b.name: b for b in fw.baselines}
    if name not in declared:
        raise KeyError(
            f"no native baseline {name!r} for {fw.name!r}; "
            f"available: {', '.join(declared) or 'none'}"
        )
    module, _, attr = declared[name].factory.partition(":")
    return getattr(importlib.import_module(module), attr)


def part_baseline(spec: dict[str, Any], name: str, fw: Framework) -> dict[str, Any]:
    """Time the engine step and the native baseline ``name`` alternately."""
    task = spec["task"]
    factory = load_baseline(fw, name)
    train, _ = task_data(task, None, spec["seed"])
    model, _ = build(spec, train.num_classes)
    x, y = speed_data(model, train)
    lr, batch = task["lr"], spec["batch"]
    # The native side copies the model's starting weights before transferkit trains.
    theirs = factory(model, x, y, lr, twin=lambda: build(spec, train.num_classes)[0])
    per_round = int(getattr(theirs, "steps_per_round", 1))
    rounds = spec["rounds"]
    count = (2 + spec["warmup"] // per_round + rounds) * per_round
    bs = batches(len(y), batch, count, spec["seed"] + 1)
    groups = [bs[i : i + per_round] for i in range(0, len(bs), per_round)]
    start(model, spec["seed"])
    engine = model.engine

    def ours(group: list[np.ndarray]) -> None:
        loss = None
        for b in group:
            loss = engine.train_step(take(x, b), y[b], lr)
        float(loss)

    first = {}
    for label, fn in (("transferkit", ours), ("native", theirs.run)):
        t0 = time.perf_counter()
        fn(groups[0])
        first[label] = time.perf_counter() - t0
    for g in groups[1 : len(groups) - rounds]:
        ours(g)
        theirs.run(g)
    # A baseline's run() may return its own steady-state ms/step (Keras's fit times its
    # steps inside the call); the wall time of each round is kept either way.
    timed: dict[str, list[float]] = {"transferkit": [], "native": []}
    wall: dict[str, list[float]] = {"transferkit": [], "native": []}
    for i, g in enumerate(groups[len(groups) - rounds :]):
        order = [("transferkit", ours), ("native", theirs.run)]
        for label, fn in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            own = fn(g)
            wall[label].append((time.perf_counter() - t0) * 1e3 / per_round)
            timed[label].append(wall[label][-1] if own is None else float(own))
    return {
        "status": "ok",
        "baseline": name,
        "description": theirs.description,
        "device": fw.device_name(model),
        "steps_per_round": per_round,
        "rounds": rounds,
        "transferkit_ms": quartiles(timed["transferkit"]),
        "native_ms": quartiles(timed["native"]),
        "native_wall_ms": quartiles(wall["native"]),  # per step, the whole call
        "transferkit_first_step_s": first["transferkit"],
        "native_first_step_s": first["native"],
        # transferkit / native: > 1 means transferkit is slower
        "ratio": ratio_of_medians(timed["transferkit"], timed["native"]),
        "pair_ratio": pair_ratio(timed["transferkit"], timed["native"]),
        "peak_rss_mb": peak_rss_mb(),
    }
