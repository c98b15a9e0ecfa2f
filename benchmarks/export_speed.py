"""Deploy: export parity and inference speed of every format against the framework's own
inference, measured in one process per model and format on this machine.

For each reference architecture, one model is built in ``--fitted-in`` (default torch)
with seeded random weights and exported to every format (``model.export``, which realises
the same weights in the framework that owns the format and checks the export). Then, on
the same batches of images in [0, 1]:

- parity: the largest absolute difference between the export's outputs, run by the
  format's own runtime, and ``model.predict`` (probabilities);
- speed: ms per batch (median of ``--rounds`` alternated rounds) of the format's runtime
  with the session/program loaded once, against ``model.predict`` of the realisation in
  the framework that owns the format (both include normalisation and softmax).

    python benchmarks/export_speed.py [--archs cnn,resnet18,efficientnet_lite0]
        [--batch 32] [--rounds 20] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import transferkit as tk
from transferkit.bench.report import write_study
from transferkit.export import formats, realise

SHAPES = {"cnn": (32, 32, 3), "resnet18": (64, 64, 3), "efficientnet_lite0": (64, 64, 3)}


def runner(fmt: str, path: Path):
    """The format's runtime, loaded once: a function from a batch to outputs."""
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})[0]
    if fmt == "torch-export":
        import torch

        module = torch.export.load(str(path)).module()

        def run(x):
            with torch.no_grad():
                return module(torch.from_numpy(x)).numpy()

        return run
    if fmt == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))  # kept: serve needs its variables alive
        return lambda x: loaded.serve(tf.constant(x)).numpy()
    if fmt == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(path))
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        state = {"n": None}

        def run(x):
            if state["n"] != len(x):
                interp.resize_tensor_input(inp["index"], list(x.shape))
                interp.allocate_tensors()
                state["n"] = len(x)
            interp.set_tensor(inp["index"], x)
            interp.invoke()
            return interp.get_tensor(out["index"])

        return run
    if fmt == "jax":
        import jax

        exported = jax.export.deserialize(bytearray(path.read_bytes()))
        return lambda x: np.asarray(exported.call(x))
    raise ValueError(fmt)


def timed(fn, x, rounds: int) -> list[float]:
    fn(x)  # warm-up (compilation, allocation)
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(x)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def one(arch: str, fitted_in: str, batch: int, rounds: int, work: Path) -> list[dict]:
    rng = np.random.default_rng(0)
    shape = SHAPES[arch]
    model = tk.build(f"{fitted_in}:{arch}", head=tk.Classifier(10), weights=None,
                     input_shape=shape, seed=0)  # fmt: skip
    x = rng.random((batch, *shape), dtype=np.float32)
    rows = []
    for fmt, (owner, spec) in formats().items():
        t0 = time.perf_counter()
        path = model.export(work / f"{arch}-{fmt}{spec.suffix}", format=fmt)
        export_s = time.perf_counter() - t0
        run = runner(fmt, path)
        native = realise(model, owner)
        diff = float(np.abs(run(x) - model.predict(x)).max())
        exp_ms, nat_ms = [], []

        def native_run(b, native=native):
            return native.predict(b, batch_size=batch)

        for _ in range(rounds):  # alternated, so drift hits both alike
            exp_ms += timed(run, x, 1)
            nat_ms += timed(native_run, x, 1)
        size = sum(f.stat().st_size for f in ([path] if path.is_file() else path.rglob("*")))
        row = {
            "arch": arch,
            "input_shape": list(shape),
            "fitted_in": fitted_in,
            "format": fmt,
            "exported_by": owner,
            "max_abs_diff": diff,
            "tolerance": spec.tolerance,
            "export_s": export_s,
            "size_mb": size / 2**20,
            "batch": batch,
            "export_ms": float(np.median(exp_ms)),
            "native_ms": float(np.median(nat_ms)),
        }
        row["speedup"] = row["native_ms"] / row["export_ms"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        "# Export parity and inference speed",
        "",
        f"Command: `{command}`. Batch {rows[0]['batch']}; ms per batch, median of "
        "alternated rounds; native = `model.predict` of the realisation in the framework "
        "that writes the format (normalisation and softmax included on both sides).",
        "",
        "| model | input | format | via | max abs diff (tolerance) | ms/batch export | "
        "ms/batch native | native / export | size MB | export s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shape = "x".join(map(str, r["input_shape"]))
        lines.append(
            f"| {r['fitted_in']}:{r['arch']} | {shape} | {r['format']} | {r['exported_by']} | "
            f"{r['max_abs_diff']:.1e} ({r['tolerance']:g}) | {r['export_ms']:.1f} | "
            f"{r['native_ms']:.1f} | {r['speedup']:.2f} | {r['size_mb']:.1f} | "
            f"{r['export_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="cnn,resnet18,efficientnet_lite0")
    p.add_argument("--fitted-in", default="torch")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for arch in a.archs.split(","):
            rows += one(arch, a.fitted_in, a.batch, a.rounds, Path(work))
    command = "python benchmarks/export_speed.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k != "out"
    )
    write_study(a.out, "export_speed", {"command": command, "rows": rows},
                markdown(rows, command))  # fmt: skip


if __name__ == "__main__":
    main()
