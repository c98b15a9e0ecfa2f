"""Benchmark suites: tasks x backbones x frameworks x batch sizes, and the cases they
expand to.

A suite is data: TOML shipped with the package (``transferkit/bench/suites/<name>.toml``,
read through :mod:`importlib.resources`, so an installed wheel has them), a TOML file of
the user's, or a dict. Parsing knows no framework: frameworks, their variants
(``keras[jax]``) and their baselines are checked against the registered plugins before
anything runs (:func:`transferkit.bench.frameworks.check`).
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from ..errors import ConfigError

TASKS = ("digits", "bbc_news")
FREEZE = ("full", "feature_extraction")
#: where named suites are looked up instead of the shipped ones
SUITES_ENV = "TRANSFERKIT_BENCH_SUITES"


def suites_dir() -> Traversable:
    """Where named suites live: ``$TRANSFERKIT_BENCH_SUITES`` or the package's own."""
    env = os.environ.get(SUITES_ENV)
    return Path(env) if env else files(__package__) / "suites"


@dataclass(frozen=True)
class Task:
    """One task of a suite: data, the backbones and frameworks to run it in, batch sizes,
    and how accuracy is measured. ``baselines``: framework -> native baselines to run
    (a framework not named runs its default ones)."""

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
    baselines: dict[str, list[str]] = field(default_factory=dict)


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
    framework: str  # "keras[jax]" carries the variant
    batch: int
    first_batch: bool  # accuracy is measured once per (task, backbone, framework)

    @property
    def plugin(self) -> str:
        """The registered framework's name (``keras`` of ``keras[jax]``)."""
        return self.framework.partition("[")[0]

    @property
    def variant(self) -> str | None:
        return self.framework.partition("[")[2].rstrip("]") or None

    @property
    def id(self) -> str:
        return f"{self.task.name}/{self.backbone}/{self.framework}/b{self.batch}"


_SUITE_KEYS = {"name", "description", "steps", "warmup", "rounds", "timeout_s", "seed"}
_SUITE_KEYS |= {"matmul_n", "task"}
_TASK_KEYS = set(Task.__dataclass_fields__)


def load_suite(suite: str | Path | dict[str, Any]) -> Suite:
    """A suite from a name (``default``, ``quick``: shipped with the package), a TOML path,
    or a dict."""
    if isinstance(suite, dict):
        return _parse(suite, "<dict>")
    path: Traversable = Path(suite)
    if not path.suffix:
        path = suites_dir() / f"{suite}.toml"
    if not path.is_file():
        known = sorted(p.name[: -len(".toml")] for p in _tomls())
        raise ConfigError(
            f"no benchmark suite {str(suite)!r} ({str(path)!r} does not exist); named suites "
            f"in {str(suites_dir())!r}: {', '.join(known) or 'none'}; or pass a .toml path"
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError, tomllib.TOMLDecodeError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else e
        raise ConfigError(f"cannot read benchmark suite {str(path)!r}: {why}") from None
    return _parse(raw, str(path))


def _tomls() -> list[Traversable]:
    where = suites_dir()
    if not where.is_dir():
        return []
    return [p for p in where.iterdir() if p.name.endswith(".toml") and p.is_file()]


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
        kw["baselines"] = {k: list(v) for k, v in t.get("baselines", {}).items()}
        tasks.append(Task(**kw))
    if not tasks:
        raise ConfigError(f"suite {source} defines no [[task]]")
    top = {k: v for k, v in raw.items() if k not in ("task",)}
    top.setdefault("name", Path(source).stem)
    return Suite(tasks=tuple(tasks), source=source, **top)


def asdict_shallow(s: Suite) -> dict[str, Any]:
    return {f: getattr(s, f) for f in Suite.__dataclass_fields__}


def expand(suite: Suite) -> list[Case]:
    """Every case of a suite: a backbone without ``framework:`` runs in every framework of
    its task, at every batch size."""
    cases = []
    for task in suite.tasks:
        for bb in task.backbones:
            fws = [bb.partition(":")[0]] if ":" in bb else list(task.frameworks)
            for fw in fws:
                name = bb if ":" in bb else f"{fw.partition('[')[0]}:{bb}"
                for i, batch in enumerate(task.batch_sizes):
                    cases.append(Case(task, name, fw, int(batch), i == 0))
    return cases


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
