"""Feature caching: a FeatureExtraction fit with the cache on against the same fit off.

With the backbone frozen for the whole run, ``tk.fit`` computes the backbone's
features once and trains the head on them (``cache_features="auto"``);
``cache_features=False`` runs the frozen backbone forward on every step, as a plain
training loop would. Both sides get the same data, epochs, batch size and seed, and
each run starts from a freshly built model (so no features are left over from an
earlier run); building is not timed. The two sides run alternately, ``--repeats``
times each, and the report gives the median seconds of each and their ratio.

Cases (``--cases``, comma-separated):

* ``cnn``: ``torch:cnn`` pretrained on digits 0-4, all 448 training images of digits
  5-9, 20 epochs, batch 32;
* ``flax-cnn``: the same with ``flax:cnn``;
* ``lite0``: ``torch:efficientnet_lite0`` (ImageNet), faces with 20 labels per class
  resized to 224x224, 20 epochs, batch 16;
* ``minilm``: ``hf:all-MiniLM-L6-v2``, BBC News with 16 labelled articles per class
  (80 texts, max_length 256), 20 epochs, batch 16.

    python benchmarks/feature_cache.py [--cases cnn,lite0,minilm] [--repeats 3] [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import transferkit as tk
from transferkit import owned
from transferkit.bench.stats import median

CASES = {
    "cnn": ("torch:cnn", lambda: tk.datasets.digits_transfer(shots=None, seed=0), 32),
    "flax-cnn": ("flax:cnn", lambda: tk.datasets.digits_transfer(shots=None, seed=0), 32),
    "lite0": ("torch:efficientnet_lite0", lambda: tk.datasets.faces(shots=20, seed=0), 16),
    "minilm": ("hf:all-MiniLM-L6-v2", lambda: tk.datasets.bbc_news(shots=16, seed=0), 16),
}


def run_case(name: str, epochs: int, repeats: int) -> dict:
    import warnings

    warnings.filterwarnings("ignore", category=tk.errors.TruncationWarning)
    backbone, data, batch = CASES[name]
    train, test = data()
    classes = train.num_classes

    def one(cache: bool) -> tuple[float, float]:
        model = tk.build(backbone, head=tk.Classifier(classes), seed=0)
        t0 = time.perf_counter()
        tk.fit(
            model,
            train,
            freeze=tk.freeze.FeatureExtraction(),
            epochs=epochs,
            lr=1e-3,
            batch_size=batch,
            seed=0,
            verbose=0,
            cache_features="auto" if cache else False,
        )
        seconds = time.perf_counter() - t0
        return seconds, model.evaluate(test)["accuracy"]

    one(True)  # warm-up: imports, first-call costs, files read once
    times: dict[bool, list[float]] = {True: [], False: []}
    accuracy: dict[bool, float] = {}
    for i in range(repeats):
        for cache in (True, False) if i % 2 == 0 else (False, True):
            seconds, accuracy[cache] = one(cache)
            times[cache].append(seconds)
            print(f"  {name}: cache={'on ' if cache else 'off'} {seconds:7.2f}s", flush=True)
    on, off = median(times[True]), median(times[False])
    return {
        "backbone": backbone,
        "train_examples": len(train),
        "epochs": epochs,
        "batch": batch,
        "cached_s": times[True],
        "uncached_s": times[False],
        "cached_median_s": on,
        "uncached_median_s": off,
        "speedup": off / on,
        "accuracy_cached": accuracy[True],
        "accuracy_uncached": accuracy[False],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="cnn,flax-cnn,lite0,minilm")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "feature_cache.json"))
    args = ap.parse_args()
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    results = {}
    for name in names:
        print(f"{name} ({CASES[name][0]}):", flush=True)
        results[name] = run_case(name, args.epochs, args.repeats)
    print("\n| case | backbone | examples | epochs | cache on (s) | cache off (s) | speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['backbone']} | {r['train_examples']} | {r['epochs']} | "
            f"{r['cached_median_s']:.2f} | {r['uncached_median_s']:.2f} | {r['speedup']:.1f}x |"
        )
    command = (
        "python benchmarks/feature_cache.py "
        f"--cases {','.join(names)} --epochs {args.epochs} --repeats {args.repeats}"
    )
    for r in results.values():
        r["command"] = command
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # cases measured earlier (by other commands) stay in the file
    earlier = json.loads(out.read_text())["results"] if out.is_file() else {}
    owned.write_text(
        out,
        json.dumps(
            {
                "benchmark": "feature_cache",
                "machine": {
                    "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(),
                },
                "results": {**earlier, **results},
            },
            indent=2,
        ),
        "benchmark result",
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
