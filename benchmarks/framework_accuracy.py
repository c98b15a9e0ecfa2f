"""Accuracy that agrees: the benchmark suite's accuracy part in every framework, with
several seeds, and the two spreads that say whether frameworks train alike.

The cases are the default suite's (``transferkit bench``): each backbone of a task is fitted
from the same weights in every framework with ``tk.fit`` (the task's freeze policy, Adam,
epochs, learning rate and batch size, ``batchnorm`` at its default), and its test accuracy
after the last epoch is recorded per labels-per-class. A seed picks the few labelled
examples and the shuffling, so seeds differ in data while frameworks share it. For each
backbone and label count:

- *between frameworks*: for one seed, the largest minus the smallest accuracy over the
  frameworks, averaged over seeds;
- *between seeds*: for one framework, the largest minus the smallest accuracy over the
  seeds, averaged over frameworks.

Frameworks train alike when the first is no larger than the second. Each framework variant
runs in a process of its own (Keras's backend is fixed per process), as in the suite.

    python benchmarks/framework_accuracy.py [--seeds 3] [--frameworks torch,flax,keras*]
        [--backbones cnn,resnet18] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from transferkit.bench.report import write_study
from transferkit.bench.runner import _case_spec, process_env
from transferkit.bench.suite import expand, load_suite

FRAMEWORKS = ["torch", "flax", "keras[tensorflow]", "keras[jax]", "keras[torch]"]
#: the control: torch again, its training inputs scaled by 1 + PERTURB (rounding-sized)
PERTURB = 1e-7
CONTROL = "torch(x·(1+1e-7))"


def worker(specs_path: str, out_path: str) -> None:
    """In the framework's own process: every (backbone, seed) spec in the file."""
    from transferkit.bench import case
    from transferkit.bench.case import accuracy

    plain = case.task_data

    def perturbed(task, shots, seed):  # the control: training inputs x (1 + 1e-7)
        train, test = plain(task, shots, seed)
        if shots is not None:
            train.x = (train.x * np.float32(1 + PERTURB)).astype(np.float32)
        return train, test

    rows = []
    for spec in json.loads(Path(specs_path).read_text()):
        case.task_data = perturbed if spec.get("perturb") else plain
        t0 = time.perf_counter()
        acc = accuracy(spec, spec["task"])
        per = {k: v["final_accuracy"] for k, v in acc["per_shots"].items()}
        rows.append({"backbone": spec["backbone"], "seed": spec["seed"], "accuracy": per})
        print(spec["variant"] or spec["framework"], spec["backbone"], spec["seed"], per,
              f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
        Path(out_path).write_text(json.dumps(rows))


def cases(task_name: str, frameworks: list[str], backbones: list[str]):
    suite = load_suite("default")
    chosen = []
    for c in expand(suite):
        if c.task.name != task_name or not c.first_batch:
            continue
        short = c.backbone.partition(":")[2]
        if backbones and short not in backbones:
            continue
        if frameworks and not any(fnmatch.fnmatch(c.framework, p) for p in frameworks):
            continue
        chosen.append(c)
    return suite, chosen


def run(
    task: str, frameworks: list[str], backbones: list[str], seeds: int, control: bool
) -> list[dict]:
    suite, chosen = cases(task, ["torch", *frameworks], backbones)
    by_fw: dict[str, list] = {}
    for c in chosen:
        by_fw.setdefault(c.framework, []).append(c)
    if control and "torch" in by_fw:
        by_fw[CONTROL] = by_fw["torch"]
    if "torch" not in frameworks:
        by_fw.pop("torch", None)
    work = Path(tempfile.mkdtemp(prefix="tk-accuracy-"))  # one random init for all
    rows = []
    for fw, fw_cases in by_fw.items():
        specs = []
        for c in fw_cases:
            for seed in range(seeds):
                spec = _case_spec(c, suite, "transferkit", work)
                specs.append({**spec, "seed": seed, "perturb": fw == CONTROL})
        specs_path, out_path = work / f"{fw}.json", work / f"{fw}.out.json"
        specs_path.write_text(json.dumps(specs))
        cmd = [sys.executable, __file__, "--worker", str(specs_path), str(out_path)]
        subprocess.run(cmd, env=process_env(fw_cases[0]), check=True)
        for r in json.loads(out_path.read_text()):
            rows.append({"framework": fw, "task": task, **r})
    return rows


def spreads(rows: list[dict]) -> list[dict]:
    """Per (backbone architecture, labels per class): mean accuracy per framework, and the
    between-framework and between-seed spreads."""
    out = []
    archs = sorted({r["backbone"].partition(":")[2] for r in rows})
    for arch in archs:
        mine = [r for r in rows if r["backbone"].partition(":")[2] == arch]
        fws = sorted({r["framework"] for r in mine} - {CONTROL})
        ctl = {r["seed"]: r["accuracy"] for r in mine if r["framework"] == CONTROL}
        seeds = sorted({r["seed"] for r in mine})
        for k in mine[0]["accuracy"]:
            acc = {(r["framework"], r["seed"]): r["accuracy"][k] for r in mine}
            between_fw = [np.ptp([acc[f, s] for f in fws]) for s in seeds]
            between_seed = [np.ptp([acc[f, s] for s in seeds]) for f in fws]
            # standard deviations: ranges grow with the number of values (5 frameworks,
            # 3 seeds), deviations do not
            sd_fw = [np.std([acc[f, s] for f in fws], ddof=1) for s in seeds]
            sd_seed = [np.std([acc[f, s] for s in seeds], ddof=1) for f in fws]
            others = [f for f in fws if f != "torch"]
            row = {
                "backbone": arch,
                "labels_per_class": int(k),
                "mean": {f: float(np.mean([acc[f, s] for s in seeds])) for f in fws},
                "between_frameworks": float(np.mean(between_fw)),
                "between_seeds": float(np.mean(between_seed)),
                "sd_frameworks": float(np.mean(sd_fw)),
                "sd_seeds": float(np.mean(sd_seed)),
                "vs_torch": float(
                    np.mean([abs(acc[f, s] - acc["torch", s]) for f in others for s in seeds])
                ),  # fmt: skip
            }
            if ctl:
                row["control_vs_torch"] = float(
                    np.mean([abs(ctl[s][k] - acc["torch", s]) for s in seeds])
                )
            row["agree"] = bool(row["sd_frameworks"] <= row["sd_seeds"])
            out.append(row)
    return out


def markdown(table: list[dict], seeds: int, command: str, minutes: float) -> str:
    fws = sorted({f for t in table for f in t["mean"]})
    lines = [
        "# Accuracy in every framework, several seeds",
        "",
        f"Command: `{command}`; {minutes:.1f} min. Test accuracy after the last epoch of "
        f"`tk.fit` (the default suite's digits task), mean over {seeds} seeds; spreads are "
        "max - min (between frameworks: per seed, averaged over seeds; between seeds: per "
        "framework, averaged over frameworks); sd likewise with standard deviations. "
        "'frameworks vs torch': the mean |accuracy - torch's| over the other frameworks and "
        "seeds; the last column the same for the control, torch with its training inputs "
        "scaled by 1 + 1e-7: what rounding alone does to the same fit.",
        "",
        "| backbone | labels/class | " + " | ".join(fws) + " | range between frameworks | "
        "range between seeds | sd between frameworks | sd between seeds | "
        "frameworks vs torch | torch(x·(1+1e-7)) vs torch |",
        "|---|---|" + "---|" * len(fws) + "---|---|---|---|---|---|",
    ]
    for t in table:
        cells = " | ".join(f"{t['mean'].get(f, float('nan')):.3f}" for f in fws)
        ctl = f"{t['control_vs_torch']:.3f}" if "control_vs_torch" in t else "-"
        lines.append(f"{spread_row(t, cells)} {ctl} |")
    return "\n".join(lines) + "\n"


def spread_row(t: dict, cells: str) -> str:
    """A table row of :func:`spreads`' figures: case, label count, the frameworks'
    ``cells``, ranges, standard deviations and the difference from torch."""
    return (
        f"| {t['backbone']} | {t['labels_per_class']} | {cells} | "
        f"{t['between_frameworks']:.3f} | {t['between_seeds']:.3f} | "
        f"{t['sd_frameworks']:.3f} | {t['sd_seeds']:.3f} | {t['vs_torch']:.3f} |"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--task", default="digits")
    p.add_argument("--frameworks", default="", help="comma-separated globs; default all")
    p.add_argument("--backbones", default="", help="comma-separated; default the suite's")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--no-control", action="store_true", help="skip the perturbed torch run")
    p.add_argument("--reuse", help="a framework_accuracy.json whose rows to keep (not rerun)")
    a = p.parse_args()
    t0 = time.perf_counter()
    fws = [f for f in a.frameworks.split(",") if f]
    rows = json.loads(Path(a.reuse).read_text())["rows"] if a.reuse else []
    done = {r["framework"] for r in rows}
    todo = [f for f in (fws or FRAMEWORKS) if f not in done]
    rows += run(a.task, todo, [b for b in a.backbones.split(",") if b], a.seeds,
                not a.no_control and CONTROL not in done)  # fmt: skip
    table = spreads(rows)
    minutes = (time.perf_counter() - t0) / 60
    command = "python benchmarks/framework_accuracy.py " + " ".join(sys.argv[1:])
    write_study(
        a.out,
        "framework_accuracy",
        {"command": command, "minutes": minutes, "seeds": a.seeds, "rows": rows, "table": table},
        markdown(table, a.seeds, command, minutes),
    )


if __name__ == "__main__":
    main()
