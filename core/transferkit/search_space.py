"""What ``tk.search`` searches, and how one trial of it runs.

A space maps option names to a list of values (a grid), a ``(low, high)`` or
``(low, high, "log")`` range, or an Optuna distribution. Every name and value is checked
here before any data is read or any trial runs. A trial is a plain ``tk.build`` +
``tk.fit`` per validation fold, in this process or, when the space spans frameworks, in
a fresh one. Optuna (the ``search`` extra) is imported only inside functions.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import validate
from .data import Dataset, as_dataset
from .errors import ConfigError, LabelError
from .runconfig import FIT_SCHEMA


def _int_at_least(lo: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _is_shape(v: Any) -> bool:
    if isinstance(v, str):
        return all(p.isdigit() and int(p) >= 1 for p in v.split("x"))
    return isinstance(v, list | tuple) and bool(v) and all(_int_at_least(1)(p) for p in v)


_SHARED = ("backbone", "weights", "freeze", "lr", "epochs", "batch_size", "optimizer")
_SHARED += ("weight_decay", "schedule", "regularizer", "alpha", "beta", "dropout", "batchnorm")
#: every option a search sets: (what it must be, check, example); those that
#: ``transferkit fit`` shares keep its run description's checks
OPTIONS: dict[str, tuple[str, Callable[[Any], bool], str]] = {
    **{k: FIT_SCHEMA[k] for k in _SHARED},
    "freeze_n": ("an integer >= 0 (train_last, unfreeze_at's n)", _int_at_least(0), "2"),
    "freeze_every": ("an integer >= 1 (gradual's every)", _int_at_least(1), "2"),
    "freeze_epoch": ("an integer >= 0 (unfreeze_at's epoch)", _int_at_least(0), "1"),
    "hidden": ("an integer >= 0 (the head's hidden size, 0: linear)", _int_at_least(0), "64"),
    "input_shape": ("a shape of integers >= 1", _is_shape, "(16, 16, 3)"),
}
INTEGERS = {"epochs", "batch_size", "hidden", "freeze_n", "freeze_every", "freeze_epoch"}
NUMBERS = INTEGERS | {"lr", "weight_decay", "alpha", "beta", "dropout"}
_POLICY_OPTIONS = {"freeze_n": "n", "freeze_every": "every", "freeze_epoch": "epoch"}
_FIT_KEYS = ("epochs", "lr", "batch_size", "optimizer", "weight_decay", "schedule", "batchnorm")
METRICS = {"classification": ("accuracy", "macro_f1", "loss"), "regression": ("loss", "mse", "mae")}
HOLD_OUT = 0.2  # of train, stratified, when neither val nor cv is given
#: the keys of a search's TOML file
TOML_KEYS = ("data", "val", "test", "shots", "metric", "n_trials", "cv", "seed", "storage")
TOML_KEYS += ("study_name", "timeout", "out", "fixed", "space")


def unknown(name: Any, known: Any, where: str) -> ConfigError:
    close = difflib.get_close_matches(str(name), list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(
        f"{where} has an unknown option {name!r}{hint} The options are {', '.join(sorted(known))}"
    )


def check_value(name: str, value: Any, where: str) -> None:
    what, ok, example = OPTIONS[name]
    if not ok(value):
        raise ConfigError(f"{where}: {value!r} is not valid; {name} must be {what}, e.g. {example}")
    if name == "freeze":
        from . import freeze

        freeze.from_name(value)  # an unknown policy is named with the known ones


def encode(name: str, value: Any) -> Any:
    """A value as Optuna stores it: str, int, float or bool (shapes as ``"16x16x3"``)."""
    if name == "input_shape" and not isinstance(value, str):
        return "x".join(str(int(p)) for p in value)
    return value


def decode(name: str, value: Any) -> Any:
    if name == "input_shape" and isinstance(value, str):
        return tuple(int(p) for p in value.split("x"))
    return value


def _range(name: str, value: tuple, where: str, d: Any) -> Any:
    """``(low, high)`` or ``(low, high, "log")``: integers for integer options, else floats."""
    if name not in NUMBERS:
        raise ConfigError(f"{where}: {name} takes a list of values, not a range {value!r}")
    log = len(value) == 3 and value[2] == "log"
    if len(value) != 2 and not (len(value) == 3 and log):
        raise ConfigError(f"{where}: a range is (low, high) or (low, high, 'log'), got {value!r}")
    low, high = value[:2]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
        raise ConfigError(f"{where}: the bounds of {value!r} must be numbers")
    if not low < high:
        raise ConfigError(
            f"{where}: the range {value!r} is empty (low must be below high); put a single "
            f"value in fixed={{{name!r}: ...}} instead"
        )
    for v in (low, high):
        check_value(name, v, where)
    try:
        if name in INTEGERS:
            return d.IntDistribution(int(low), int(high), log=log)
        return d.FloatDistribution(float(low), float(high), log=log)
    except ValueError as e:  # e.g. a log range from 0
        raise ConfigError(f"{where}: {e}") from None


def _given(name: str, dist: Any, where: str, d: Any) -> Any:
    """An Optuna distribution, checked against what the option takes."""
    if isinstance(dist, d.CategoricalDistribution):
        for c in dist.choices:
            check_value(name, decode(name, c), where)
        return d.CategoricalDistribution([encode(name, c) for c in dist.choices])
    if name not in NUMBERS or (name in INTEGERS and isinstance(dist, d.FloatDistribution)):
        takes = "an IntDistribution" if name in INTEGERS else "a CategoricalDistribution"
        raise ConfigError(f"{where}: {name} cannot take {dist!r}; give {takes}")
    for v in (dist.low, dist.high):
        check_value(name, v, where)
    return dist


@dataclass(frozen=True)
class Space:
    """A checked space: ``distributions`` (name -> Optuna distribution, values encoded),
    ``grid`` (name -> values, when every entry is a list) and the ``fixed`` options."""

    distributions: dict[str, Any]
    grid: dict[str, list] | None
    fixed: dict[str, Any] = field(default_factory=dict)

    def config(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """One trial's options: the fixed ones and the sampled ones, decoded."""
        return {**self.fixed, **{k: decode(k, v) for k, v in params.items()}}

    def choices(self, name: str) -> list[Any]:
        if name in self.fixed:
            return [self.fixed[name]]
        return list(getattr(self.distributions.get(name), "choices", ()))

    def points(self) -> list[dict[str, Any]]:
        """Every point of the grid, as Optuna's params."""
        grid = self.grid or {}
        return [dict(zip(grid, p, strict=True)) for p in itertools.product(*grid.values())]


