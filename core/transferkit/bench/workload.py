"""What both parts of a case measure on: the task's data, the model built from the same
weights in every framework, and the batches. Runs in the case process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def task_data(task: dict[str, Any], shots: int | None, seed: int):
    import transferkit as tk

    if task["data"] == "digits":
        train, test = tk.datasets.digits_transfer(shots=shots, seed=seed)
        size = task.get("test_size")
        if size and size < len(test):  # a fixed, stratified subset (seed 0)
            _, test = test.split(size / len(test), seed=0)
        return train, test
    return tk.datasets.bbc_news(shots=shots, seed=seed, test_size=task.get("test_size"))


def backbone_spec(name: str):
    """A registered backbone's spec, or the one its framework resolves from the name."""
    from transferkit.plugins import registry

    reg = registry()
    if name in reg.catalog:
        return reg.catalog.get(name)
    framework, _, short = name.partition(":")
    return reg.framework(framework).resolve(short) or reg.catalog.get(name)


def _weights(spec: dict[str, Any], backbone_spec) -> Any:
    """The pretrained weights where the backbone has some; otherwise one seeded random
    initialisation saved once per run and loaded by every framework (same weights)."""
    if backbone_spec.weights is not None or backbone_spec.loads_pretrained:
        return "pretrained"
    path = Path(spec["work"]) / "weights" / f"{backbone_spec.arch or backbone_spec.short_name}"
    return path.with_suffix(".safetensors")


def build(spec: dict[str, Any], num_classes: int):
    """The case's backbone with a linear classifier, and where its weights came from."""
    import transferkit as tk
    from transferkit import weights as wio

    weights = _weights(spec, backbone_spec(spec["backbone"]))
    shape = tuple(spec["input_shape"]) if spec.get("input_shape") else None
    head = tk.Classifier(num_classes)
    if isinstance(weights, Path) and not weights.is_file():
        model = tk.build(spec["backbone"], head=head, weights=None, input_shape=shape, seed=0)
        arrays = model.get_weights()
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


def start(model, seed: int) -> None:
    """Adam, full fine-tuning: the engine as ``tk.fit`` leaves it before the first step."""
    import transferkit as tk

    engine = model.engine
    engine.start_training(tk.OptimizerSpec("adam"), seed)
    engine.set_plan({g: 1.0 for g in model.spec.group_names}, head_only=False)
