"""The machine a benchmark runs on: CPU, cores, memory, GPUs, library versions, and its
float32 matmul rate measured with numpy (the reference for achieved GFLOP/s).

Library versions are read from the installed distributions, never by importing them.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np


def matmul_gflops(n: int = 1024, repeats: int = 10) -> dict[str, Any]:
    """The machine's float32 matmul rate through numpy's BLAS (all threads)."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    rates = 2 * n**3 / np.asarray(times) / 1e9
    return {
        "n": n,
        "repeats": repeats,
        "best_gflops": float(rates.max()),
        "median_gflops": float(np.median(rates)),
        "method": f"numpy float32 ({n}x{n}) @ ({n}x{n}), best and median of {repeats}",
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> list[str]:
    """NVIDIA GPUs as ``nvidia-smi`` names them (name, memory); none where it is absent."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def versions(distributions: Iterable[str]) -> dict[str, str | None]:
    """Installed version of each distribution (``None``: not installed)."""
    out: dict[str, str | None] = {}
    for name in distributions:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine(libraries: Iterable[str] = ("numpy",)) -> dict[str, Any]:
    """CPU, cores, memory, GPUs and the versions of ``libraries``."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    mem = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cores_available": affinity,
        "memory_gib": round(mem, 1) if mem else None,
        "gpus": gpus(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": versions(libraries),
        "load_average_at_start": load_average(),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far."""
    import resource
    import sys

    # ru_maxrss is in KiB on Linux, bytes on macOS
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
