"""BatchNorm when fine-tuning with few labels: ``batchnorm="train" | "frozen" | "recalibrate"``.

Full fine-tuning as a new user writes it (``tk.freeze.FullFineTune()``, Adam, lr 1e-3, 10
epochs, batch 16, cosine schedule) of three BatchNorm backbones at 32x32: the ImageNet
EfficientNet-Lite0 (BatchNorm momentum 0.01), the ``cnn`` pretrained on digits 0-4
(momentum 0.1), and ResNet-18 from a seeded random initialisation (no pretrained weights
ship; the same start for every mode). Tasks: faces vs. non-faces and digits 5-9, with
5/10/20 labels per class, ``--seeds`` seeds. Reported per mode: test accuracy, the
accuracy on the training examples in inference mode, and the gap between the loss on the
training examples in inference mode and the last epoch's training loss (training mode);
and how often ``tk.fit`` warned about that gap.

    python benchmarks/batchnorm.py [--seeds 3] [--framework torch] [--backbones ...]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import transferkit as tk
from transferkit.bench.report import write_study

BACKBONES = {
    "efficientnet_lite0": "pretrained",
    "cnn": "pretrained",
    "resnet18": None,
}
TASKS = {"faces": (tk.datasets.faces, 2), "digits 5-9": (tk.datasets.digits_transfer, 5)}
SHOTS = (5, 10, 20)
MODES = ("train", "frozen", "recalibrate")
SHAPE = (32, 32, 3)


def one(framework, arch, weights, train, test, classes, seed, mode) -> dict:
    model = tk.build(
        f"{framework}:{arch}", head=tk.Classifier(classes), weights=weights,
        input_shape=SHAPE, seed=seed,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = tk.fit(
            model, train, freeze=tk.freeze.FullFineTune(), epochs=10, lr=1e-3,
            batch_size=16, seed=seed, verbose=0, batchnorm=mode,
        )  # fmt: skip
    on_train = model.evaluate(train)
    return {
        "test": model.evaluate(test)["accuracy"],
        "train_inference": on_train["accuracy"],
        "gap": on_train["loss"] - h["loss"][-1],
        "warned": any("BatchNorm" in str(w.message) for w in caught),
    }


def run(framework: str, backbones: list[str], seeds: int) -> list[dict]:
    rows = []
    for arch in backbones:
        for task, (loader, classes) in TASKS.items():
            t0 = time.perf_counter()
            cells: dict[str, dict[int, list[dict]]] = {m: {} for m in MODES}
            for k in SHOTS:
                for seed in range(seeds):
                    train, test = loader(shots=k, seed=seed)
                    for mode in MODES:
                        r = one(framework, arch, BACKBONES[arch], train, test, classes, seed, mode)
                        cells[mode].setdefault(k, []).append(r)
                print(arch, task, k, {m: round(np.mean([r["test"] for r in c[k]]), 3)
                                      for m, c in cells.items()}, flush=True)  # fmt: skip
            for mode, by_k in cells.items():
                rows.append(
                    {
                        "backbone": f"{framework}:{arch}",
                        "weights": BACKBONES[arch] or f"random (seed per run), {SHAPE}",
                        "task": task,
                        "mode": mode,
                        "test": _per_shot(by_k, "test", np.mean),
                        "test_std": _per_shot(by_k, "test", np.std),
                        "train_inference": _per_shot(by_k, "train_inference", np.mean),
                        "gap": _per_shot(by_k, "gap", np.mean),
                        "warned": sum(r["warned"] for v in by_k.values() for r in v),
                        "runs": sum(len(v) for v in by_k.values()),
                        "seconds": time.perf_counter() - t0,
                    }
                )
    return rows


def _per_shot(by_k: dict[int, list[dict]], key: str, stat) -> dict[int, float]:
    return {k: float(stat([r[key] for r in v])) for k, v in by_k.items()}


def wins(rows: list[dict]) -> dict[str, int]:
    """Per (backbone, task, shots): which mode has the best mean test accuracy."""
    out = dict.fromkeys(MODES, 0)
    cases = {(r["backbone"], r["task"]) for r in rows}
    for case in sorted(cases):
        for k in SHOTS:
            best = max(
                (r for r in rows if (r["backbone"], r["task"]) == case), key=lambda r: r["test"][k]
            )
            out[best["mode"]] += 1
    return out


def markdown(rows: list[dict], seeds: int, tally: dict[str, int]) -> str:
    lines = [
        f"Full fine-tuning at 32x32 (Adam, lr 1e-3, 10 epochs, batch 16), {seeds} seeds. "
        "Test accuracy (mean ± std), accuracy on the training examples in inference mode, "
        "and the gap: loss on the training examples in inference mode minus the last "
        "epoch's training loss.",
        "",
        "| backbone | task | batchnorm | "
        + " | ".join(f"test, {k} shots" for k in SHOTS)
        + " | train (inference), 20 shots | gap, 20 shots | warned |",
        "|---|---|---|" + "---:|" * (len(SHOTS) + 3),
    ]
    for r in rows:
        group = [q for q in rows if (q["backbone"], q["task"]) == (r["backbone"], r["task"])]
        cells = []
        for k in SHOTS:
            cell = f"{r['test'][k]:.3f} ± {r['test_std'][k]:.3f}"
            cells.append(
                f"**{cell}**" if r["test"][k] == max(q["test"][k] for q in group) else cell
            )
        lines.append(
            f"| {r['backbone']} | {r['task']} | {r['mode']} | " + " | ".join(cells)
            + f" | {r['train_inference'][20]:.3f} | {r['gap'][20]:+.2f}"
            + f" | {r['warned']}/{r['runs']} |"
        )  # fmt: skip
    lines += [
        "",
        "Best mean test accuracy, cases won: " + ", ".join(f"{m} {n}" for m, n in tally.items()),
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--framework", default="torch")
    p.add_argument("--backbones", default=",".join(BACKBONES))
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    rows = run(args.framework, args.backbones.split(","), args.seeds)
    tally = wins(rows)
    doc = {
        "command": "python benchmarks/batchnorm.py",
        "seeds": args.seeds,
        "shots": list(SHOTS),
        "input_shape": list(SHAPE),
        "fit": "FullFineTune, Adam, lr 1e-3, 10 epochs, batch 16, cosine",
        "wins": tally,
        "rows": rows,
    }
    write_study(args.out, "batchnorm", doc, markdown(rows, args.seeds, tally))


if __name__ == "__main__":
    main()
