"""The demo in every framework: do frameworks differ by more than seeds do?

Reads the ``demo.json`` of ``transferkit demo --frameworks torch,flax,keras --seeds 3`` (or
of one run per framework, merged: the demo's rows of one framework do not depend on the
others), and for every network row that all frameworks ran (task, method, labels per
class) compares, as ``benchmarks/framework_accuracy.py`` does:

- *between frameworks*: for one seed, the spread of accuracy over the frameworks
  (max - min, and the standard deviation), averaged over seeds;
- *between seeds*: for one framework, the spread over the seeds, averaged over
  frameworks.

Frameworks train alike when the first is no larger than the second. Writes
``demo_frameworks.{json,md}`` and the merged demo table (``demo_table.md``).

    python benchmarks/demo_frameworks.py DEMO_JSON [DEMO_JSON ...] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from framework_accuracy import spread_row, spreads

from transferkit import demo, owned
from transferkit.bench.report import write_study


def merge(paths: list[str]) -> dict:
    """One demo result from several: rows of every framework, each baseline row once."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    rows, seen = [], set()
    for doc in docs:
        for row in doc["rows"]:
            key = (row["task"], row["method"])
            if key not in seen:
                seen.add(key)
                for field in ("accuracy", "std", "per_seed"):  # JSON's keys are strings
                    row[field] = {int(k): v for k, v in row[field].items()}
                rows.append(row)
    order = {t: i for i, t in enumerate(demo.TASKS)}
    labels = [m.label for m in demo.METHODS]

    def rank(row: dict) -> tuple:
        method = row["method"].partition(": ")[2] if row["framework"] else row["method"]
        return order[row["task"]], labels.index(method), row["framework"] or ""

    frameworks = [f for d in docs for f in d["frameworks"]]
    seeds = {d["seeds"] for d in docs}
    if len(seeds) != 1 or len({tuple(d["shots"]) for d in docs}) != 1:
        raise SystemExit("the demo runs differ in seeds or label counts: they cannot merge")
    return {
        "shots": docs[0]["shots"],
        "seeds": seeds.pop(),
        "frameworks": frameworks,
        "rows": sorted(rows, key=rank),
        "seconds": {f: d["seconds"] for d in docs for f in d["frameworks"]},
    }


def as_runs(result: dict) -> list[dict]:
    """The network rows as framework_accuracy's runs: one per framework and seed."""
    runs = []
    for row in result["rows"]:
        if not row["framework"]:
            continue
        case = f"demo:{row['task']} / {row['method'].partition(': ')[2]}"
        for seed in range(result["seeds"]):
            accuracy = {k: v[seed] for k, v in row["per_seed"].items()}
            runs.append({"framework": row["framework"], "backbone": case, "seed": seed,
                         "accuracy": accuracy})  # fmt: skip
    return runs


def markdown(table: list[dict], frameworks: list[str], seeds: int, command: str) -> str:
    lines = [
        "# The demo in every framework",
        "",
        f"Command: `{command}`. Test accuracy, mean over {seeds} seeds, of every network row "
        "of the demo that every framework ran; spreads are max - min and standard "
        "deviations (between frameworks: per seed, averaged over seeds; between seeds: per "
        "framework, averaged over frameworks); 'vs torch': the mean |accuracy - torch's| "
        "over the other frameworks and seeds.",
        "",
        "| task / method | labels/class | " + " | ".join(frameworks) + " | range between "
        "frameworks | range between seeds | sd between frameworks | sd between seeds | "
        "vs torch |",
        "|---|---|" + "---|" * len(frameworks) + "---|---|---|---|---|",
    ]
    for t in table:
        cells = " | ".join(f"{t['mean'][f]:.3f}" for f in frameworks)
        lines.append(spread_row(t, cells))
    agree = sum(t["agree"] for t in table)
    lines += ["", f"sd between frameworks <= sd between seeds in {agree} of {len(table)} cells."]
    identical = sum(t["between_frameworks"] == 0 for t in table)
    lines.append(f"Identical accuracy in every framework, seed by seed: {identical} cells.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("demo_json", nargs="+")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--command", default="transferkit demo --frameworks torch,flax,keras --seeds 3")
    a = p.parse_args()
    result = merge(a.demo_json)
    table = spreads(as_runs(result))  # each case named "task / method"
    frameworks = result["frameworks"]
    text = markdown(table, frameworks, result["seeds"], a.command)
    write_study(a.out, "demo_frameworks", {"table": table, **result}, text)
    demo_md = demo.table(result["rows"], result["shots"], result["seeds"])
    demo_md += "\n\n" + "\n".join(demo.verdict(result["rows"], result["shots"]))
    owned.write_text(Path(a.out) / "demo_table.md", demo_md + "\n", "benchmark result")
    print(demo_md)
    print("between frameworks vs seeds (sd):", np.mean([t["sd_frameworks"] for t in table]),
          np.mean([t["sd_seeds"] for t in table]))  # fmt: skip


if __name__ == "__main__":
    main()
