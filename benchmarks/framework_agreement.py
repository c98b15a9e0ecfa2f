"""Do the frameworks fine-tune to the same accuracy? Spread between frameworks vs. seeds.

The same fit (the same pretrained or seeded weights, the same data order, Adam at lr
1e-3, batch 16, ``--epochs`` epochs of full fine-tuning) in every framework, for
``--seeds`` seeds; digits 5-9 with 20 labels per class at 32x32 for the ``cnn``
(pretrained on digits 0-4) and ``resnet18`` (a seeded random initialisation, the same in
every framework through the canonical weights). For each architecture the report gives
test accuracy per framework and seed, the largest spread between frameworks for one
seed, and the spread between seeds within each framework.

    python benchmarks/framework_agreement.py [--seeds 3] [--frameworks torch,flax,keras]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import transferkit as tk
from transferkit import weights as wio
from transferkit.bench.report import write_study

ARCHS = {"cnn": "pretrained", "resnet18": None}


def run(arch: str, frameworks: list[str], seeds: int, epochs: int) -> dict:
    acc: dict[str, list[float]] = {fw: [] for fw in frameworks}
    for seed in range(seeds):
        train, test = tk.datasets.digits_transfer(shots=20, seed=seed)
        with tempfile.TemporaryDirectory() as tmp:
            weights = ARCHS[arch]
            if weights is None:  # one seeded random backbone, shared by every framework
                ref = tk.build(f"torch:{arch}", head=tk.Classifier(5), weights=None, seed=seed)
                backbone = {k: v for k, v in ref.get_weights().items() if k[:9] == "backbone."}
                weights = str(Path(tmp) / "backbone.safetensors")
                wio.save(backbone, weights)
            for fw in frameworks:
                model = tk.build(
                    f"{fw}:{arch}",
                    head=tk.Classifier(5),
                    weights=weights,
                    input_shape=(32, 32, 3),
                    seed=seed,
                )
                tk.fit(model, train, epochs=epochs, lr=1e-3, batch_size=16, seed=seed, verbose=0)
                acc[fw].append(model.evaluate(test)["accuracy"])
        print(arch, seed, {fw: round(a[-1], 4) for fw, a in acc.items()}, flush=True)
    table = np.array([acc[fw] for fw in frameworks])  # (frameworks, seeds)
    return {
        "arch": arch,
        "accuracy": acc,
        "between_frameworks_max": float((table.max(0) - table.min(0)).max()),
        "between_seeds": {fw: float(np.ptp(acc[fw])) for fw in frameworks},
    }


def markdown(results: list[dict], seeds: int) -> str:
    lines = [
        f"Test accuracy (digits 5-9, 20 labels/class, 32x32), {seeds} seeds; spreads are "
        "max - min.",
        "",
        "| model | framework | " + " | ".join(f"seed {s}" for s in range(seeds)) + " | spread "
        "between seeds |",
        "|---|---|" + "---:|" * (seeds + 1),
    ]
    for r in results:
        for fw, a in r["accuracy"].items():
            cells = " | ".join(f"{v:.3f}" for v in a)
            lines.append(f"| {r['arch']} | {fw} | {cells} | {r['between_seeds'][fw]:.3f} |")
        lines.append(
            f"| {r['arch']} | largest spread between frameworks for one seed | "
            + " | " * (seeds - 1)
            + f" | {r['between_frameworks_max']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--frameworks", default="torch,flax,keras")
    p.add_argument("--archs", default="cnn,resnet18")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    frameworks = args.frameworks.split(",")
    results = [run(a, frameworks, args.seeds, args.epochs) for a in args.archs.split(",")]
    doc = {
        "command": "python benchmarks/framework_agreement.py",
        "seeds": args.seeds,
        "epochs": args.epochs,
        "results": results,
    }
    write_study(args.out, "framework_agreement", doc, markdown(results, args.seeds))


if __name__ == "__main__":
    main()
