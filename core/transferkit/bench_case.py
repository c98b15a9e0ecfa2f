"""One benchmark case, run in a fresh process by :mod:`transferkit.bench`.

    python -m transferkit.bench_case SPEC.json RESULT.json

Part ``transferkit`` measures import and build time, the first (compiling) step, the
steady-state engine step, peak memory and the accuracy ``tk.fit`` reaches. Part
``baseline:<name>`` times transferkit's engine step and a native loop
(``benchmarks/suites/native/native_<framework>.py``) alternately, on the same model,
weights and batches. This module imports no framework itself: frameworks come in
through ``tk.build`` and the native baseline modules.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

T_START = time.perf_counter()

import numpy as np  # noqa: E402

#: which native module realises a framework's baselines (hf models are torch modules)
NATIVE_MODULE = {"torch": "native_torch", "hf": "native_torch", "flax": "native_flax"}
NATIVE_MODULE["keras"] = "native_keras"


def quartiles(values: list[float]) -> dict[str, float]:
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return {
        "median": float(med),
        "q1": float(q1),
        "q3": float(q3),
        "iqr": float(q3 - q1),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
        "n": len(values),
    }


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def load_native(native_dir: str, framework: str):
    name = NATIVE_MODULE.get(framework)
    path = Path(native_dir) / f"{name}.py"
    if name is None or not path.is_file():
        raise FileNotFoundError(f"no native baseline module for {framework!r} ({path})")
    spec = importlib.util.spec_from_file_location(f"transferkit_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- data -----------------------------------------------------------------------------------
def task_data(task: dict[str, Any], shots: int | None, seed: int):
    import transferkit as tk

    if task["data"] == "digits":
        train, test = tk.datasets.digits_transfer(shots=shots, seed=seed)
        size = task.get("test_size")
        if size and size < len(test):  # a fixed, stratified subset (seed 0)
            _, test = test.split(size / len(test), seed=0)
        return train, test
    return tk.datasets.bbc_news(shots=shots, seed=seed, test_size=task.get("test_size"))


def _weights(spec: dict[str, Any], backbone_spec) -> Any:
    """The pretrained weights where the backbone has some; otherwise one seeded random
    initialisation saved once per run and loaded by every framework (same weights)."""
    if backbone_spec.weights is not None or backbone_spec.loads_pretrained:
        return "pretrained"
    path = Path(spec["work"]) / "weights" / f"{backbone_spec.arch or backbone_spec.short_name}"
    return path.with_suffix(".safetensors")


def build(spec: dict[str, Any], num_classes: int):
    import transferkit as tk
    from transferkit import weights as wio
    from transferkit.model import _spec

    bspec = _spec(spec["backbone"])
    weights = _weights(spec, bspec)
    shape = tuple(spec["input_shape"]) if spec.get("input_shape") else None
    head = tk.Classifier(num_classes)
    if isinstance(weights, Path) and not weights.is_file():
        model = tk.build(spec["backbone"], head=head, weights=None, input_shape=shape, seed=0)
        arrays = model.engine.get_weights()
        wio.save({k: v for k, v in arrays.items() if k.startswith("backbone.")}, weights)
        return model, str(weights)
    model = tk.build(spec["backbone"], head=head, weights=str(weights), input_shape=shape, seed=0)
    return model, str(weights)


def speed_data(model, train) -> tuple[Any, np.ndarray]:
    """The task's whole training half, prepared once for the engine (as ``fit`` does)."""
    if model.spec.input_kind == "text":
        return list(train.x), train.y
    return model.prepare(train.x), train.y


def batches(n: int, batch: int, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.choice(n, batch, replace=batch > n) for _ in range(count)]


def take(x: Any, idx: np.ndarray) -> Any:
    return x[idx] if isinstance(x, np.ndarray) else [x[i] for i in idx]


def start(model, lr_spec_seed: int) -> None:
    import transferkit as tk

    engine = model.engine
    engine.start_training(tk.OptimizerSpec("adam"), lr_spec_seed)
    engine.set_plan({g: 1.0 for g in model.spec.group_names}, head_only=False)


