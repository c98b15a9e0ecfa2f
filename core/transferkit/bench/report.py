"""The benchmark's report: the derived figures (achieved GFLOP/s, the fastest framework
per model), ``bench.md`` (the headline table of ms/step and overhead per framework, then
every figure of every case) and ``bench.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import owned
from .charts import charts

#: how ``flops_per_step`` is counted (each framework's ``count_macs``), for the report
FLOPS_METHOD = (
    "analytic: multiply-accumulates of every convolution and dense layer (attention "
    "matmuls for transformers) from the layer shapes, x2 FLOPs per MAC, x3 for a training "
    "step (forward + backward ~ 2x forward); BatchNorm, activations, pooling and the "
    "optimizer update are not counted"
)


def derive(r: dict[str, Any], peak_gflops: float) -> None:
    """Achieved GFLOP/s and the fraction of the measured matmul rate."""
    step = (r.get("step_ms") or {}).get("median")
    flops = r.get("flops_per_step")
    if step and flops:
        r["gflops_per_s"] = flops / (step / 1e3) / 1e9
        r["fraction_of_matmul_peak"] = r["gflops_per_s"] / peak_gflops
    else:
        r["gflops_per_s"] = r["fraction_of_matmul_peak"] = None


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Which framework is fastest per (task, model, batch), and counts by status."""
    fastest: dict[str, Any] = {}
    for r in results:
        if r.get("status") != "ok":
            continue
        key = f"{r['task']}/{r['arch']}/b{r['batch']}"
        ms = r["step_ms"]["median"]
        if key not in fastest or ms < fastest[key]["ms_per_step"]:
            fastest[key] = {"framework": r["framework"], "ms_per_step": ms}
    counts: dict[str, int] = {}
    for r in results:
        counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
    wins: dict[str, int] = {}
    for v in fastest.values():
        wins[v["framework"]] = wins.get(v["framework"], 0) + 1
    return {"status_counts": counts, "fastest": fastest, "wins": wins}


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def _ratio_cell(b: dict[str, Any] | None) -> str:
    if not b:
        return "-"
    if b.get("status") != "ok":
        return f"{b.get('status')}"
    p = b["pair_ratio"]
    return f"{b['ratio']:.2f} ({p['q1']:.2f}-{p['q3']:.2f})"


def headline(doc: dict[str, Any]) -> str:
    """The compact table: one row per (task, model), one column per framework; each cell
    ms/step and transferkit's overhead against the framework's first native baseline."""
    fws = list(dict.fromkeys(r["framework"] for r in doc["cases"]))
    rows = list(dict.fromkeys((r["task"], r["arch"], r["batch"]) for r in doc["cases"]))
    lines = [
        "| task | model | batch | " + " | ".join(fws) + " | fastest |",
        "|---|---|---|" + "---|" * (len(fws) + 1),
    ]
    for task, arch, batch in rows:
        cells, best = [], None
        for fw in fws:
            r = next(
                (
                    c
                    for c in doc["cases"]
                    if (c["task"], c["arch"], c["batch"], c["framework"]) == (task, arch, batch, fw)
                ),
                None,
            )
            if r is None:
                cells.append("")
            elif r.get("status") != "ok":
                cells.append(r.get("status", "?"))
            else:
                ms = r["step_ms"]["median"]
                base = next(iter(r.get("baselines", {}).items()), None)
                ratio = ""
                if base and base[1].get("status") == "ok":
                    p = base[1]["pair_ratio"]
                    ratio = f" ×{base[1]['ratio']:.2f} [{p['q1']:.2f}–{p['q3']:.2f}] vs {base[0]}"
                cells.append(f"{ms:.1f} ms{ratio}")
                if best is None or ms < best[1]:
                    best = (fw, ms)
        if any(c for c in cells):
            lines.append(
                f"| {task} | {arch} | {batch} | "
                + " | ".join(cells)
                + f" | {best[0] if best else '-'} |"
            )
    return "\n".join(lines)


