"""L2-SP against plain fine-tuning (and WiSE-FT interpolation) on the embedded tasks.

Full fine-tuning as the demo does it (Adam, lr 1e-3, 30 epochs, batch 16, cosine
schedule) with ``regularizer=tk.regularizers.L2SP(alpha, beta=0.01)`` for each
``--alphas`` value (alpha 0: no regulariser at all), plus the plain fine-tuned model
interpolated halfway back to its pretrained backbone (``tk.interpolate(..., 0.5)``).
Tasks: the ``cnn`` pretrained on digits 0-4 fine-tuned on digits 5-9 (32x32), and the
ImageNet EfficientNet-Lite0 fine-tuned on faces vs. non-faces (64x64); 1/5/10/20 labels
per class, ``--seeds`` seeds; test accuracy mean and std per shot count.

    python benchmarks/l2sp_sweep.py [--seeds 3] [--tasks digits,faces] [--framework torch]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import transferkit as tk
from transferkit.bench.report import write_study

TASKS = {
    "digits": ("cnn", None, tk.datasets.digits_transfer, 5),
    "faces": ("efficientnet_lite0", (64, 64, 3), tk.datasets.faces, 2),
}
SHOTS = (1, 5, 10, 20)


def fine_tune(name, framework, train, seed, regularizer=None):
    arch, shape, _, classes = TASKS[name]
    model = tk.build(
        f"{framework}:{arch}", head=tk.Classifier(classes), input_shape=shape, seed=seed
    )
    tk.fit(
        model, train, freeze=tk.freeze.FullFineTune(), epochs=30, lr=1e-3, batch_size=16,
        seed=seed, verbose=0, regularizer=regularizer,
    )  # fmt: skip
    return model


def run_task(name: str, framework: str, alphas: list[float], seeds: int) -> dict:
    arch, shape, loader, classes = TASKS[name]
    labels = [f"L2-SP alpha={a:g}" if a else "fine-tuned (no regularizer)" for a in alphas]
    labels.append("fine-tuned, interpolated 0.5")
    accs: dict[str, dict[int, list[float]]] = {lab: {} for lab in labels}
    t0 = time.perf_counter()
    for k in SHOTS:
        for seed in range(seeds):
            train, test = loader(shots=k, seed=seed)
            for a, lab in zip(alphas, labels, strict=False):
                reg = tk.regularizers.L2SP(alpha=a, beta=0.01) if a else None
                model = fine_tune(name, framework, train, seed, reg)
                accs[lab].setdefault(k, []).append(model.evaluate(test)["accuracy"])
                if not a:
                    start = tk.build(
                        f"{framework}:{arch}", head=model.head, input_shape=shape, seed=seed
                    )
                    mixed = tk.interpolate(start, model, 0.5)
                    accs[labels[-1]].setdefault(k, []).append(mixed.evaluate(test)["accuracy"])
        print(name, k, {lab: round(float(np.mean(v[k])), 3) for lab, v in accs.items()})
    return {
        "task": name,
        "backbone": f"{framework}:{arch}",
        "input_shape": list(shape) if shape else None,
        "seconds": time.perf_counter() - t0,
        "rows": {
            lab: {
                "mean": {k: float(np.mean(v)) for k, v in a.items()},
                "std": {k: float(np.std(v)) for k, v in a.items()},
            }
            for lab, a in accs.items()
        },
    }


def markdown(results: list[dict], seeds: int) -> str:
    lines = [f"Test accuracy, mean ± std over {seeds} seeds, by labelled examples per class.", ""]
    for r in results:
        lines += [
            f"**{r['task']}** ({r['backbone']}, full fine-tuning, 30 epochs)",
            "",
            "| method | " + " | ".join(f"{k} shots" for k in SHOTS) + " |",
            "|---|" + "---:|" * len(SHOTS),
        ]
        best = {k: max(row["mean"][k] for row in r["rows"].values()) for k in SHOTS}
        for label, row in r["rows"].items():
            cells = [
                ("**{:.3f}**" if row["mean"][k] == best[k] else "{:.3f}").format(row["mean"][k])
                + f" ± {row['std'][k]:.3f}"
                for k in SHOTS
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--tasks", default="digits,faces")
    p.add_argument("--framework", default="torch")
    p.add_argument("--alphas", default="0,0.001,0.01,0.1,1")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    alphas = [float(a) for a in args.alphas.split(",")]
    results = [run_task(t, args.framework, alphas, args.seeds) for t in args.tasks.split(",")]
    doc = {
        "command": "python benchmarks/l2sp_sweep.py",
        "seeds": args.seeds,
        "alphas": alphas,
        "beta": 0.01,
        "results": results,
    }
    write_study(args.out, "l2sp_sweep", doc, markdown(results, args.seeds))


if __name__ == "__main__":
    main()
