"""Scaling out and speeding up, measured: compiled against eager PyTorch steps, mixed
against full precision in every framework, and 1 against 2 processes.

* ``--part compile``: ms per training step (Adam, batch 64, 32x32 digits, pretrained
  weights) of transferkit's PyTorch step eager and with ``compile=True``, beside the
  hand-written eager and ``torch.compile`` loops of ``transferkit bench``; each side
  is warmed up (compiled), then the four run alternately in rounds and report medians.
* ``--part precision``: per framework variant (each in a process of its own) and
  precision, the demo's fine-tuning on two of its tasks: digits 5-9 from the ``cnn``
  pretrained on digits 0-4 (20 labels per class, 30 epochs), and faces from the
  ImageNet EfficientNet-Lite0 at 64x64 (20 labels per class, 10 epochs). Reported: ms
  per step (median of the epochs after the first, which compiles) and test accuracy.
* ``--part ddp``: ``transferkit fit --nproc 1`` and ``--nproc 2`` on the digits
  training half (batch 64, 4 epochs): seconds per epoch (median of epochs 2-4) and their
  ratio. On a 2-core machine this measures what the collectives cost, not a speed-up.

    python benchmarks/scaling.py --part compile|precision|ddp [--out benchmarks/results]
        [--backbones torch:cnn,flax:cnn,keras[jax]:cnn]   (ddp)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from transferkit import owned

BATCH = 64
LR = 1e-3
VARIANTS = {  # framework variant -> (backbone prefix, environment)
    "torch": ("torch", {}),
    "flax": ("flax", {}),
    "keras[tensorflow]": ("keras", {"KERAS_BACKEND": "tensorflow"}),
    "keras[jax]": ("keras", {"KERAS_BACKEND": "jax"}),
    "keras[torch]": ("keras", {"KERAS_BACKEND": "torch"}),
}
PRECISIONS = {
    "torch": ("32", "bf16-mixed", "16-mixed"),
    "flax": ("32", "bf16-mixed"),
    "keras": ("32", "bf16-mixed", "16-mixed"),
}
TASKS = {  # name -> (loader, backbone, input shape, epochs)
    "digits 5-9 / cnn": ("digits_transfer", "cnn", None, 30),
    "faces / efficientnet_lite0 64x64": ("faces", "efficientnet_lite0", (64, 64, 3), 10),
}


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}


# --- compile ----------------------------------------------------------------------
def compile_part(rounds: int, steps: int) -> dict:
    import torch

    import transferkit as tk

    train, _ = tk.datasets.digits_transfer(shots=None, seed=0)
    rows = []
    for arch in ("cnn", "resnet18", "efficientnet_lite0"):
        rows.append(compile_row(arch, train, rounds, steps))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "ms_per_step"}), flush=True)
    return {"torch": torch.__version__, "batch": BATCH, "rows": rows}


def compile_row(arch: str, train, rounds: int, steps: int) -> dict:
    import transferkit as tk
    from transferkit.bench.stats import quartiles, ratio_of_medians
    from transferkit_torch.baselines import Compiled, Eager

    weights = None if arch == "resnet18" else "pretrained"

    def model(compiled: bool):
        return tk.build(f"torch:{arch}", head=tk.Classifier(5), weights=weights,
                        input_shape=(32, 32, 3), seed=0, compile=compiled)  # fmt: skip

    eager_model, compiled_model = model(False), model(True)
    x = eager_model.prepare(train.x)
    y = np.asarray(train.y)
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(y), BATCH, replace=False) for _ in range(steps)]
    for m in (eager_model, compiled_model):
        m.engine.set_scaling(tk.scaling.Scaling())
        m.engine.start_training(tk.framework.OptimizerSpec("adam"), 0)
        m.engine.set_plan({g: 1.0 for g in m.spec.group_names}, head_only=False)

    def engine_side(m):
        def run():
            for idx in batches:
                loss = m.engine.train_step(x[idx], y[idx], LR)
            float(loss)

        return run

    def native_side(cls):
        runner = cls(model(False), x, y, LR)
        return lambda: runner.run(batches)

    sides = {
        "transferkit eager": engine_side(eager_model),
        "transferkit compile=True": engine_side(compiled_model),
        "native eager": native_side(Eager),
        "native torch.compile": native_side(Compiled),
    }
    for run in sides.values():  # warm-up: compile, allocate
        run()
    times = {k: [] for k in sides}
    for r in range(rounds):
        for k in list(sides) if r % 2 == 0 else list(reversed(sides)):
            t0 = time.perf_counter()
            sides[k]()
            times[k].append((time.perf_counter() - t0) * 1e3 / steps)
    row = {"arch": arch, "ms_per_step": {k: quartiles(v) for k, v in times.items()}}
    tkc, tke = times["transferkit compile=True"], times["transferkit eager"]
    row["compiled / eager (transferkit)"] = ratio_of_medians(tkc, tke)
    row["transferkit / native (compiled)"] = ratio_of_medians(tkc, times["native torch.compile"])
    row["transferkit / native (eager)"] = ratio_of_medians(tke, times["native eager"])
    return row


def compile_table(result: dict) -> str:
    lines = [
        "| model | transferkit eager | transferkit compile=True | native eager | native "
        "torch.compile | compiled / eager | transferkit / native, compiled |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        ms = {k: v["median"] for k, v in r["ms_per_step"].items()}
        lines.append(
            f"| {r['arch']} | {ms['transferkit eager']:.1f} | {ms['transferkit compile=True']:.1f}"
            f" | {ms['native eager']:.1f} | {ms['native torch.compile']:.1f}"
            f" | {r['compiled / eager (transferkit)']:.2f}"
            f" | {r['transferkit / native (compiled)']:.2f} |"
        )
    return "ms per training step, median; batch 64 at 32x32.\n\n" + "\n".join(lines)


# --- precision --------------------------------------------------------------------
def precision_case(variant: str, out: str) -> None:
    import transferkit as tk

    prefix = VARIANTS[variant][0]
    rows = []
    for task, (loader, arch, shape, epochs) in TASKS.items():
        train, test = getattr(tk.datasets, loader)(shots=20, seed=0)
        for precision in PRECISIONS[prefix]:
            if arch != "cnn" and precision == "16-mixed":
                continue  # float16 convolutions are emulated on this CPU: minutes per run
            m = tk.build(f"{prefix}:{arch}", head=tk.Classifier(train.num_classes),
                         input_shape=shape, seed=0)  # fmt: skip
            h = tk.fit(m, train, epochs=epochs, batch_size=16, seed=0, verbose=0,
                       precision=precision)  # fmt: skip
            steps = int(np.ceil(len(train.y) / 16))
            ms = [e["time"] * 1e3 / steps for e in h.epochs[1:]]
            acc = m.evaluate(test)["accuracy"]
            rows.append({"task": task, "precision": precision, "ms_per_step": float(np.median(ms)),
                         "accuracy": float(acc)})  # fmt: skip
            print(variant, rows[-1], flush=True)
    Path(out).write_text(json.dumps(rows))


def precision_part() -> dict:
    rows = []
    for variant, (_, env) in VARIANTS.items():
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rows.json"
            cmd = [sys.executable, __file__, "--case", variant, "--case-out", str(out)]
            r = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
            if r.returncode != 0:
                print(r.stderr[-2000:], file=sys.stderr)
                continue
            rows += [{"framework": variant, **row} for row in json.loads(out.read_text())]
    return {"rows": rows}


def precision_table(result: dict) -> str:
    lines = [
        "| task | framework | precision | ms/step | vs. 32 | test accuracy |",
        "|---|---|---|---:|---:|---:|",
    ]
    base = {
        (r["task"], r["framework"]): r["ms_per_step"]
        for r in result["rows"]
        if r["precision"] == "32"
    }
    for r in result["rows"]:
        ratio = r["ms_per_step"] / base[(r["task"], r["framework"])]
        lines.append(
            f"| {r['task']} | {r['framework']} | {r['precision']} | {r['ms_per_step']:.1f} | "
            f"{ratio:.2f} | {r['accuracy']:.3f} |"
        )
    return "\n".join(lines)


# --- ddp --------------------------------------------------------------------------
def ddp_part(backbones: list[str]) -> dict:
    rows = []
    for name in backbones:
        row = {"backbone": name}
        # "keras[jax]:cnn": keras:cnn under KERAS_BACKEND=jax
        backbone, variant = re.sub(r"\[\w+\]", "", name), re.search(r"\[(\w+)\]", name)
        for nproc in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [sys.executable, "-m", "transferkit", "fit", "--backbone", backbone,
                       "--data", "builtin:digits", "--epochs", "4", "--batch-size", str(BATCH),
                       "--weights", "none", "--nproc", str(nproc), "--out", f"{tmp}/m"]  # fmt: skip
                env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
                if variant:
                    env["KERAS_BACKEND"] = variant.group(1)
                r = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if r.returncode != 0:
                    raise SystemExit(r.stderr[-3000:])
                with open(f"{tmp}/m/history.csv") as f:
                    epochs = [float(e["time"]) for e in csv.DictReader(f)]
            row[f"s_per_epoch_{nproc}"] = float(np.median(epochs[1:]))
        row["ratio"] = row["s_per_epoch_2"] / row["s_per_epoch_1"]
        print(row, flush=True)
        rows.append(row)
    return {"rows": rows, "batch": BATCH}


def ddp_table(result: dict) -> str:
    lines = [
        "| backbone | 1 process, s/epoch | 2 processes, s/epoch | 2 / 1 |",
        "|---|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['backbone']} | {r['s_per_epoch_1']:.2f} | {r['s_per_epoch_2']:.2f} | "
            f"{r['ratio']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--part", choices=["compile", "precision", "ddp"])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument(
        "--backbones", default="torch:cnn,flax:cnn,keras[jax]:cnn", help="ddp: comma-separated"
    )
    p.add_argument("--case")
    p.add_argument("--case-out")
    a = p.parse_args()
    if a.case:
        return precision_case(a.case, a.case_out)
    t0 = time.time()
    if a.part == "compile":
        result, table = compile_part(a.rounds, a.steps), compile_table
    elif a.part == "precision":
        result, table = precision_part(), precision_table
    else:
        result, table = ddp_part(a.backbones.split(",")), ddp_table
    result.update(machine=machine(), seconds=round(time.time() - t0, 1))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    owned.write_text(
        out / f"scaling_{a.part}.json", json.dumps(result, indent=2), "benchmark result"
    )
    owned.write_text(out / f"scaling_{a.part}.md", table(result) + "\n", "benchmark result")
    print(table(result))


if __name__ == "__main__":
    main()
