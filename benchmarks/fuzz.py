"""The long fuzz profile: every reader and writer of ``tests/test_fuzz.py`` fed
``--examples`` mutated inputs (10,000 by default), judged by the same oracle (a correct
result or a transferkit error; never another exception, a hang, memory beyond the bound,
a file outside the input's directory touched, or code executed).

    python benchmarks/fuzz.py [--examples 10000] [-k READER]

Writes ``results/fuzz.json`` and ``results/fuzz.md``: inputs tried and failures per
reader, and the seconds it took.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pytest

from transferkit.bench.report import write_study

HERE = Path(__file__).resolve().parent


class Outcomes:
    """A pytest plugin that keeps each fuzz test's outcome and, on failure, its report."""

    def __init__(self) -> None:
        self.tests: dict[str, dict] = {}

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or report.outcome != "passed":
            name = report.nodeid.split("::")[-1]
            entry = self.tests.setdefault(name, {"outcome": "passed", "seconds": 0.0})
            entry["seconds"] += report.duration
            if report.outcome != "passed":
                entry["outcome"] = report.outcome
                entry["failure"] = str(report.longrepr)[-2000:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=10_000)
    ap.add_argument("-k", default=None, help="only the fuzz tests matching this expression")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    os.environ["TRANSFERKIT_FUZZ"] = "long"
    os.environ["TRANSFERKIT_FUZZ_EXAMPLES"] = str(args.examples)
    started = time.time()
    outcomes = Outcomes()
    argv = [str(HERE.parent / "tests" / "test_fuzz.py"), "-q", "-p", "no:cacheprovider"]
    argv += ["-k", args.k] if args.k else []
    code = pytest.main(argv, plugins=[outcomes])
    fuzz = sys.modules.get("test_fuzz") or sys.modules.get("tests.test_fuzz")
    counts = dict(fuzz.COUNTS) if fuzz is not None else {}
    seconds = time.time() - started
    failed = sorted(n for n, t in outcomes.tests.items() if t["outcome"] != "passed")
    lines = [
        f"Fuzz, long profile: {args.examples:,} inputs per test asked, "
        f"{sum(counts.values()):,} inputs in all, {len(failed)} failing tests, "
        f"{seconds / 60:.1f} min (`python benchmarks/fuzz.py --examples {args.examples}`).",
        "",
        "| reader | inputs |",
        "|---|---:|",
    ]
    for reader, n in sorted(counts.items()):
        lines.append(f"| {reader} | {n:,} |")
    lines += ["", "| test | outcome | seconds |", "|---|---|---:|"]
    for name, t in sorted(outcomes.tests.items()):
        lines.append(f"| {name} | {t['outcome']} | {t['seconds']:.0f} |")
    doc = {
        "examples": args.examples,
        "inputs": counts,
        "tests": outcomes.tests,
        "failed": failed,
        "seconds": seconds,
        "pytest_exit": int(code),
    }
    write_study(args.out, "fuzz", doc, "\n".join(lines))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
