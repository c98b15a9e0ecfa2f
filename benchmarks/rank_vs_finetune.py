"""Do transferability scores rank backbones as fine-tuning does? ``tk.rank`` against the truth.

For each task (faces vs. non-faces, digits 5-9, BBC News), seed and candidate backbone:
every metric's score from one forward pass (``tk.rank``), and the test accuracy after
fine-tuning (``FullFineTune``, Adam, lr 1e-3, 10 epochs, batch 16) and after a linear
probe (frozen backbone, the head solved). Candidates: every pretrained backbone available
offline, and the same architectures from a random initialisation (``weights=None``) as
negative controls. Reported per metric and task: Kendall's tau between the scores and
each accuracy (mean over seeds), how often the top-scored candidate is the most accurate
one (top-1 hit), and the seconds each metric took against fine-tuning every candidate.

    python benchmarks/rank_vs_finetune.py [--seeds 3] [--tasks faces,digits,bbc]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from scipy.stats import kendalltau

import transferkit as tk
from transferkit import transferability
from transferkit.bench.report import write_study

IMAGE = (32, 32, 3)
IMAGES = [
    ("torch:cnn", {}),
    ("torch:mlp", {}),
    ("torch:efficientnet_lite0", {"input_shape": IMAGE}),
    ("torch:cnn", {"weights": None}),
    ("torch:mlp", {"weights": None}),
    ("torch:efficientnet_lite0", {"weights": None, "input_shape": IMAGE}),
    ("torch:resnet18", {"weights": None, "input_shape": IMAGE}),
]
TEXT = [
    ("hf:all-MiniLM-L6-v2", {"input_shape": (128,)}),
    ("hf:all-MiniLM-L6-v2", {"weights": None, "input_shape": (128,)}),
]
TASKS = {
    "faces": (lambda seed: tk.datasets.faces(shots=10, seed=seed), IMAGES),
    "digits 5-9": (lambda seed: tk.datasets.digits_transfer(shots=10, seed=seed), IMAGES),
    "bbc news": (lambda seed: tk.datasets.bbc_news(shots=8, seed=seed, test_size=250), TEXT),
}
METRICS = [m for m, info in transferability.METRICS.items() if info.needs == "features"]


def label(name: str, options: dict) -> str:
    return name + (" (random init)" if options.get("weights", "pretrained") is None else "")


def one_seed(task: str, seed: int) -> list[dict]:
    loader, candidates = TASKS[task]
    train, test = loader(seed)
    classes = train.num_classes
    rows = []
    for name, options in candidates:
        build = dict(head=tk.Classifier(classes), seed=seed, **options)
        t0 = time.perf_counter()
        model = tk.build(name, **build)
        features = model.features(train.x)
        feature_s = time.perf_counter() - t0
        scores, seconds = {}, {}
        for metric in METRICS:
            t1 = time.perf_counter()
            seeded = {"seed": seed} if metric in ("probe", "nleep") else {}
            scores[metric] = transferability.score(metric, features, train.y, **seeded)
            seconds[metric] = feature_s + time.perf_counter() - t1
        t2 = time.perf_counter()
        tk.fit(model, train, freeze=tk.freeze.FeatureExtraction(), verbose=0, seed=seed)
        probe_acc = model.evaluate(test)["accuracy"]
        probe_s = time.perf_counter() - t2
        model = tk.build(name, **build)
        t3 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tk.fit(
                model, train, freeze=tk.freeze.FullFineTune(), epochs=10, lr=1e-3,
                batch_size=16, seed=seed, verbose=0,
            )  # fmt: skip
        rows.append(
            {
                "candidate": label(name, options),
                "scores": scores,
                "seconds": seconds,
                "finetuned": model.evaluate(test)["accuracy"],
                "finetune_s": time.perf_counter() - t3,
                "probed": probe_acc,
                "probe_s": probe_s,
            }
        )
        shown = {m: round(v, 3) for m, v in scores.items()}
        print(task, seed, rows[-1]["candidate"], round(rows[-1]["finetuned"], 3),
              round(probe_acc, 3), shown, flush=True)  # fmt: skip
    return rows


def agreement(runs: list[list[dict]], truth: str) -> dict[str, dict[str, float]]:
    out = {}
    for metric in METRICS:
        taus, hits = [], []
        for rows in runs:
            s = [r["scores"][metric] for r in rows]
            a = [r[truth] for r in rows]
            tau = kendalltau(s, a).statistic
            taus.append(0.0 if np.isnan(tau) else float(tau))
            hits.append(a[int(np.argmax(s))] == max(a))
        out[metric] = {"tau": float(np.mean(taus)), "tau_std": float(np.std(taus)),
                       "top1": float(np.mean(hits))}  # fmt: skip
    return out


def markdown(results: list[dict], seeds: int) -> str:
    lines = [
        f"Kendall's tau between each metric's scores and the test accuracy (mean over "
        f"{seeds} seeds; 1: the same order), and top-1 hits (the top-scored candidate is "
        "the most accurate), after fine-tuning and after a linear probe. Seconds: features "
        "and score for every candidate, against fine-tuning every candidate.",
        "",
        "| task | metric | tau, fine-tuned | top-1, fine-tuned | tau, linear probe | "
        "top-1, probe | seconds (all candidates) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for metric in METRICS:
            ft, lp = r["finetuned"][metric], r["probed"][metric]
            lines.append(
                f"| {r['task']} | {metric} | {ft['tau']:+.2f} ± {ft['tau_std']:.2f} | "
                f"{ft['top1']:.2f} | {lp['tau']:+.2f} ± {lp['tau_std']:.2f} | {lp['top1']:.2f} | "
                f"{r['metric_seconds'][metric]:.1f} |"
            )
        lines.append(
            f"| {r['task']} | *fine-tuning every candidate* | | | | | {r['finetune_seconds']:.1f} |"
        )
    lines += ["", "Mean test accuracy per candidate (fine-tuned / linear probe):", ""]
    for r in results:
        cells = ", ".join(f"{c} {a[0]:.3f} / {a[1]:.3f}" for c, a in r["accuracy"].items())
        lines.append(f"- {r['task']}: {cells}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--tasks", default="faces,digits,bbc")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    names = {"faces": "faces", "digits": "digits 5-9", "bbc": "bbc news"}
    results = []
    for key in args.tasks.split(","):
        task = names[key]
        runs = [one_seed(task, seed) for seed in range(args.seeds)]
        candidates = [r["candidate"] for r in runs[0]]
        results.append(
            {
                "task": task,
                "candidates": candidates,
                "finetuned": agreement(runs, "finetuned"),
                "probed": agreement(runs, "probed"),
                "metric_seconds": {
                    m: float(np.mean([sum(r["seconds"][m] for r in rows) for rows in runs]))
                    for m in METRICS
                },
                "finetune_seconds": float(
                    np.mean([sum(r["finetune_s"] for r in rows) for rows in runs])
                ),
                "accuracy": {
                    c: (
                        float(np.mean([rows[i]["finetuned"] for rows in runs])),
                        float(np.mean([rows[i]["probed"] for rows in runs])),
                    )
                    for i, c in enumerate(candidates)
                },
                "runs": runs,
            }
        )
    doc = {"command": "python benchmarks/rank_vs_finetune.py", "seeds": args.seeds,
           "metrics": METRICS, "results": results}  # fmt: skip
    write_study(args.out, "rank_vs_finetune", doc, markdown(results, args.seeds))


if __name__ == "__main__":
    main()