def flops(model, batch: int, num_classes: int) -> float | None:
    from transferkit.bench import train_step_flops

    arch = model.spec.arch or model.spec.short_name
    config = None
    if model.spec.input_kind == "text":
        arch = "transformer"
        cfg = getattr(getattr(model.engine.backbone, "model", None), "config", None)
        config = cfg.to_dict() if cfg is not None else None
    return train_step_flops(
        arch, model.input_shape, model.spec.feature_size, num_classes, batch, config
    )


# --- parts ----------------------------------------------------------------------------------
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
    native = load_native(spec["native_dir"], spec["framework"])
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
        "device": native.device(model),
        "weights": weights,
        "input_shape": list(model.input_shape),
        "num_classes": num_classes,
        "process_start_to_import_s": t_import0 - T_START,
        "import_s": import_s,
        "build_s": build_s,
        "first_step_s": first_step_s,
        "step_ms": step,
        "samples_per_s": batch / step["median"] * 1e3,
        "flops_per_step": flops(model, batch, num_classes),
    }
    result["accuracy"] = accuracy(spec, task) if task["shots"] else None
    result["peak_rss_mb"] = peak_rss_mb()  # before any native baseline runs here
    result["baselines"] = {}
    for name in spec.get("inprocess_baselines", []):
        try:
            result["baselines"][name] = part_baseline(spec, name)
        except Exception as e:  # the baseline failed, not the case
            result["baselines"][name] = {
                "status": "failed",
                "error": f"{type(e).__name__}: {e}"[:2000],
                "traceback": traceback.format_exc()[-4000:],
            }
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


def part_baseline(spec: dict[str, Any], name: str) -> dict[str, Any]:
    """transferkit's engine step against a native loop, alternately, same batches."""
    task = spec["task"]
    native = load_native(spec["native_dir"], spec["framework"])
    if name not in native.BASELINES:
        raise KeyError(
            f"no native baseline {name!r} for {spec['framework']!r}; "
            f"available: {', '.join(native.BASELINES)}"
        )
    train, _ = task_data(task, None, spec["seed"])
    model, _ = build(spec, train.num_classes)
    x, y = speed_data(model, train)
    lr, batch = task["lr"], spec["batch"]
    # The native side copies the model's starting weights before transferkit trains.
    theirs = native.BASELINES[name](model, x, y, lr, twin=lambda: build(spec, train.num_classes)[0])
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
    ratios = np.asarray(timed["transferkit"]) / np.asarray(timed["native"])
    q1, med, q3 = np.percentile(ratios, [25, 50, 75])
    return {
        "status": "ok",
        "baseline": name,
        "description": theirs.description,
        "device": native.device(model),
        "steps_per_round": per_round,
        "rounds": rounds,
        "transferkit_ms": quartiles(timed["transferkit"]),
        "native_ms": quartiles(timed["native"]),
        "native_wall_ms": quartiles(wall["native"]),  # per step, the whole call
        "transferkit_first_step_s": first["transferkit"],
        "native_first_step_s": first["native"],
        # transferkit / native: > 1 means transferkit is slower
        "ratio": float(np.median(timed["transferkit"]) / np.median(timed["native"])),
        "pair_ratio": {
            "median": float(med),
            "q1": float(q1),
            "q3": float(q3),
            "min": float(ratios.min()),
            "max": float(ratios.max()),
        },
        "peak_rss_mb": peak_rss_mb(),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    out = Path(argv[1])
    part = spec["part"]
    try:
        if part == "transferkit":
            result = part_transferkit(spec)
        else:
            result = part_baseline(spec, part.partition(":")[2])
    except Exception as e:  # reported as the case's error; the suite carries on
        result = {
            "status": "failed",
            "error": f"{type(e).__name__}: {e}"[:2000],
            "traceback": traceback.format_exc()[-4000:],
            "peak_rss_mb": peak_rss_mb(),
        }
    out.write_text(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