def markdown(doc: dict[str, Any]) -> str:
    """The report as a Markdown table (one row per case) with the machine above it."""
    m = doc["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v)
    mm = m["matmul"]
    lines = [
        f"# transferkit bench: suite `{doc['suite']['name']}`",
        "",
        f"Machine: {m['cpu']}, {m['cores_available']} cores available "
        f"({m['cpu_count']} CPUs), {m['memory_gib']} GiB"
        + (f", GPUs: {'; '.join(m['gpus'])}" if m["gpus"] else ", no GPU")
        + ". Load average at start "
        + ", ".join(f"{x:.1f}" for x in m["load_average_at_start"] or [])
        + ".",
        f"float32 matmul rate (numpy, {mm['n']}x{mm['n']}): best {mm['best_gflops']:.1f} "
        f"GFLOP/s, median {mm['median_gflops']:.1f} at the start; "
        f"{m['matmul_at_end']['best_gflops']:.1f} / {m['matmul_at_end']['median_gflops']:.1f} "
        f"at the end; % matmul is against the better best, {m['matmul_peak_gflops']:.1f} GFLOP/s.",
        f"Libraries: {libs}. Python {m['python']}.",
        f"Command: `{doc['command']}`; {doc['duration_s'] / 60:.1f} min.",
        "",
        "ms/step: transferkit's engine training step (Adam, full fine-tuning), median "
        f"[IQR] of {doc['suite']['steps']} steps after {doc['suite']['warmup']} warm-up "
        "steps. Overhead: transferkit / native ms/step, measured alternately in one process "
        "(ratio of medians, with the quartiles of the per-round ratios); > 1 means "
        "transferkit is slower. GFLOP/s counts " + doc["flops_method"] + ".",
        "",
        "Median ms per training step through transferkit, and transferkit / native "
        "(ratio of medians [quartiles of the per-round ratios]):",
        "",
        headline(doc),
        "",
    ]
    described = {
        f"{r['framework'].partition('[')[0]} {n}": b["description"]
        for r in doc["cases"]
        for n, b in r.get("baselines", {}).items()
        if b.get("description")
    }
    if described:
        lines += ["Native baselines:", ""]
        lines += [f"- {k}: {v}" for k, v in described.items()]
        lines.append("")
    lines += ["Every figure:", ""]
    names = sorted({n for r in doc["cases"] for n in r.get("baselines", {})})
    head = (
        "| task | model | framework | device | batch | ms/step [IQR] | samples/s | GFLOP/s "
        "(% matmul) | first step s | import + build s | peak RSS MB | accuracy (labels/class) "
        "| time to target s | " + " | ".join(f"vs {n}" for n in names) + " |"
    )
    lines += [head, "|" + "---|" * (13 + len(names))]
    for r in doc["cases"]:
        cells = [r["task"], r["arch"], r["framework"]]
        if r.get("status") != "ok":
            err = str(r.get("error", "")).replace("|", "/").replace("\n", " ")[:140]
            cells += ["-", str(r["batch"]), f"**{r.get('status')}**: {err}"]
            cells += ["-"] * (7 + len(names))
            lines.append("| " + " | ".join(cells) + " |")
            continue
        st = r["step_ms"]
        acc = r.get("accuracy") or {}
        shots = acc.get("per_shots", {})
        acc_cell = ", ".join(f"{v['final_accuracy']:.3f} ({k})" for k, v in shots.items())
        ttt = ", ".join(_fmt(v["time_to_target_s"]) for v in shots.values())
        gf = r.get("gflops_per_s")
        gf_cell = "-" if gf is None else f"{gf:.1f} ({100 * r['fraction_of_matmul_peak']:.0f}%)"
        cells += [
            str(r.get("device")),
            str(r["batch"]),
            f"{st['median']:.1f} [{st['iqr']:.1f}]",
            f"{r['samples_per_s']:.0f}",
            gf_cell,
            f"{r['first_step_s']:.2f}",
            f"{r['import_s']:.1f} + {r['build_s']:.1f}",
            f"{r['peak_rss_mb']:.0f}",
            acc_cell or "-",
            (ttt + f" (target {acc['target']})") if shots else "-",
        ]
        cells += [
            _ratio_cell(r.get("baselines", {}).get(n)) if n in r.get("baselines", {}) else "n/a"
            for n in names
        ]
        lines.append("| " + " | ".join(cells) + " |")
    summ = doc["summary"]
    lines += ["", "Fastest framework (median ms/step) per task, model and batch:", ""]
    for key, v in summ["fastest"].items():
        lines.append(f"- {key}: **{v['framework']}** ({v['ms_per_step']:.1f} ms/step)")
    lines += ["", f"Cases by status: {summ['status_counts']}.", ""]
    return "\n".join(lines)


def write(doc: dict[str, Any], out: Path) -> list[Path]:
    """``bench.json``, ``bench.md`` and the PNG charts into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    owned.write_text(out / "bench.json", json.dumps(doc, indent=2, default=float), "benchmark")
    owned.write_text(out / "bench.md", markdown(doc), "benchmark report")
    return [out / "bench.json", out / "bench.md", *charts(doc, out)]


def write_study(out: str | Path, stem: str, doc: dict[str, Any], text: str) -> None:
    """What a study script under ``benchmarks/`` leaves: ``stem.json`` and ``stem.md`` in
    ``out``, with the machine named in the JSON; the Markdown is printed too."""
    import platform

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {**doc, "machine": platform.processor() or platform.machine()}
    owned.write_text(out / f"{stem}.json", json.dumps(doc, indent=2), "study result")
    owned.write_text(out / f"{stem}.md", text + "\n", "study report")
    print(text)
