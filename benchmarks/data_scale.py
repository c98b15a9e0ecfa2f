"""Data at scale: peak memory and wall time of a frozen-backbone fit and a prediction over
a folder of generated JPEGs, lazy (``tk.data.image_folder``: decoded per batch, features
cached on disk) against the in-memory path (``lazy=False``: every image decoded into one
float32 array first) where that fits; and decode throughput against the backbone's.

The images are 224x224 JPEGs in 10 class folders (smooth random colour fields with
noise, about 10 kB each). The backbone is the ImageNet EfficientNet-Lite0 at
``--input`` pixels (96 by default: at 224 one pass over 20,000 images takes about 25
minutes on 2 CPU cores), with a linear head, frozen, 2 epochs of Adam on its features.
Each measurement runs in a fresh process, so its peak resident memory is its own.

    python benchmarks/data_scale.py [--sizes 2000,20000] [--memory-sizes 2000]
        [--input 96] [--root /tmp/tk-data-scale] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CLASSES = 10


def generate(root: Path, n: int, seed: int = 0) -> float:
    """``n`` JPEGs at 224x224 under ``root/<class>/``; returns the size on disk in MB."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:224, 0:224] / 224.0
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % CLASSES
        path = root / f"class{c}" / f"{i:06d}.jpg"
        if path.exists():
            continue
        a, b = rng.normal(size=(2, 3))
        base = 128 + 60 * np.sin(
            2 * np.pi * (a[:, None, None] * xx + b[:, None, None] * yy + c / 10)
        )
        img = base.transpose(1, 2, 0) + rng.normal(0, 12, (224, 224, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=85)
    return sum(p.stat().st_size for p in root.rglob("*.jpg")) / 2**20


def worker(mode: str, root: str, size: int, cache: str) -> dict:
    import transferkit as tk

    t0 = time.perf_counter()
    data = tk.data.image_folder(root, lazy=mode == "lazy")
    load_s = time.perf_counter() - t0
    model = tk.build("torch:efficientnet_lite0", head=tk.Classifier(CLASSES),
                     input_shape=(size, size, 3))  # fmt: skip
    t1 = time.perf_counter()
    h = tk.fit(model, data, freeze=tk.freeze.FeatureExtraction(), epochs=2, lr=1e-3,
               batch_size=64, verbose=0, cache_dir=cache if mode == "lazy" else None)  # fmt: skip
    fit_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    p = model.predict(data.x, batch_size=64)
    predict_s = time.perf_counter() - t2
    return {
        "mode": mode,
        "images": len(data),
        "load_s": load_s,
        "fit_s": fit_s,
        "predict_s": predict_s,
        "total_s": time.perf_counter() - t0,
        "loss": h["loss"][-1],
        "train_accuracy": float((p.argmax(1) == data.y).mean()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def throughput(root: str, size: int, n: int = 1024) -> dict:
    """Images per second: decoding (the lazy set's thread pool) against the backbone's
    forward pass (with the resize and normalisation ``prepare`` does) at batch 64."""
    import transferkit as tk

    data = tk.data.image_folder(root)
    idx = np.arange(min(n, len(data)))
    t0 = time.perf_counter()
    for s in range(0, len(idx), 64):
        data.x[idx[s : s + 64]]
    decode = len(idx) / (time.perf_counter() - t0)
    model = tk.build("torch:efficientnet_lite0", head=tk.Classifier(CLASSES),
                     input_shape=(size, size, 3))  # fmt: skip
    x = data.x[idx[:256]]
    model.features(x[:64])
    t1 = time.perf_counter()
    model.features(x, batch_size=64)
    forward = len(x) / (time.perf_counter() - t1)
    from transferkit.lazy import WORKERS

    return {"decode_per_s": decode, "forward_per_s": forward, "workers": WORKERS}


def run(kind: str, *args) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, *map(str, args)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"mode": kind, "failed": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(doc: dict) -> str:
    lines = [
        "# Data at scale",
        "",
        f"Command: `{doc['command']}`. Frozen EfficientNet-Lite0 (ImageNet) at "
        f"{doc['input']}x{doc['input']} on 224x224 JPEGs, 2 epochs on its features, then "
        "predict over the same images; each row a fresh process.",
        "",
        "| images | JPEGs on disk MB | path | load s | fit s | predict s | total s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        if "failed" in r:
            lines.append(f"| {r.get('images', '?')} | | {r['mode']} | failed | | | | |")
            continue
        lines.append(
            f"| {r['images']} | {r['disk_mb']:.0f} | {r['mode']} | {r['load_s']:.1f} | "
            f"{r['fit_s']:.1f} | {r['predict_s']:.1f} | {r['total_s']:.1f} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    t = doc["throughput"]
    lines += [
        "",
        f"Decoding: {t['decode_per_s']:.0f} images/s with {t['workers']} threads; the "
        f"backbone's forward pass: {t['forward_per_s']:.0f} images/s.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, *rest = sys.argv[2:]
        if kind == "throughput":
            print(json.dumps(throughput(rest[0], int(rest[1]))))
        else:
            print(json.dumps(worker(kind, rest[0], int(rest[1]), rest[2])))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="2000,20000")
    p.add_argument("--memory-sizes", default="2000")
    p.add_argument("--input", type=int, default=96)
    p.add_argument("--root", default="/tmp/tk-data-scale")
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args()
    from transferkit.bench.report import write_study

    rows = []
    throughput_row = None
    for n in sorted(int(s) for s in a.sizes.split(",")):
        root = Path(a.root) / f"n{n}"
        disk = generate(root, n)
        cache = Path(a.root) / f"cache{n}"
        shutil.rmtree(cache, ignore_errors=True)
        modes = ["lazy"] + (["memory"] if str(n) in a.memory_sizes.split(",") else [])
        for mode in modes:
            r = run(mode, root, a.input, cache)
            r.update({"disk_mb": disk, "images": r.get("images", n)})
            print(json.dumps(r), flush=True)
            rows.append(r)
        if throughput_row is None:
            throughput_row = run("throughput", root, a.input)
            print(json.dumps(throughput_row), flush=True)
    command = "python benchmarks/data_scale.py " + " ".join(sys.argv[1:])
    doc = {"command": command, "input": a.input, "rows": rows, "throughput": throughput_row}
    write_study(a.out, "data_scale", doc, markdown(doc))


if __name__ == "__main__":
    main()
