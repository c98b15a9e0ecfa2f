"""How accurate is each framework's float32 gradient? One training step against a float64
reference.

The reference is the PyTorch realisation in double precision: the gradient of the
cross-entropy on one batch (the first batch ``tk.fit`` draws, seed 0) in training mode.
Each framework takes the same step through ``tk.fit`` (SGD without momentum, lr 1e-2,
``batchnorm="train"``, stopped after one batch), in a process of its own; its gradient is
read back as (w0 - w1) / lr. Reported per layer group: the largest difference from the
reference, relative to the largest reference gradient in the group.

    python benchmarks/gradient_accuracy.py [--arch efficientnet_lite0] [--shape 32]
        [--frameworks torch,flax,keras] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

LR = 1e-2
BATCH = 16


def data():
    from transferkit.bench.workload import task_data

    return task_data({"data": "digits", "test_size": 200}, 20, 0)


def step(framework: str, arch: str, shape: int, out: str) -> None:
    import transferkit as tk

    train, _ = data()
    m = tk.build(f"{framework}:{arch}", head=tk.Classifier(5), input_shape=(shape, shape, 3))

    class Stop(tk.Callback):
        def on_batch_end(self, trainer, i, logs):
            trainer.stop = True

    tk.fit(m, train, freeze=tk.freeze.FullFineTune(), epochs=1, batch_size=BATCH, seed=0,
           verbose=0, callbacks=[Stop()], batchnorm="train", schedule="constant",
           optimizer="sgd", lr=LR, momentum=0.0)  # fmt: skip
    np.savez(out, **m.get_weights())


def reference(arch: str, shape: int) -> tuple[dict, dict]:
    import torch
    import torch.nn.functional as F

    import transferkit as tk

    train, _ = data()
    m = tk.build(f"torch:{arch}", head=tk.Classifier(5), input_shape=(shape, shape, 3))
    w0 = m.get_weights()
    idx = np.random.default_rng(0).permutation(len(train.y))[:BATCH]  # fit's first batch
    x = torch.from_numpy(m.prepare(train.x[idx])).permute(0, 3, 1, 2).double()
    net = m.engine.native.double().train()
    F.cross_entropy(net(x), torch.from_numpy(train.y[idx])).backward()
    return w0, {n: p.grad.numpy() for n, p in net.named_parameters()}


def group(spec, name: str) -> str:
    if name.startswith("head."):
        return "head"
    return spec.group_of(name[len("backbone.") :])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--step":
        step(*sys.argv[2:4], int(sys.argv[4]), sys.argv[5])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="efficientnet_lite0")
    p.add_argument("--shape", type=int, default=32)
    p.add_argument("--frameworks", default="torch,flax,keras")
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args()
    import transferkit as tk
    from transferkit.bench.report import write_study

    w0, g64 = reference(a.arch, a.shape)
    spec = tk.build(f"torch:{a.arch}", head=tk.Classifier(5),
                    input_shape=(a.shape, a.shape, 3)).spec  # fmt: skip
    groups = list(dict.fromkeys(group(spec, n) for n in g64))
    errors: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fw in a.frameworks.split(","):
            out = Path(tmp) / f"{fw}.npz"
            cmd = [sys.executable, __file__, "--step", fw, a.arch, str(a.shape), str(out)]
            subprocess.run(cmd, check=True, capture_output=True)
            w1 = dict(np.load(out))
            per: dict[str, float] = {}
            for g in groups:
                names = [n for n in g64 if group(spec, n) == g]
                scale = max(float(np.abs(g64[n]).max()) for n in names) or 1.0
                diff = max(float(np.abs((w0[n] - w1[n]) / LR - g64[n]).max()) for n in names)
                per[g] = diff / scale
            errors[fw] = per
            print(fw, json.dumps({k: f"{v:.1e}" for k, v in per.items()}), flush=True)
    fws = list(errors)
    lines = [
        f"# Gradient accuracy: {a.arch} at {a.shape}x{a.shape}, one SGD step, float32 against "
        "a float64 PyTorch reference",
        "",
        f"Command: `python benchmarks/gradient_accuracy.py --arch {a.arch} --shape {a.shape} "
        f"--frameworks {a.frameworks}`. Largest |gradient - reference| per layer group, "
        "relative to the group's largest reference gradient.",
        "",
        "| group | " + " | ".join(fws) + " |",
        "|---|" + "---|" * len(fws),
    ]
    for g in groups:
        lines.append(f"| {g} | " + " | ".join(f"{errors[f][g]:.1e}" for f in fws) + " |")
    write_study(a.out, f"gradient_accuracy_{a.arch}",
                {"arch": a.arch, "shape": a.shape, "errors": errors},
                "\n".join(lines) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