def parse(space: Mapping[str, Any], fixed: Mapping[str, Any] | None) -> Space:
    """Check and convert a space and the fixed options (see :func:`transferkit.search.search`)."""
    from optuna import distributions as d

    if not isinstance(space, Mapping) or not space:
        raise ConfigError('search(space=) needs a dict of options, e.g. {"lr": [1e-3, 1e-2]}')
    fixed = dict(fixed or {})
    for name, value in fixed.items():
        if name not in OPTIONS:
            raise unknown(name, OPTIONS, "fixed")
        check_value(name, value, f"fixed[{name!r}]")
        fixed[name] = decode(name, encode(name, value))
    dists, grid = {}, {}
    for name, value in space.items():
        where = f"space[{name!r}]"
        if name not in OPTIONS:
            raise unknown(name, OPTIONS, "space")
        if name in fixed:
            raise ConfigError(f"{name!r} is both searched (space) and fixed; keep one of them")
        if isinstance(value, d.BaseDistribution):
            dists[name] = _given(name, value, where, d)
        elif isinstance(value, tuple) and name != "input_shape":
            dists[name] = _range(name, value, where, d)
        elif isinstance(value, list):
            if not value:
                raise ConfigError(f"{where} is an empty list; give at least one value to try")
            for v in value:
                check_value(name, v, where)
            grid[name] = [encode(name, v) for v in value]
            if len(set(map(repr, grid[name]))) < len(value):
                raise ConfigError(f"{where} lists a value twice: {value!r}")
            dists[name] = d.CategoricalDistribution(grid[name])
        else:
            raise ConfigError(
                f"{where} = {value!r:.60}: give a list of values (a grid), (low, high) or "
                "(low, high, 'log') (a range), or an Optuna distribution"
            )
    if "backbone" not in dists and "backbone" not in fixed:
        raise ConfigError('search needs a backbone, in space= or fixed={"backbone": "torch:cnn"}')
    return Space(dists, grid if len(grid) == len(dists) else None, fixed)


def check_backbones(names: list[str]) -> None:
    """Every backbone exists and its framework is installed, before any trial runs."""
    from .builder import _spec
    from .plugins import registry

    for name in names:
        spec = _spec(name)  # an unknown name lists the closest ones
        registry().framework(spec.framework).ensure_installed()


