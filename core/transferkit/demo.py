"""``transferkit demo``: does transfer learning solve data scarcity? Measured honestly.

Two real image tasks that ship offline (faces vs. non-faces from Labeled Faces in the
Wild; handwritten digits 5-9), 1 to 20 labels per class, several seeds. Compared: a
classical baseline (logistic regression on pixels), a network trained from scratch,
and pretrained backbones (the ``cnn`` pretrained on digits 0-4, the ImageNet
EfficientNet-Lite0) used as frozen feature extractors or fine-tuned, in every installed
framework. The table reports whatever wins.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import datasets, owned
from .builder import build
from .data import Dataset
from .freeze import FeatureExtraction, FreezePolicy, FullFineTune
from .heads import Classifier
from .interpolation import interpolate
from .plugins import registry
from .regularizers import L2SP, Regularizer
from .training import fit

TASKS: dict[str, Callable[..., tuple[Dataset, Dataset]]] = {
    "faces": datasets.faces,
    "digits 5-9": datasets.digits_transfer,
}


@dataclass(frozen=True)
class Method:
    label: str
    backbone: str | None  # short name; None for the pixel baseline
    weights: str | None = "pretrained"
    freeze: FreezePolicy | None = None
    epochs: int | None = 30
    lr: float | None = 1e-3
    input_shape: tuple[int, int, int] | None = None
    regularizer: Regularizer | None = None
    #: interpolate the fine-tuned backbone back toward the pretrained one (WiSE-FT)
    interpolate: float | None = None
    #: the tasks it runs on (None: every task)
    tasks: tuple[str, ...] | None = None


#: L2-SP as its paper sets it for few-label fine-tuning (alpha 0.01 toward the start,
#: beta 0.01 on the head); benchmarks/l2sp_sweep.py measures other strengths
L2SP_DEMO = L2SP(alpha=0.01, beta=0.01)
LITE0_64 = (64, 64, 3)

METHODS = (
    Method("pixels + logistic regression", None),
    Method("cnn from scratch", "cnn", weights=None, freeze=FullFineTune()),
    # Frozen backbones: the head is solved to its optimum on cached features (the
    # default when neither epochs nor lr is given).
    Method("cnn (digits 0-4) features", "cnn", freeze=FeatureExtraction(), epochs=None, lr=None),
    Method("cnn (digits 0-4) fine-tuned", "cnn", freeze=FullFineTune()),
    Method("cnn (digits 0-4) fine-tuned + L2-SP", "cnn", regularizer=L2SP_DEMO),
    Method("cnn (digits 0-4) fine-tuned, interpolated 0.5", "cnn", interpolate=0.5),
    Method(
        "efficientnet_lite0 (ImageNet) features",
        "efficientnet_lite0",
        freeze=FeatureExtraction(),
        epochs=None,
        lr=None,
        input_shape=LITE0_64,
    ),
    # Lite0 fine-tuning where ImageNet features matter (faces); 64x64 steps cost seconds
    Method(
        "efficientnet_lite0 (ImageNet) fine-tuned",
        "efficientnet_lite0",
        input_shape=LITE0_64,
        tasks=("faces",),
    ),
    Method(
        "efficientnet_lite0 (ImageNet) fine-tuned + L2-SP",
        "efficientnet_lite0",
        input_shape=LITE0_64,
        regularizer=L2SP_DEMO,
        tasks=("faces",),
    ),
    Method(
        "efficientnet_lite0 (ImageNet) fine-tuned, interpolated 0.5",
        "efficientnet_lite0",
        input_shape=LITE0_64,
        interpolate=0.5,
        tasks=("faces",),
    ),
)


def installed_frameworks() -> list[str]:
    """Frameworks that are installed and realise the demo's backbones."""
    reg = registry()
    return [
        name
        for name, fw in sorted(reg.frameworks.items())
        if not fw.missing() and f"{name}:cnn" in reg.catalog
    ]


def _pixels_lr(train: Dataset, test: Dataset, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000, random_state=seed)
    clf.fit(train.x.reshape(len(train), -1), train.y)
    return float(clf.score(test.x.reshape(len(test), -1), test.y))


