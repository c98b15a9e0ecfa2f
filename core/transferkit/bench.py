"""The cross-framework benchmark suite: one transfer task, every framework, measured alike.

A suite is data (TOML under ``benchmarks/suites/``): tasks x backbones x frameworks x
batch sizes. Every case runs in a fresh subprocess (``python -m transferkit.bench_case``),
so import cost, memory and compiler caches never leak from one framework into another;
this module imports no framework. Per case the subprocess measures import and build time,
the first (compiling) training step, the steady-state ms/step (median and quartiles),
peak resident memory, and the accuracy reached by ``tk.fit`` on the task with several
numbers of labels per class. Each native baseline (PyTorch eager and ``torch.compile``,
``jax.jit`` + optax, Keras ``model.fit``) runs in its own subprocess, alternately with
transferkit's engine step on the same model, weights and batches, so the report gives
transferkit's overhead as a ratio measured under the same noise.

Work is counted analytically: multiply-accumulates of every convolution and dense layer
from the layer shapes (BatchNorm, activations, pooling and the optimizer are not
counted), x2 for FLOPs, x3 for a training step (backward ~ twice the forward). The
machine's float32 matmul rate is measured in the same run with numpy.

    transferkit bench --quick
    python -c "from transferkit.bench import run; run('quick', out='bench-out')"
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, UnknownBackboneError

#: frameworks the project knows of; one that no installed plugin registers is skipped
KNOWN_FRAMEWORKS = ("torch", "flax", "keras", "hf")
#: what a framework needs installed besides its plugin (keras: the backend's package)
KERAS_BACKENDS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
#: native baselines per framework, each written in that framework's own idiom
DEFAULT_BASELINES = {
    "torch": ["eager", "compile"],
    "flax": ["jit"],
    "keras": ["fit"],
    "hf": ["eager"],
}
#: baselines that get a process of their own (a compiler that may hang or crash);
#: the others run in the case's process, after its own measurements
ISOLATED_BASELINES = ("compile",)
TASKS = ("digits", "bbc_news")
FREEZE = ("full", "feature_extraction")
LIBRARIES = (
    "numpy",
    "torch",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "keras",
    "tensorflow",
    "tensorflow-cpu",
    "transformers",
)
FLOPS_METHOD = (
    "analytic: multiply-accumulates of every convolution and dense layer (attention "
    "matmuls for transformers) from the layer shapes, x2 FLOPs per MAC, x3 for a training "
    "step (forward + backward ~ 2x forward); BatchNorm, activations, pooling and the "
    "optimizer update are not counted"
)


def suites_dir() -> Path:
    """Where named suites live: ``$TRANSFERKIT_BENCH_SUITES`` or the checkout's
    ``benchmarks/suites``."""
    env = os.environ.get("TRANSFERKIT_BENCH_SUITES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "benchmarks" / "suites"


# --- suites -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """One task of a suite: data, the backbones and frameworks to run it in, batch sizes,
    and how accuracy is measured."""

    name: str
    data: str
    backbones: tuple[str, ...]
    frameworks: tuple[str, ...]
    batch_sizes: tuple[int, ...] = (32,)
    input_shape: dict[str, tuple[int, ...]] = field(default_factory=dict)
    shots: tuple[int, ...] = (5, 20)
    epochs: int = 10
    lr: float = 1e-3
    fit_batch_size: int = 32
    freeze: str = "full"
    target_accuracy: float = 0.9
    test_size: int | None = None
    baselines: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_BASELINES))


@dataclass(frozen=True)
class Suite:
    name: str
    tasks: tuple[Task, ...]
    description: str = ""
    steps: int = 30
    warmup: int = 5
    rounds: int = 20
    timeout_s: float = 600.0
    seed: int = 0
    matmul_n: int = 1024
    source: str = ""


@dataclass(frozen=True)
class Case:
    """One (task, backbone, framework, batch size) cell of a suite."""

    task: Task
    backbone: str  # "framework:name"
    framework: str  # "keras[jax]" carries the Keras backend
    batch: int
    first_batch: bool  # accuracy is measured once per (task, backbone, framework)

    @property
    def plugin(self) -> str:
        return self.framework.partition("[")[0]

    @property
    def backend(self) -> str | None:
        return self.framework.partition("[")[2].rstrip("]") or None

    @property
    def id(self) -> str:
        return f"{self.task.name}/{self.backbone}/{self.framework}/b{self.batch}"


_SUITE_KEYS = {"name", "description", "steps", "warmup", "rounds", "timeout_s", "seed"}
_SUITE_KEYS |= {"matmul_n", "task"}
_TASK_KEYS = set(Task.__dataclass_fields__)


def load_suite(suite: str | Path | dict[str, Any]) -> Suite:
    """A suite from a name (``benchmarks/suites/<name>.toml``), a TOML path, or a dict."""
    if isinstance(suite, dict):
        return _parse(suite, "<dict>")
    path = Path(suite)
    if not path.suffix:
        path = suites_dir() / f"{suite}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in suites_dir().glob("*.toml"))
        raise ConfigError(
            f"no benchmark suite {str(suite)!r} ({str(path)!r} does not exist); named suites "
            f"in {str(suites_dir())!r}: {', '.join(known) or 'none'}; or pass a .toml path"
        )
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read benchmark suite {str(path)!r}: {e}") from None
    return _parse(raw, str(path))


def _parse(raw: dict[str, Any], source: str) -> Suite:
    unknown = set(raw) - _SUITE_KEYS
    if unknown:
        raise ConfigError(f"suite {source}: unknown key(s) {', '.join(sorted(unknown))}")
    tasks = []
    for t in raw.get("task", []):
        bad = set(t) - _TASK_KEYS
        if bad:
            raise ConfigError(
                f"suite {source}, task {t.get('name')!r}: unknown key(s) {', '.join(sorted(bad))}"
            )
        for key in ("name", "data", "backbones", "frameworks"):
            if key not in t:
                raise ConfigError(f"suite {source}: a task needs {key!r}")
        if t["data"] not in TASKS:
            raise ConfigError(
                f"suite {source}, task {t['name']!r}: data {t['data']!r} is not one of "
                f"{', '.join(TASKS)}"
            )
        if t.get("freeze", "full") not in FREEZE:
            raise ConfigError(f"suite {source}: freeze must be one of {', '.join(FREEZE)}")
        kw = dict(t)
        for key in ("backbones", "frameworks", "batch_sizes", "shots"):
            if key in kw:
                kw[key] = tuple(kw[key])
        kw["input_shape"] = {k: tuple(v) for k, v in t.get("input_shape", {}).items()}
        kw["baselines"] = {**DEFAULT_BASELINES, **t.get("baselines", {})}
        tasks.append(Task(**kw))
    if not tasks:
        raise ConfigError(f"suite {source} defines no [[task]]")
    top = {k: v for k, v in raw.items() if k not in ("task",)}
    top.setdefault("name", Path(source).stem)
    return Suite(tasks=tuple(tasks), source=source, **top)


def expand(suite: Suite) -> list[Case]:
    cases = []
    for task in suite.tasks:
        for bb in task.backbones:
            fws = [bb.partition(":")[0]] if ":" in bb else list(task.frameworks)
            for fw in fws:
                name = bb if ":" in bb else f"{fw.partition('[')[0]}:{bb}"
                for i, batch in enumerate(task.batch_sizes):
                    cases.append(Case(task, name, fw, int(batch), i == 0))
    return cases


def check(cases: list[Case]) -> dict[str, str]:
    """Unknown frameworks and backbones are errors (before anything runs); frameworks that
    are not installed make their cases skipped. Returns case id -> reason to skip."""
    from .plugins import registry

    reg = registry()
    known = set(KNOWN_FRAMEWORKS) | set(reg.frameworks)
    skip: dict[str, str] = {}
    for c in cases:
        if c.plugin not in known:
            close = difflib.get_close_matches(c.plugin, sorted(known), n=3)
            raise ConfigError(
                f"unknown framework {c.framework!r} in the suite (task {c.task.name!r}); "
                f"known: {', '.join(sorted(known))}"
                + (f"; did you mean {', '.join(close)}?" if close else "")
            )
        if c.backend is not None and (c.plugin != "keras" or c.backend not in KERAS_BACKENDS):
            raise ConfigError(
                f"framework {c.framework!r}: only keras takes a backend, one of "
                f"keras[{'], keras['.join(KERAS_BACKENDS)}]"
            )
        fw = reg.frameworks.get(c.plugin)
        if fw is None:
            skip[c.id] = (
                f"framework {c.plugin!r} is not installed (no plugin registers it): "
                f"pip install 'transferkit[{c.plugin if c.plugin != 'flax' else 'jax'}]'"
            )
            continue
        missing = fw.missing()
        if c.backend and importlib.util.find_spec(KERAS_BACKENDS[c.backend]) is None:
            missing.append(KERAS_BACKENDS[c.backend])
        if missing:
            skip[c.id] = (
                f"framework {c.framework!r} needs {', '.join(missing)}, which is not "
                f"installed: pip install 'transferkit[{fw.extra}]'"
            )
            continue
        if c.backbone not in reg.catalog:
            try:
                fw.resolve(c.backbone.partition(":")[2]) or reg.catalog.get(c.backbone)
            except UnknownBackboneError as e:
                raise ConfigError(f"suite task {c.task.name!r}: {e}") from None
    return skip


# --- work and the machine -----------------------------------------------------------------
def _conv_out(size: int, kernel: int, stride: int, pad: int | None) -> int:
    if pad is None:  # TensorFlow "same"
        return -(-size // stride)
    return (size + 2 * pad - kernel) // stride + 1


def forward_macs(arch: str, input_shape: tuple[int, ...], config: dict | None = None) -> int:
    """Multiply-accumulates of one forward pass of one example through the backbone
    (convolutions and dense layers; attention matmuls for transformer encoders)."""
    if arch == "mlp":
        return int(np.prod(input_shape)) * 128 + 128 * 64
    if arch == "transformer":
        cfg = config or {}
        length, h = int(input_shape[0]), int(cfg["hidden_size"])
        ffn = int(cfg.get("intermediate_size", 4 * h))
        per_layer = length * (4 * h * h + 2 * h * ffn) + 2 * length * length * h
        return int(cfg["num_hidden_layers"]) * per_layer
    hgt, wid, cin = input_shape
    macs = 0

    def conv(cin: int, cout: int, k: int, s: int, pad: int | None, groups: int = 1) -> None:
        nonlocal hgt, wid, macs
        hgt, wid = _conv_out(hgt, k, s, pad), _conv_out(wid, k, s, pad)
        macs += hgt * wid * cout * (cin // groups) * k * k

    if arch == "cnn":
        for cout, s in zip((32, 64, 128, 128), (1, 2, 2, 2), strict=True):
            conv(cin, cout, 3, s, 1)
            cin = cout
        return macs
    if arch == "resnet18":
        conv(cin, 64, 7, 2, 3)
        hgt, wid = _conv_out(hgt, 3, 2, 1), _conv_out(wid, 3, 2, 1)  # max pool
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            for b in range(2):
                s = stride if b == 0 else 1
                h0, w0 = hgt, wid
                conv(cin, cout, 3, s, 1)
                conv(cout, cout, 3, 1, 1)
                if s != 1 or cin != cout:  # 1x1 downsample on the block's input
                    macs += _conv_out(h0, 1, s, 0) * _conv_out(w0, 1, s, 0) * cin * cout
                cin = cout
        return macs
    if arch == "efficientnet_lite0":
        from .reference import LITE0_BLOCKS

        conv(cin, 32, 3, 2, None)
        cin = 32
        for expand_ratio, cout, repeats, k, stride in LITE0_BLOCKS:
            for r in range(repeats):
                mid = cin * expand_ratio
                if expand_ratio != 1:
                    conv(cin, mid, 1, 1, None)
                conv(mid, mid, k, stride if r == 0 else 1, None, groups=mid)
                conv(mid, cout, 1, 1, None)
                cin = cout
        conv(cin, 1280, 1, 1, None)
        return macs
    raise KeyError(arch)


def train_step_flops(
    arch: str,
    input_shape: tuple[int, ...],
    feature_size: int,
    num_classes: int,
    batch: int,
    config: dict | None = None,
) -> float | None:
    """FLOPs of one training step of backbone + linear head (see ``FLOPS_METHOD``);
    None for an architecture this module cannot count."""
    try:
        macs = forward_macs(arch, tuple(input_shape), config)
    except (KeyError, TypeError, ValueError):
        return None
    return float(2 * 3 * (macs + feature_size * num_classes) * batch)


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


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
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


def machine() -> dict[str, Any]:
    """CPU, cores, memory, GPUs and library versions (read without importing them)."""
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = None
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    mem = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cores_available": affinity,
        "memory_gib": round(mem, 1) if mem else None,
        "gpus": _gpus(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": versions,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


# --- running ------------------------------------------------------------------------------
def _case_spec(case: Case, suite: Suite, part: str, work: Path) -> dict[str, Any]:
    t = case.task
    short = case.backbone.partition(":")[2]
    return {
        "backbone": case.backbone,
        "framework": case.plugin,
        "backend": case.backend,
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
        "native_dir": str(suites_dir() / "native"),
    }


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def run_part(spec: dict[str, Any], timeout_s: float, env: dict[str, str]) -> dict[str, Any]:
    """Run one part of a case in a fresh ``python -m transferkit.bench_case`` process;
    a crash or a hang (past ``timeout_s``) comes back as a failed result with its error."""
    with tempfile.TemporaryDirectory(prefix="tk-bench-") as d:
        spec_file, out_file = Path(d) / "spec.json", Path(d) / "result.json"
        spec_file.write_text(json.dumps(spec))
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "transferkit.bench_case", str(spec_file), str(out_file)],
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


def _env(case: Case) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share a GPU politely
    if case.backend:
        env["KERAS_BACKEND"] = case.backend
    # The subprocess must import this very transferkit, installed or not.
    src = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def run_case(case: Case, suite: Suite, work: Path, skip: str | None = None) -> dict[str, Any]:
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
    env = _env(case)
    names = case.task.baselines.get(case.plugin, [])
    spec = _case_spec(case, suite, "transferkit", work)
    spec["inprocess_baselines"] = [n for n in names if n not in ISOLATED_BASELINES]
    main = run_part(spec, suite.timeout_s, env)
    record.update(main)
    record.setdefault("baselines", {})
    if main.get("status") != "ok":
        return record
    for name in [n for n in names if n in ISOLATED_BASELINES]:
        spec = _case_spec(case, suite, f"baseline:{name}", work)
        record["baselines"][name] = run_part(spec, suite.timeout_s, env)
    return record


def select(
    cases: list[Case], frameworks: list[str] | None = None, backbones: list[str] | None = None
) -> list[Case]:
    """The cases whose framework and backbone match one of the globs (``keras*``,
    ``keras[jax]`` as a plain name; ``cnn`` matches ``torch:cnn``, ``flax:cnn``...)."""

    def hit(value: str, patterns: list[str] | None, prefixed: bool = False) -> bool:
        return not patterns or any(
            value == p
            or fnmatch.fnmatch(value, p)
            or (prefixed and value.partition(":")[2] == p)
            or (prefixed and fnmatch.fnmatch(value, f"*:{p}"))
            for p in patterns
        )

    return [c for c in cases if hit(c.framework, frameworks) and hit(c.backbone, backbones, True)]


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
            "tasks": [asdict(t) for t in s.tasks],
        },
        "command": command or f"transferkit.bench.run({str(suite)!r}, quick={quick})",
        "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
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
                (Path(out) / "bench.json").write_text(json.dumps(partial, indent=2, default=float))
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
    doc["machine"]["load_average_at_end"] = (
        list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    )
    # The machine's rate is the better of the two measurements (others may share it).
    peak = max(
        m["best_gflops"] for m in (doc["machine"]["matmul"], doc["machine"]["matmul_at_end"])
    )
    doc["machine"]["matmul_peak_gflops"] = peak
    for r in results:
        _derive(r, peak)
    doc["cases"] = results
    doc["complete"] = doc.get("complete", True)
    doc["duration_s"] = time.perf_counter() - started
    doc["summary"] = summarise(results)
    return doc


def report(path: str | Path) -> dict[str, Any]:
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


def asdict_shallow(s: Suite) -> dict[str, Any]:
    return {f: getattr(s, f) for f in Suite.__dataclass_fields__}


def _derive(r: dict[str, Any], peak_gflops: float) -> None:
    """Achieved GFLOP/s and the fraction of the measured matmul rate."""
    step = (r.get("step_ms") or {}).get("median")
    flops = r.get("flops_per_step")
    if step and flops:
        r["gflops_per_s"] = flops / (step / 1e3) / 1e9
        r["fraction_of_matmul_peak"] = r["gflops_per_s"] / peak_gflops
    else:
        r["gflops_per_s"] = r["fraction_of_matmul_peak"] = None


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


# --- reporting ------------------------------------------------------------------------------
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
    fig.savefig(path, dpi=110)
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
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write(doc: dict[str, Any], out: Path) -> list[Path]:
    """``bench.json``, ``bench.md`` and the PNG charts into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(doc, indent=2, default=float))
    (out / "bench.md").write_text(markdown(doc))
    return [out / "bench.json", out / "bench.md", *charts(doc, out)]
