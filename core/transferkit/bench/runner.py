"""Running a suite: every case in a fresh ``python -m transferkit.bench.case`` process
(so imports, memory and compiler caches never leak from one framework into another),
with a time limit; a crash or a hang is that case's failure, and the suite carries on.
What is done so far is written after every case, so an interrupted run keeps it."""

from __future__ import annotations

import datetime as _dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import owned
from ..errors import ConfigError
from .frameworks import baselines, case_env, check, libraries, registered, resolved_baselines
from .probe import load_average, machine, matmul_gflops
from .report import FLOPS_METHOD, derive, summarise, write
from .suite import Case, Suite, asdict_shallow, expand, load_suite, select


def _case_spec(case: Case, suite: Suite, part: str, work: Path) -> dict[str, Any]:
    t = case.task
    short = case.backbone.partition(":")[2]
    return {
        "backbone": case.backbone,
        "framework": case.plugin,
        "variant": case.variant,
        "batch": case.batch,
        "part": part,
        "task": {
            "name": t.name,
            "data": t.data,
            "shots": list(t.shots) if case.first_batch else [],
            "epochs": t.epochs,
            "lr": t.lr,
            "fit_batch_size": t.fit_batch_size,
            "freeze": t.freeze,
            "target_accuracy": t.target_accuracy,
            "test_size": t.test_size,
        },
        "input_shape": list(t.input_shape.get(short, ())) or None,
        "steps": suite.steps,
        "warmup": suite.warmup,
        "rounds": suite.rounds,
        "seed": suite.seed,
        "work": str(work),
    }


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def run_part(spec: dict[str, Any], timeout_s: float, env: dict[str, str]) -> dict[str, Any]:
    """Run one part of a case in a fresh ``python -m transferkit.bench.case`` process;
    a crash or a hang (past ``timeout_s``) comes back as a failed result with its error."""
    with tempfile.TemporaryDirectory(prefix="tk-bench-") as d:
        spec_file, out_file = Path(d) / "spec.json", Path(d) / "result.json"
        spec_file.write_text(json.dumps(spec))
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "transferkit.bench.case", str(spec_file), str(out_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # so a timeout kills the case's own children too
        )
        try:
            log, _ = proc.communicate(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill(proc)
            log, _ = proc.communicate()
            timed_out = True
        wall = time.perf_counter() - t0
        tail = log.decode(errors="replace")[-2000:]
        if timed_out:
            result = {
                "status": "failed",
                "error": f"timed out after {timeout_s:.0f} s (per-case limit)",
            }
        elif out_file.is_file():
            result = json.loads(out_file.read_text())
        else:  # the process died before it could report (a crash, a kill)
            result = {
                "status": "failed",
                "error": f"the case process exited with code {proc.returncode}: {tail[-600:]}",
            }
        result["wall_s"] = wall
        if result.get("status") == "failed":
            result["log_tail"] = tail
        return result


def process_env(case: Case) -> dict[str, str]:
    """The case's environment (:func:`.frameworks.case_env`), importing this very
    transferkit, installed or not."""
    env = case_env(case)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def run_case(case: Case, suite: Suite, work: Path, skip: str | None = None) -> dict[str, Any]:
    """One case: its ``transferkit`` part (with the in-process baselines), then each
    baseline that gets a process of its own."""
    record: dict[str, Any] = {
        "id": case.id,
        "task": case.task.name,
        "backbone": case.backbone,
        "arch": case.backbone.partition(":")[2],
        "framework": case.framework,
        "batch": case.batch,
    }
    if skip:
        return {**record, "status": "skipped", "error": skip}
    env = process_env(case)
    chosen = baselines(case.task, registered()[case.plugin])
    spec = _case_spec(case, suite, "transferkit", work)
    spec["inprocess_baselines"] = [b.name for b in chosen if not b.isolated]
    main = run_part(spec, suite.timeout_s, env)
    record.update(main)
    record.setdefault("baselines", {})
    if main.get("status") != "ok":
        return record
    for b in (b for b in chosen if b.isolated):
        spec = _case_spec(case, suite, f"baseline:{b.name}", work)
        record["baselines"][b.name] = run_part(spec, suite.timeout_s, env)
    return record


def run(
    suite: str | Path | dict[str, Any] = "default",
    out: str | Path | None = "bench-out",
    quick: bool = False,
    frameworks: list[str] | None = None,
    backbones: list[str] | None = None,
    timeout_s: float | None = None,
    steps: int | None = None,
    command: str | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run a benchmark suite and write ``bench.json``, ``bench.md`` and the charts to
    ``out``. Returns the JSON document.

    ``suite`` is a name (``default``, ``quick``), a TOML path or a dict; ``quick`` picks
    the ``quick`` suite. ``frameworks`` / ``backbones`` keep only matching cases (globs on
    ``keras[jax]`` / ``torch:cnn``).
    """
    s = load_suite("quick" if quick and suite == "default" else suite)
    overrides = {"timeout_s": timeout_s, "steps": steps}
    s = Suite(**{**asdict_shallow(s), **{k: v for k, v in overrides.items() if v is not None}})
    every = expand(s)
    cases = select(every, frameworks, backbones)
    if not cases:
        raise ConfigError(
            f"no case of suite {s.name!r} matches the filters; its frameworks: "
            f"{', '.join(dict.fromkeys(c.framework for c in every))}; its backbones: "
            f"{', '.join(dict.fromkeys(c.backbone for c in every))}"
        )
    skip = check(cases)
    started = time.perf_counter()
    doc: dict[str, Any] = {
        "benchmark": "transferkit bench",
        "format_version": 1,
        "suite": {
            "name": s.name,
            "source": s.source,
            "steps": s.steps,
            "warmup": s.warmup,
            "rounds": s.rounds,
            "timeout_s": s.timeout_s,
            "seed": s.seed,
            "tasks": [{**asdict(t), "baselines": resolved_baselines(t)} for t in s.tasks],
        },
        "command": command or f"transferkit.bench.run({str(suite)!r}, quick={quick})",
        "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(libraries()),
        "flops_method": FLOPS_METHOD,
    }
    doc["machine"]["matmul"] = matmul_gflops(s.matmul_n)
    with tempfile.TemporaryDirectory(prefix="tk-bench-work-") as work:
        results = []
        for i, case in enumerate(cases, 1):
            if verbose:
                print(f"[{i}/{len(cases)}] {case.id} ...", end=" ", flush=True, file=sys.stderr)
            r = run_case(case, s, Path(work), skip.get(case.id))
            results.append(r)
            if out is not None:  # what is done so far survives an interrupted run
                Path(out).mkdir(parents=True, exist_ok=True)
                partial = {**doc, "cases": results, "complete": False}
                text = json.dumps(partial, indent=2, default=float)
                owned.write_text(Path(out) / "bench.json", text, "benchmark")
            if verbose:
                print(_summary_line(r), file=sys.stderr, flush=True)
    finish(doc, results, started, s.matmul_n)
    if out is not None:
        write(doc, Path(out))
    return doc


def finish(
    doc: dict[str, Any], results: list[dict[str, Any]], started: float, matmul_n: int = 1024
) -> dict[str, Any]:
    """Measure the matmul rate again, derive GFLOP/s and the summary."""
    doc["machine"]["matmul_at_end"] = matmul_gflops(matmul_n)
    doc["machine"]["load_average_at_end"] = load_average()
    # The machine's rate is the better of the two measurements (others may share it).
    peak = max(
        m["best_gflops"] for m in (doc["machine"]["matmul"], doc["machine"]["matmul_at_end"])
    )
    doc["machine"]["matmul_peak_gflops"] = peak
    for r in results:
        derive(r, peak)
    doc["cases"] = results
    doc["complete"] = doc.get("complete", True)
    doc["duration_s"] = time.perf_counter() - started
    doc["summary"] = summarise(results)
    return doc


def rewrite(path: str | Path) -> dict[str, Any]:
    """Write ``bench.md`` and the charts again from a ``bench.json`` (also from the
    partial file of an interrupted run, which is then marked ``complete: false``)."""
    path = Path(path)
    doc = json.loads((path / "bench.json").read_text())
    if not doc.get("complete"):
        duration = doc.get("duration_s")
        finish(doc, doc["cases"], time.perf_counter(), doc["machine"]["matmul"]["n"])
        doc["duration_s"] = duration or sum(
            r.get("wall_s", 0) + sum(b.get("wall_s", 0) for b in r.get("baselines", {}).values())
            for r in doc["cases"]
        )
    write(doc, path)
    return doc


def _summary_line(r: dict[str, Any]) -> str:
    if r.get("status") != "ok":
        return f"{r.get('status')}: {str(r.get('error', ''))[:160]}"
    parts = [f"{r['step_ms']['median']:.1f} ms/step"]
    for name, b in r.get("baselines", {}).items():
        if b.get("status") == "ok":
            parts.append(f"x{b['ratio']:.2f} vs {name}")
        else:
            parts.append(f"{name} {b.get('status')}")
    return ", ".join(parts)