def _network(method: Method, framework: str, train: Dataset, test: Dataset, seed: int) -> float:
    model = build(
        f"{framework}:{method.backbone}",
        head=Classifier(len(train.classes)),
        weights=method.weights,
        input_shape=method.input_shape,
        seed=seed,
    )
    fit(
        model,
        train,
        freeze=method.freeze,
        epochs=method.epochs,
        lr=method.lr,
        batch_size=16,
        seed=seed,
        verbose=0,
        regularizer=method.regularizer,
    )
    if method.interpolate is not None:  # back toward the backbone it started from
        start = build(model.spec.name, model.head, method.weights, method.input_shape, seed=seed)
        model = interpolate(start, model, method.interpolate)
    return model.evaluate(test)["accuracy"]


def run(
    quick: bool = False,
    frameworks: Sequence[str] | None = None,
    shots: Sequence[int] = (1, 5, 10, 20),
    seeds: int | None = None,
    out: str | Path = "demo-out",
    stream: TextIO | None = None,
    methods: Sequence[Method] = METHODS,
) -> dict[str, Any]:
    """Run the demo, print the table, write ``demo.json``, ``demo.md`` and ``demo.png``."""
    stream = stream or sys.stdout
    t_start = time.perf_counter()
    frameworks = list(frameworks) if frameworks else installed_frameworks()
    n_seeds = seeds or (1 if quick else 3)
    rows: list[dict[str, Any]] = []
    for task, loader in TASKS.items():
        for method in methods:
            if method.tasks is not None and task not in method.tasks:
                continue
            for fw in [None] if method.backbone is None else frameworks:
                label = method.label if fw is None else f"{fw}: {method.label}"
                accs: dict[int, list[float]] = {}
                for k in shots:
                    for seed in range(n_seeds):
                        train, test = loader(shots=k, seed=seed)
                        acc = (
                            _pixels_lr(train, test, seed)
                            if fw is None
                            else _network(method, fw, train, test, seed)
                        )
                        accs.setdefault(k, []).append(acc)
                rows.append(
                    {
                        "task": task,
                        "method": label,
                        "framework": fw,
                        "transfer": method.weights == "pretrained" and fw is not None,
                        "accuracy": {k: float(np.mean(v)) for k, v in accs.items()},
                        "std": {k: float(np.std(v)) for k, v in accs.items()},
                        "per_seed": {k: [float(a) for a in v] for k, v in accs.items()},
                    }
                )
                print(
                    f"  {task:<11} {label:<48} "
                    + "  ".join(f"{np.mean(v):.3f}" for v in accs.values()),
                    file=stream,
                    flush=True,
                )
    result = {"shots": list(shots), "seeds": n_seeds, "frameworks": frameworks, "rows": rows}
    result["which_backbone"] = which_backbone(rows, frameworks[0], shots, n_seeds, methods)
    return _report(result, t_start, Path(out) / "demo", stream)


def which_backbone(
    rows: list[dict[str, Any]], fw: str, shots: Sequence[int], seeds: int, methods: Sequence
) -> list[dict[str, Any]]:
    """Which backbone? ``tk.rank`` (LogME) on each few-shot training sample, before any
    fitting, against the frozen-feature rows the demo measured: was its choice the one
    that won?"""
    from .errors import ConfigError
    from .ranking import rank

    frozen = {
        m.backbone: m
        for m in methods
        if isinstance(m.freeze, FeatureExtraction) and m.weights == "pretrained"
    }
    out = []
    for task, loader in TASKS.items():
        labels = {b: f"{fw}: {m.label}" for b, m in frozen.items()}
        measured = {r["method"]: r["accuracy"] for r in rows if r["task"] == task}
        if len(frozen) < 2 or not all(lab in measured for lab in labels.values()):
            continue
        for k in shots:
            picks = []
            for seed in range(seeds):
                train, _ = loader(shots=k, seed=seed)
                candidates = [
                    (f"{fw}:{b}", {"input_shape": m.input_shape}) for b, m in frozen.items()
                ]
                try:
                    picks.append(rank(candidates, train, verbose=0).best.split(":", 1)[1])
                except ConfigError:  # too few examples to score
                    continue
            if not picks:
                continue
            chosen = max(set(picks), key=picks.count)
            won = max(frozen, key=lambda b: measured[labels[b]][k])
            out.append({"task": task, "shots": k, "logme_choice": chosen, "picks": picks,
                        "best_measured": won, "hit": chosen == won})  # fmt: skip
    return out