def from_toml_table(space: Mapping[str, Any]) -> dict[str, Any]:
    """``[space]`` of a TOML file: lists are grids, ``{low, high, log}`` tables ranges and
    ``{choices = [...]}`` tables choices to sample."""
    from optuna.distributions import CategoricalDistribution

    def value(v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    out: dict[str, Any] = {}
    for name, v in space.items():
        keys = {"choices"} if isinstance(v, dict) and "choices" in v else {"low", "high", "log"}
        if isinstance(v, list):
            out[name] = [value(c) for c in v]
        elif not isinstance(v, dict):
            raise ConfigError(
                f"space.{name} = {v!r:.60} must be a list (a grid) or a table "
                "{low = 1e-4, high = 1e-1, log = true} or {choices = [...]}"
            )
        elif set(v) - keys:
            raise unknown(sorted(set(v) - keys)[0], keys, f"space.{name}")
        elif "choices" in v:
            out[name] = CategoricalDistribution([value(c) for c in v["choices"]])
        elif "low" not in v or "high" not in v:
            raise ConfigError(f"space.{name} = {v!r} needs low and high")
        else:
            out[name] = (v["low"], v["high"], "log") if v.get("log") else (v["low"], v["high"])
    return out


@dataclass(frozen=True)
class Task:
    """``kind`` "classification" (of ``size`` classes) or "regression" (``size`` outputs)."""

    kind: str
    size: int
    classes: list[str] | None = None


def data(train: Any, val: Any, test: Any, metric: str) -> tuple:
    """``(train, val, test, task)``: the data as Datasets with labels, and the task they
    set (integer labels: classification; floats: regression), which takes ``metric``."""
    out = []
    for d, what in ((train, "train"), (val, "val"), (test, "test")):
        d = None if d is None else as_dataset(d, what)
        if d is not None and (d.y is None or not len(d)):
            raise LabelError(f"search({what}=...) needs labelled examples (x and y)")
        out.append(d)
    y = out[0].y
    if y.dtype.kind == "f":
        task = Task("regression", 1 if y.ndim == 1 else y.shape[1])
    else:
        task = Task("classification", out[0].num_classes, out[0].classes)
    if metric not in METRICS[task.kind]:
        raise ConfigError(f"metric={metric!r} is not one of {task.kind}'s {METRICS[task.kind]}")
    return (*out, task)


def folds(train: Dataset, val: Any, cv: Any, seed: int, task: Task) -> tuple[list, str]:
    """(fit, validate) pairs, and how they were made."""
    if cv not in ("auto", None):
        cv = validate.integer("cv", cv, 2)
    if val is not None:
        if cv not in ("auto", None):
            raise ConfigError(f"cv={cv} and val= were both given; pass one of them")
        return [(train, val)], "val"
    classify = task.kind == "classification"
    counts = np.bincount(train.y) if classify else np.array([len(train)])
    smallest = int(counts[counts > 0].min())
    if cv == "auto":
        cv = min(5, smallest) if classify and smallest < 10 else None
        if cv == 1:
            raise ConfigError("a class of train has 1 example, too few to validate on: pass val=")
    if cv is None:
        return [train.split(HOLD_OUT, seed=seed)], f"{HOLD_OUT:.0%} hold-out of train"
    if cv > smallest:
        raise ConfigError(f"cv={cv} folds, but a class of train has {smallest} example(s)")
    from sklearn.model_selection import KFold, StratifiedKFold

    kind = StratifiedKFold if classify else KFold
    splits = kind(n_splits=cv, shuffle=True, random_state=seed).split(train.y, train.y)
    return [(train.subset(a), train.subset(b)) for a, b in splits], f"{cv}-fold cv on train"


def _made(from_name: Callable[..., Any], name: str, options: dict[str, Any]) -> Any:
    """A policy or regularizer from its name (the CLI's mapping), with the options that it
    takes: a grid crosses ``freeze_n`` with policies that have no ``n``."""
    takes = {f.name for f in dataclasses.fields(from_name(name))}
    return from_name(name, **{k: v for k, v in options.items() if k in takes and v is not None})


def trial_options(config: Mapping[str, Any], task: Task) -> tuple[dict, dict]:
    """``tk.build`` and ``tk.fit`` keyword arguments for one configuration."""
    from . import freeze, regularizers
    from .heads import Classifier, Regressor

    hidden = config.get("hidden") or 0
    head = Classifier if task.kind == "classification" else Regressor
    weights, shape = config.get("weights", "pretrained"), config.get("input_shape")
    build = {
        "name": config["backbone"],
        "head": head(task.size, (hidden,) if hidden else (), config.get("dropout", 0.0)),
        "weights": None if weights in ("none", "None", "") else weights,
        "input_shape": None if shape is None else tuple(decode("input_shape", shape)),
        "classes": task.classes,
    }
    fit = {k: config[k] for k in _FIT_KEYS if config.get(k) is not None}
    if config.get("freeze") is not None:
        opts = {v: config.get(k) for k, v in _POLICY_OPTIONS.items()}
        fit["freeze"] = _made(freeze.from_name, config["freeze"], opts)
    if config.get("regularizer", "none") != "none":
        opts = {k: config.get(k) for k in ("alpha", "beta")}
        fit["regularizer"] = _made(regularizers.from_name, config["regularizer"], opts)
    return build, fit


def fit_trial(config: Mapping[str, Any], train: Dataset, task: Task, seed: int) -> Any:
    """A model built and fitted with one configuration."""
    from .builder import build
    from .training import fit

    build_options, fit_options = trial_options(config, task)
    model = build(**build_options, seed=seed)
    fit(model, train, verbose=0, seed=seed, **fit_options)
    return model


def score(config: dict, folds: list, task: Task, metric: str, seed: int) -> dict[str, Any]:
    """``{"value", "folds", "pid"}``: the mean validation metric over the folds, or
    ``{"error"}``: why the trial failed."""
    try:
        values = [fit_trial(config, a, task, seed).evaluate(b)[metric] for a, b in folds]
    except Exception as e:  # the trial failed; the search goes on
        return {"error": " ".join(f"{type(e).__name__}: {e}".split())[:500]}
    if not all(math.isfinite(v) for v in values):
        return {"error": f"the validation {metric} is not finite: {values}"}
    return {"value": float(np.mean(values)), "folds": values, "pid": os.getpid()}


class Runner:
    """Scores configurations in this process, or each in a fresh one (``tmp``, a folder
    for the data and the results): TensorFlow, JAX and PyTorch in one process import
    slowly and their thread pools fight."""

    def __init__(self, folds: list, task: Task, metric: str, seed: int, tmp: Path | None):
        self.folds, self.tmp, self.calls = folds, tmp, 0
        self.job = {"task": dataclasses.asdict(task), "metric": metric, "seed": seed}
        if tmp is not None:
            arrays = {}
            for i, (a, b) in enumerate(folds):
                arrays.update({f"x{i}": np.asarray(a.x), f"y{i}": a.y})
                arrays.update({f"vx{i}": np.asarray(b.x), f"vy{i}": b.y})
            np.savez(tmp / "data.npz", **arrays)
            self.job.update(data=str(tmp / "data.npz"), folds=len(folds))

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        job = self.job
        if self.tmp is None:
            return score(config, self.folds, Task(**job["task"]), job["metric"], job["seed"])
        self.calls += 1
        path, out = self.tmp / f"job{self.calls}.json", self.tmp / f"result{self.calls}.json"
        path.write_text(json.dumps({**job, "config": config, "result": str(out)}, default=list))
        code = "import sys; from transferkit.search_space import worker; worker(sys.argv[1])"
        run = [sys.executable, "-c", code, str(path)]
        proc = subprocess.run(run, capture_output=True, text=True)
        if out.exists():
            return json.loads(out.read_text())
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])
        return {"error": f"the trial's process exited with code {proc.returncode}: {tail}"}


def worker(job_file: str) -> None:
    """A trial in a process of its own: the folds from the job's .npz, the result as JSON."""
    job = json.loads(Path(job_file).read_text())
    with np.load(job["data"], allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}

    def data(x: np.ndarray, y: np.ndarray) -> Dataset:
        return Dataset(x.tolist() if x.dtype.kind == "U" else x, y)

    folds = [
        (data(a[f"x{i}"], a[f"y{i}"]), data(a[f"vx{i}"], a[f"vy{i}"])) for i in range(job["folds"])
    ]
    result = score(job["config"], folds, Task(**job["task"]), job["metric"], job["seed"])
    Path(job["result"]).write_text(json.dumps(result))
