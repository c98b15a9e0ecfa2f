"""One benchmark case, run in a fresh process by :mod:`transferkit.bench.runner`.

    python -m transferkit.bench.case SPEC.json RESULT.json

Part ``transferkit`` measures import and build time, the first (compiling) step, the
steady-state engine step, peak memory and the accuracy ``tk.fit`` reaches, then runs the
in-process native baselines (:mod:`.alternate`). Part ``baseline:<name>`` runs one
baseline alone (one that gets a process of its own). This module imports no framework
itself: frameworks come in through ``tk.build``, the framework's declarations
(``requires``, ``device_name``, ``count_macs``) and the baselines it declares.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import importlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from .alternate import part_baseline  # noqa: E402
from .probe import peak_rss_mb  # noqa: E402
from .stats import quartiles  # noqa: E402
from .workload import batches, build, speed_data, start, take, task_data  # noqa: E402


def failure(e: BaseException) -> dict[str, Any]:
    return {
        "status": "failed",
        "error": f"{type(e).__name__}: {e}"[:2000],
        "traceback": traceback.format_exc()[-4000:],
    }


def flops(fw, model, batch: int) -> tuple[float | None, str | None]:
    """FLOPs of one training step (the framework's MAC count of backbone and head, x2
    FLOPs per MAC, x3 for forward + backward), or None and why not."""
    try:
        macs = fw.count_macs(model)
    except Exception as e:  # a counter that fails costs the figure, not the case
        return None, f"{type(e).__name__}: {e}"[:500]
    return (None, None) if macs is None else (float(2 * 3 * macs * batch), None)


def part_transferkit(spec: dict[str, Any]) -> dict[str, Any]:
    from transferkit.plugins import registry

    t_import0 = time.perf_counter()
    import transferkit as tk  # noqa: F401  (already imported by -m; counted for clarity)

    fw = registry().framework(spec["framework"])
    for module in fw.requires:  # the framework itself, so build time is the model alone
        importlib.import_module(module)
    import_s = time.perf_counter() - t_import0
    task = spec["task"]
    train, _ = task_data(task, None, spec["seed"])
    num_classes = train.num_classes
    t0 = time.perf_counter()
    model, weights = build(spec, num_classes)
    build_s = time.perf_counter() - t0
    x, y = speed_data(model, train)
    engine, lr, batch = model.engine, task["lr"], spec["batch"]
    bs = batches(len(y), batch, 1 + spec["warmup"] + spec["steps"], spec["seed"])
    start(model, spec["seed"])
    t0 = time.perf_counter()
    float(engine.train_step(take(x, bs[0]), y[bs[0]], lr))
    first_step_s = time.perf_counter() - t0
    for b in bs[1 : 1 + spec["warmup"]]:
        float(engine.train_step(take(x, b), y[b], lr))
    times = []
    for b in bs[1 + spec["warmup"] :]:
        t0 = time.perf_counter()
        float(engine.train_step(take(x, b), y[b], lr))  # float() waits for the step
        times.append((time.perf_counter() - t0) * 1e3)
    engine.end_training()
    step = quartiles(times)
    result = {
        "status": "ok",
        "device": fw.device_name(model),
        "weights": weights,
        "input_shape": list(model.input_shape),
        "num_classes": num_classes,
        "process_start_to_import_s": t_import0 - T_START,
        "import_s": import_s,
        "build_s": build_s,
        "first_step_s": first_step_s,
        "step_ms": step,
        "samples_per_s": batch / step["median"] * 1e3,
    }
    result["flops_per_step"], why = flops(fw, model, batch)
    if why:
        result["flops_error"] = why
    result["accuracy"] = accuracy(spec, task) if task["shots"] else None
    result["peak_rss_mb"] = peak_rss_mb()  # before any native baseline runs here
    result["baselines"] = {}
    for name in spec.get("inprocess_baselines", []):
        try:
            result["baselines"][name] = part_baseline(spec, name, fw)
        except Exception as e:  # the baseline failed, not the case
            result["baselines"][name] = failure(e)
    return result


def accuracy(spec: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """``tk.fit`` from the same weights with k labels per class; accuracy on the fixed test
    split after every epoch, and the wall time from the start of ``fit`` until the
    target accuracy was first reached."""
    import transferkit as tk

    class Clock(tk.Callback):  # t0 is set just before fit: caching features counts
        def on_train_begin(self, trainer) -> None:
            self.curve = []

        def on_epoch_end(self, trainer, epoch, logs) -> None:
            self.curve.append((time.perf_counter() - self.t0, float(logs["val_accuracy"])))

    policy = {"full": tk.freeze.FullFineTune, "feature_extraction": tk.freeze.FeatureExtraction}
    out: dict[str, Any] = {"target": task["target_accuracy"], "per_shots": {}}
    for k in task["shots"]:
        train, test = task_data(task, k, spec["seed"])
        model, _ = build(spec, train.num_classes)
        clock = Clock()
        clock.t0 = time.perf_counter()
        tk.fit(
            model,
            train,
            val=test,
            freeze=policy[task["freeze"]](),
            epochs=task["epochs"],
            lr=task["lr"],
            batch_size=task["fit_batch_size"],
            seed=spec["seed"],
            callbacks=[clock],
            verbose=0,
        )
        reached = [t for t, a in clock.curve if a >= task["target_accuracy"]]
        out["per_shots"][str(k)] = {
            "train_size": len(train),
            "test_size": len(test),
            "final_accuracy": clock.curve[-1][1],
            "best_accuracy": max(a for _, a in clock.curve),
            "fit_s": clock.curve[-1][0],
            "time_to_target_s": reached[0] if reached else None,
            "curve": [{"s": t, "accuracy": a} for t, a in clock.curve],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    out = Path(argv[1])
    part = spec["part"]
    try:
        if part == "transferkit":
            result = part_transferkit(spec)
        else:
            from transferkit.plugins import registry

            fw = registry().framework(spec["framework"])
            result = part_baseline(spec, part.partition(":")[2], fw)
    except Exception as e:  # reported as the case's error; the suite carries on
        result = {**failure(e), "peak_rss_mb": peak_rss_mb()}
    out.write_text(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
