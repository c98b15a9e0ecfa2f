"""The linear probe with default options against scikit-learn's logistic regression.

A frozen backbone, a linear head, ``tk.fit(model, train, freeze=FeatureExtraction())``
with no ``lr`` or ``epochs``: transferkit solves the head to its optimum on the cached
features. The reference is scikit-learn's ``LogisticRegression()`` (default settings) on
the very same features; the earlier default (gradient steps, ``epochs=30`` at the
default ``lr``) is shown beside them. Tasks: BBC News topics with all-MiniLM-L6-v2
(2/4/8/16 labels per class) and faces vs. non-faces with EfficientNet-Lite0 at 64x64
(1/5/10/20), and digits 5-9 with the ``cnn`` pretrained on digits 0-4, each over
``--seeds`` seeds; test accuracy, mean and std.

    python benchmarks/linear_probe.py [--seeds 3] [--tasks bbc,faces,digits] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import transferkit as tk
from transferkit.bench.report import write_study

TASKS = {
    "bbc": ("hf:all-MiniLM-L6-v2", None, tk.datasets.bbc_news, (2, 4, 8, 16)),
    "faces": ("torch:efficientnet_lite0", (64, 64, 3), tk.datasets.faces, (1, 5, 10, 20)),
    "digits": ("torch:cnn", None, tk.datasets.digits_transfer, (1, 5, 10, 20)),
}
CLASSES = {"bbc": 5, "faces": 2, "digits": 5}


def sklearn_probe(model: tk.Model, train: tk.Dataset, test: tk.Dataset) -> float:
    from sklearn.linear_model import LogisticRegression

    f = model.features(train.x).astype(np.float64)
    clf = LogisticRegression().fit(f, train.y)
    return float(clf.score(model.features(test.x).astype(np.float64), test.y))


def run_task(name: str, seeds: int) -> dict:
    backbone, shape, loader, shots = TASKS[name]
    model = tk.build(backbone, head=tk.Classifier(CLASSES[name]), input_shape=shape)
    rows = {"solver (default)": {}, "scikit-learn LogisticRegression()": {}, "epochs=30": {}}
    seconds = {k: 0.0 for k in rows}
    for k in shots:
        for seed in range(seeds):
            train, test = loader(shots=k, seed=seed)
            for label in rows:
                model.reset_head(seed)
                t0 = time.perf_counter()
                if label.startswith("scikit"):
                    acc = sklearn_probe(model, train, test)
                else:
                    opts = {} if label.startswith("solver") else {"epochs": 30}
                    freeze = tk.freeze.FeatureExtraction()
                    tk.fit(model, train, freeze=freeze, seed=seed, verbose=0, **opts)
                    acc = model.evaluate(test)["accuracy"]
                seconds[label] += time.perf_counter() - t0
                rows[label].setdefault(k, []).append(acc)
        print(name, k, {lab: round(float(np.mean(v[k])), 4) for lab, v in rows.items()})
    return {
        "task": name,
        "backbone": backbone,
        "shots": list(shots),
        "rows": {
            lab: {
                "mean": {k: float(np.mean(v)) for k, v in accs.items()},
                "std": {k: float(np.std(v)) for k, v in accs.items()},
                "seconds": seconds[lab],
            }
            for lab, accs in rows.items()
        },
    }


def markdown(results: list[dict], seeds: int) -> str:
    lines = [f"Test accuracy, mean ± std over {seeds} seeds, by labelled examples per class.", ""]
    for r in results:
        lines += [
            f"**{r['task']}** ({r['backbone']}, frozen, linear head)",
            "",
            "| method | " + " | ".join(f"{k} shots" for k in r["shots"]) + " |",
            "|---|" + "---:|" * len(r["shots"]),
        ]
        for label, row in r["rows"].items():
            cells = [f"{row['mean'][k]:.3f} ± {row['std'][k]:.3f}" for k in r["shots"]]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--tasks", default="bbc,faces,digits")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    warnings.filterwarnings("ignore", category=tk.errors.TruncationWarning)
    results = [run_task(t, args.seeds) for t in args.tasks.split(",")]
    doc = {
        "command": "python benchmarks/linear_probe.py",
        "seeds": args.seeds,
        "results": results,
    }
    write_study(args.out, "linear_probe", doc, markdown(results, args.seeds))


if __name__ == "__main__":
    main()
