"""The benchmark's charts: ``bench_ms_per_step.png`` and ``bench_accuracy.png``
(matplotlib, imported only when they are drawn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import owned


def charts(doc: dict[str, Any], out: Path) -> list[Path]:
    """``bench_ms_per_step.png`` (per task: ms/step per framework per model, IQR bars) and
    ``bench_accuracy.png`` (accuracy against labels per class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in doc["cases"] if r.get("status") == "ok"]
    written = []
    tasks = list(dict.fromkeys(r["task"] for r in ok))
    if not ok:
        return written
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = [r for r in ok if r["task"] == task]
        first = {}
        for r in rows:  # the smallest batch of each (model, framework)
            key = (r["arch"], r["framework"])
            if key not in first or r["batch"] < first[key]["batch"]:
                first[key] = r
        archs = list(dict.fromkeys(r["arch"] for r in rows))
        fws = list(dict.fromkeys(r["framework"] for r in rows))
        width = 0.8 / max(1, len(fws))
        for j, fw in enumerate(fws):
            xs, ys, lo, hi = [], [], [], []
            for i, arch in enumerate(archs):
                r = first.get((arch, fw))
                if r is None:
                    continue
                s = r["step_ms"]
                xs.append(i + (j - (len(fws) - 1) / 2) * width)
                ys.append(s["median"])
                lo.append(s["median"] - s["q1"])
                hi.append(s["q3"] - s["median"])
            ax.bar(xs, ys, width, yerr=[lo, hi], label=fw, capsize=2)
        ax.set_xticks(range(len(archs)), archs)
        ax.set_yscale("log")
        ax.set_ylabel("ms per training step (median, IQR)")
        batches = sorted({r["batch"] for r in first.values()})
        ax.set_title(f"{task}, batch {', '.join(map(str, batches))}")
        ax.legend(fontsize=8)
    fig.suptitle("transferkit training step per framework and model (lower is faster)")
    fig.tight_layout()
    path = out / "bench_ms_per_step.png"
    owned.save_figure(fig, path, "benchmark chart", dpi=110)
    plt.close(fig)
    written.append(path)

    acc = [r for r in ok if r.get("accuracy")]
    if acc:
        keys = list(dict.fromkeys((r["task"], r["arch"]) for r in acc))
        cols = min(4, len(keys))
        nrows = -(-len(keys) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.4 * nrows), squeeze=False)
        for ax, (task, arch) in zip(axes.flat, keys, strict=False):
            for r in acc:
                if (r["task"], r["arch"]) != (task, arch):
                    continue
                per = r["accuracy"]["per_shots"]
                ks = sorted(per, key=int)
                ax.plot(
                    [int(k) for k in ks],
                    [per[k]["final_accuracy"] for k in ks],
                    marker="o",
                    label=r["framework"],
                )
            ax.set_xscale("log")
            shots = sorted(
                {
                    int(k)
                    for r in acc
                    if (r["task"], r["arch"]) == (task, arch)
                    for k in r["accuracy"]["per_shots"]
                }
            )
            ax.set_xticks(shots, [str(k) for k in shots])
            ax.minorticks_off()
            ax.set_title(f"{task}: {arch}", fontsize=10)
            ax.set_xlabel("labels per class")
            ax.set_ylabel("test accuracy")
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(keys) :]:
            ax.axis("off")
        fig.suptitle("accuracy after tk.fit from the same weights, per framework")
        fig.tight_layout()
        path = out / "bench_accuracy.png"
        owned.save_figure(fig, path, "benchmark chart", dpi=110)
        plt.close(fig)
        written.append(path)
    return written