def _report(result: dict[str, Any], t_start: float, stem: Path, stream: TextIO) -> dict[str, Any]:
    """Print the table and verdicts; write ``stem.{json,md,png}``."""
    rows, shots = result["rows"], result["shots"]
    result["seconds"] = time.perf_counter() - t_start
    result["verdict"] = verdict(rows, shots)
    text = table(rows, shots, result["seeds"]) + "\n\n" + "\n".join(result["verdict"])
    if result.get("which_backbone"):
        text += "\n\nWhich backbone? `tk.rank` (LogME) before fitting, against the measured "
        text += "frozen-feature rows:\n" + "\n".join(
            f"- {w['task']}, {w['shots']} label(s)/class: LogME chose {w['logme_choice']} "
            f"({w['picks'].count(w['logme_choice'])}/{len(w['picks'])} seeds); the better "
            f"features were {w['best_measured']}'s: {'hit' if w['hit'] else 'miss'}"
            for w in result["which_backbone"]
        )
    print("\n" + text, file=stream)
    stem.parent.mkdir(parents=True, exist_ok=True)
    owned.write_text(stem.with_suffix(".json"), json.dumps(result, indent=2), "demo result")
    owned.write_text(stem.with_suffix(".md"), text + "\n", "demo report")
    plot(rows, shots, stem.with_suffix(".png"))
    print(
        f"\nwrote {stem.with_suffix('.md')}, {stem.with_suffix('.png')} ({result['seconds']:.0f}s)",
        file=stream,
    )
    return result


def table(rows: list[dict[str, Any]], shots: Sequence[int], seeds: int) -> str:
    head = "| task | method | " + " | ".join(f"{k} shot{'s' if k > 1 else ''}" for k in shots)
    lines = [
        f"Test accuracy, mean over {seeds} seed(s), by labelled examples per class.",
        "",
        head + " |",
        "|---|---|" + "---:|" * len(shots),
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        task_rows = [r for r in rows if r["task"] == task]
        best = {k: max(r["accuracy"][k] for r in task_rows) for k in shots}
        for r in task_rows:
            cells = [
                f"**{r['accuracy'][k]:.3f}**"
                if r["accuracy"][k] == best[k]
                else f"{r['accuracy'][k]:.3f}"
                for k in shots
            ]
            lines.append(f"| {task} | {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(rows: list[dict[str, Any]], shots: Sequence[int]) -> list[str]:
    """Plain sentences saying which kind of method wins where, transfer or not."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        task_rows = [r for r in rows if r["task"] == task]
        for k in shots:
            top = max(r["accuracy"][k] for r in task_rows)
            winners = [r for r in task_rows if r["accuracy"][k] == top]
            kinds = {r["transfer"] for r in winners}
            kind = (
                "transfer learning and training without transfer tie"
                if len(kinds) == 2
                else "transfer learning wins"
                if kinds == {True}
                else "no transfer wins: transfer does not help here"
            )
            out.append(
                f"{task}, {k} label(s)/class: {kind} "
                f"({', '.join(r['method'] for r in winners)}: {top:.3f})."
            )
    return out


def plot(rows: list[dict[str, Any]], shots: Sequence[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for r in (r for r in rows if r["task"] == task):
            ax.plot(shots, [r["accuracy"][k] for k in shots], marker="o", label=r["method"])
        ax.set_xscale("log")
        ax.set_xticks(list(shots), [str(k) for k in shots])
        ax.set_xlabel("labelled examples per class")
        ax.set_ylabel("test accuracy")
        ax.set_title(task)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    owned.save_figure(fig, path, "demo plot", dpi=110)
    plt.close(fig)
