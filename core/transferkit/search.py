"""``tk.search``: hyper-parameter search for transfer learning, on Optuna.

Selection uses validation data only (``val``, or a hold-out split of ``train``, or k-fold
cross-validation on it); the chosen configuration is refit on all of ``train`` and, if
``test`` is given, evaluated on it once. Trials are plain ``tk.build`` + ``tk.fit`` runs
(``search_space.py``), so a search works on every framework, third-party ones included.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import owned, search_space, validate
from .data import Dataset
from .errors import ConfigError, FrameworkNotInstalledError, OverwriteError, TransferkitError
from .metrics import HIGHER_IS_BETTER
from .search_space import Space
from .textfiles import read_toml

__all__ = ["SearchResult", "search", "search_from_toml"]


def search(
    train: Dataset | tuple,
    space: Mapping[str, Any],
    val: Dataset | tuple | None = None,
    metric: str = "accuracy",
    n_trials: int | None = None,
    cv: int | str | None = "auto",
    seed: int = 0,
    storage: str | None = None,
    study_name: str | None = None,
    test: Dataset | tuple | None = None,
    timeout: float | None = None,
    verbose: int = 1,
    *,
    fixed: Mapping[str, Any] | None = None,
    refit: bool = True,
) -> SearchResult:
    """Search ``space`` for the configuration with the best validation ``metric``.

    Args:
        train: a ``tk.Dataset`` or an ``(x, y)`` pair (integer labels: a classifier;
            float targets: a regressor).
        space: option -> a list of values (a grid: GridSampler over the product),
            ``(low, high)`` / ``(low, high, "log")`` (a range) or an Optuna distribution
            (then TPE). Options: backbone, weights, input_shape, freeze (features, full,
            train_last, unfreeze_at, gradual, lora), freeze_n, freeze_every, freeze_epoch,
            lr, epochs, batch_size, optimizer, weight_decay, schedule, regularizer (none,
            l2sp, l2), alpha, beta, hidden (head hidden size, 0: linear), dropout, batchnorm.
        val: validation data; without it, selection uses ``cv``.
        metric: accuracy, macro_f1 or loss (classifiers); mse, mae or loss (regressors).
        n_trials: trials the study should hold; a resumed search runs only the missing
            ones. A grid defaults to its size; a sampled space needs it.
        cv: "auto" (k-fold with k = min(5, smallest class) when a class has fewer than 10
            examples, else a 20% stratified hold-out), k (k-fold), or None (hold-out).
        seed: seeds the split, the folds, the sampler and every build and fit.
        storage: an Optuna storage URL (``"sqlite:///search.db"``): the study is loaded if
            it exists; trials finished there are not run again, interrupted ones are.
        study_name: default: a hash of the space, the data sizes and the settings.
        test: evaluated once, with the chosen configuration refit on all of ``train``.
        timeout: seconds after which no new trial starts.
        verbose: 0 silent, 1 a line per trial (stderr), 2 Optuna's log as well.
        fixed: options that are not searched, e.g. ``{"backbone": "torch:cnn"}``.
        refit: refit ``best_model`` now; with False, on its first access.

    Names, values, backbones and data are checked before any trial runs. A failing trial
    (a diverging lr, say) is recorded as FAIL with its error and the search goes on. When
    the backbones span frameworks, every trial runs in a fresh process.

    Example::

        result = tk.search(train, {"lr": (1e-4, 1e-1, "log"), "freeze": ["features", "full"]},
                           fixed={"backbone": "torch:cnn", "epochs": 10}, n_trials=20)
        result.best_params, result.best_value, result.best_model.predict(x)
    """
    try:
        import optuna
    except ImportError:
        raise FrameworkNotInstalledError(
            "tk.search needs Optuna, which is not installed: pip install 'transferkit[search]'"
        ) from None
    validate.choice("metric", metric, HIGHER_IS_BETTER)
    sp = search_space.parse(space, fixed)
    if n_trials is not None:
        n_trials = validate.integer("n_trials", n_trials, 1)
    elif sp.grid is None:
        raise ConfigError(
            "search needs n_trials= when it samples ranges or distributions (TPE); or give "
            "every searched option a list of values to search the whole grid"
        )
    seed = validate.integer("seed", seed, 0, 2**32 - 1)
    if timeout is not None:
        timeout = validate.number("timeout", timeout, 0.0, exclusive_minimum=True)
    search_space.check_backbones(sp.choices("backbone"))
    train, val, test, task = search_space.data(train, val, test, metric)
    folds, how = search_space.folds(train, val, cv, seed, task)
    direction = "maximize" if HIGHER_IS_BETTER[metric] else "minimize"
    grid, tpe = optuna.samplers.GridSampler, optuna.samplers.TPESampler
    sampler = grid(sp.grid, seed=seed) if sp.grid else tpe(seed=seed)
    name = study_name or _study_name(sp, train, val, metric, cv, seed)
    level = optuna.logging.get_verbosity()
    if verbose < 2:  # trials are reported here, each once, failures included
        optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = _study(optuna, storage, sampler, name, direction, sp)
        with tempfile.TemporaryDirectory(prefix="transferkit-search-") as tmp:
            isolate = len({b.split(":", 1)[0] for b in sp.choices("backbone")}) > 1
            runner = search_space.Runner(folds, task, metric, seed, Path(tmp) if isolate else None)
            _optimize(study, sp, _objective(sp, runner, metric, verbose), n_trials, timeout)
    finally:
        optuna.logging.set_verbosity(level)
    if not any(t.state.name == "COMPLETE" for t in study.trials):
        first = next((t.user_attrs["error"] for t in study.trials if "error" in t.user_attrs), "")
        raise TransferkitError(f"all {len(study.trials)} trials of the search failed: {first}")
    result = SearchResult(study, metric, sp, lambda c: search_space.fit_trial(c, train, task, seed))
    result.validation = how
    if refit or test is not None:
        model = result.best_model
        result.test = None if test is None else model.evaluate(test)
    return result


def _study_name(sp: Space, train: Dataset, val: Any, metric: str, cv: Any, seed: int) -> str:
    from optuna.distributions import distribution_to_json

    blob = {
        "space": {k: distribution_to_json(d) for k, d in sp.distributions.items()},
        "fixed": sp.fixed,
        "settings": [len(train), None if val is None else len(val), metric, cv, seed],
    }
    text = json.dumps(blob, sort_keys=True, default=list)
    return "transferkit-search-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _study(optuna: Any, storage: Any, sampler: Any, name: str, direction: str, sp: Space) -> Any:
    """The study, loaded if ``storage`` has it: then it must be this search."""
    check_storage(storage)
    try:
        study = optuna.create_study(
            storage=storage, sampler=sampler, study_name=name, direction=direction,
            load_if_exists=True,
        )  # fmt: skip
    except Exception as e:  # a bad URL surfaces as whatever the storage's driver raises
        raise ConfigError(f"storage {storage!r}: {type(e).__name__}: {e}") from e
    where = f"study {name!r} in {storage!r}"
    if study.direction.name.lower() != direction:
        raise ConfigError(f"{where} {study.direction.name.lower()}s; pass another study_name")
    for t in study.trials:
        if any(sp.distributions.get(k) != d for k, d in t.distributions.items()):
            raise ConfigError(f"{where} searched another space; pass another study_name")
    return study


#: tables every Optuna storage has (an application's "trials" table is not one)
_OPTUNA_TABLES = {"studies", "version_info"}


def check_storage(storage: Any) -> None:
    """Refuse a SQLite storage file that is not an Optuna storage: Optuna would add its
    tables to a user's database (or fail on a file that is no database at all)."""
    if not isinstance(storage, str) or not storage.startswith("sqlite:///"):
        return
    import sqlite3

    path = Path(storage[len("sqlite:///") :].split("?", 1)[0])
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_file():
        raise OverwriteError(
            f"storage {storage!r}: {str(path)!r} is not a regular file; name a new file or an "
            "existing Optuna storage"
        )
    if path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        is_sqlite = f.read(16) == b"SQLite format 3\x00"
    tables: set[str] = set()
    if is_sqlite:
        try:
            with contextlib.closing(
                sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            ) as db:
                rows = db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
            tables = {r[0] for r in rows}
        except sqlite3.Error as e:
            raise ConfigError(f"storage {storage!r}: cannot read {str(path)!r}: {e}") from None
    if not is_sqlite or (tables and not tables >= _OPTUNA_TABLES):
        what = "a SQLite database of other tables" if is_sqlite else "not a SQLite database"
        raise OverwriteError(
            f"storage {storage!r}: {str(path)!r} is {what}, not an Optuna storage; transferkit "
            "does not write into it: name a new file (sqlite:///search.db) or an Optuna storage"
        )


def _settled(trial: Any) -> bool:
    """Finished for good: an interrupted trial (Ctrl-C) is run again on resume."""
    return trial.state.is_finished() and not trial.user_attrs.get("interrupted")


def _optimize(study: Any, sp: Space, objective: Any, n_trials: int | None, timeout: Any) -> None:
    """Run the trials the study still lacks. Optuna's GridSampler skips the grid points
    that finished, interrupted ones included (for Optuna a FAIL), so those are queued
    again once every other point has been visited."""
    deadline = math.inf if timeout is None else time.monotonic() + timeout
    budget = (n_trials or len(sp.points())) - sum(map(_settled, study.trials))
    if sp.grid is None:
        if budget > 0:
            study.optimize(objective, n_trials=budget, timeout=timeout)
        return

    def visited(keep: Any = lambda t: t.state.is_finished()) -> set[str]:
        return {json.dumps(t.params, sort_keys=True) for t in study.trials if keep(t)}

    points = [json.dumps(p, sort_keys=True) for p in sp.points()]
    fresh = len(set(points) - visited())
    if min(budget, fresh) > 0:
        before = len(study.trials)
        study.optimize(objective, n_trials=min(budget, fresh), timeout=timeout)
        budget -= len(study.trials) - before
    if visited() != set(points):
        return  # stopped early (timeout, n_trials): GridSampler still has points to give
    for p in [p for p in points if p not in visited(_settled)][: max(budget, 0)]:
        if time.monotonic() >= deadline:
            break
        study.enqueue_trial(json.loads(p))
        study.optimize(objective, n_trials=1)


def _objective(sp: Space, runner: Any, metric: str, verbose: int) -> Any:
    def objective(trial: Any) -> float:
        params = {k: _suggest(trial, k, d) for k, d in sp.distributions.items()}
        t0 = time.perf_counter()
        try:
            out = runner(sp.config(params))
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("error", "interrupted")
            raise
        for key in ("error", "folds", "pid"):
            if key in out:
                trial.set_user_attr(key, out[key])
        if verbose:
            shown = ", ".join(f"{k}={v!r}" for k, v in sp.config(params).items() if k in params)
            said = f"failed: {out['error']}" if "error" in out else f"{metric} {out['value']:.4f}"
            took = time.perf_counter() - t0
            print(f"trial {trial.number}: {shown} -> {said} ({took:.1f} s)", file=sys.stderr)
        return out.get("value", math.nan)  # NaN: Optuna records the trial as FAIL

    return objective


def _suggest(trial: Any, name: str, dist: Any) -> Any:
    if hasattr(dist, "choices"):
        return trial.suggest_categorical(name, dist.choices)
    suggest = trial.suggest_int if type(dist).__name__ == "IntDistribution" else trial.suggest_float
    return suggest(name, dist.low, dist.high, step=dist.step, log=dist.log)


class SearchResult:
    """What :func:`search` found: ``best_params`` (the searched options of the best trial),
    ``best_value``, ``best_config`` (with the fixed options), ``best_model`` (the best
    configuration refit on all of ``train``), ``trials`` (a dict per trial: number, params,
    value, state, seconds, error), ``test`` (``best_model``'s metrics on ``test``, or None),
    ``validation`` (how trials were scored) and ``study`` (Optuna's)."""

    def __init__(self, study: Any, metric: str, space: Space, refit: Any):
        self.study, self.metric, self.space, self._refit = study, metric, space, refit
        self.test: dict[str, float] | None = None
        self.validation, self._model = "", None

    @property
    def best_params(self) -> dict[str, Any]:
        return {k: search_space.decode(k, v) for k, v in self.study.best_trial.params.items()}

    @property
    def best_value(self) -> float:
        return float(self.study.best_value)

    @property
    def best_config(self) -> dict[str, Any]:
        return {**self.space.fixed, **self.best_params}

    @property
    def best_model(self) -> Any:
        """The best configuration refit on all of ``train`` (on first access when
        ``search(refit=False)``)."""
        if self._model is None:
            self._model = self._refit(self.best_config)
        return self._model

    @property
    def trials(self) -> list[dict[str, Any]]:
        return [
            {
                "number": t.number,
                "params": {k: search_space.decode(k, v) for k, v in t.params.items()},
                "value": t.value if t.state.name == "COMPLETE" else None,
                "state": t.state.name,
                "seconds": t.duration.total_seconds() if t.duration else None,
                "error": t.user_attrs.get("error"),
            }
            for t in self.study.trials
        ]

    def to_json(self, path: str | Path | None = None) -> str:
        """The search as JSON (also written to ``path`` when given)."""
        keys = ("metric", "validation", "best_value", "best_params", "test", "trials")
        doc = {"study_name": self.study.study_name, **{k: getattr(self, k) for k in keys}}
        doc.update(direction=self.study.direction.name.lower(), fixed=self.space.fixed)
        text = json.dumps(doc, indent=2, default=list)
        if path is not None:
            owned.write_text(path, text + "\n", "search result")
        return text

    def to_markdown(self) -> str:
        """The best configuration, the test metrics, and a table row per trial."""
        names, rows = list(self.space.distributions), self.trials
        best = ", ".join(f"{k}={v!r}" for k, v in self.best_params.items())
        lines = [
            f"Search on {self.metric} ({self.study.direction.name.lower()}, {self.validation}): "
            f"{len(rows)} trials, {sum(r['state'] == 'FAIL' for r in rows)} failed.\n",
            f"Best: trial {self.study.best_trial.number}, {self.metric} {self.best_value:.4f}"
            f" with {best}",
        ]
        if self.test is not None:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in self.test.items())
            lines.append(f"Test (the best configuration refit on all of train): {shown}")
        lines += ["", f"| trial | {' | '.join(names)} | {self.metric} | state | seconds | error |"]
        lines.append("|---:|" + "---|" * len(names) + "---:|---|---:|---|")
        for r in rows:
            value, secs = r["value"], r["seconds"]
            cells = [r["number"], *(r["params"].get(k) for k in names)]
            cells += [None if value is None else f"{value:.4f}", r["state"]]
            cells += [None if secs is None else f"{secs:.1f}", r["error"]]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> Path:
        """The metric per trial with the best so far, and the metric against each searched
        option (on matplotlib's Agg canvas: no display needed)."""
        from matplotlib.figure import Figure

        names = list(self.space.distributions)
        done = [r for r in self.trials if r["value"] is not None]
        x, y = [r["number"] for r in done], [r["value"] for r in done]
        fig = Figure(figsize=(4.5 * (1 + len(names)), 3.8))
        ax = fig.add_subplot(1, 1 + len(names), 1)
        ax.plot(x, y, "o", label="trial")
        pick = max if self.study.direction.name == "MAXIMIZE" else min
        ax.step(x, [pick(y[: i + 1]) for i in range(len(y))], where="post", label="best so far")
        ax.set(xlabel="trial", ylabel=self.metric, title=f"{len(done)} completed trials")
        ax.legend()
        for i, name in enumerate(names):
            ax = fig.add_subplot(1, 1 + len(names), i + 2)
            xs, dist = [r["params"][name] for r in done], self.space.distributions[name]
            if hasattr(dist, "choices"):  # grid values or categories, evenly spaced
                labels = [repr(search_space.decode(name, c)) for c in dist.choices]
                ax.plot([labels.index(repr(v)) for v in xs], y, "o")
                ax.set_xticks(range(len(labels)), labels, rotation=20)
            else:
                ax.plot(xs, y, "o")
                ax.set_xscale("log" if dist.log else "linear")
            ax.set(xlabel=name, ylabel=self.metric)
        fig.tight_layout()
        owned.save_figure(fig, path, "search plot", dpi=100)
        return Path(path)


def _cell(value: Any) -> str:
    return "" if value is None else " ".join(str(value).split()).replace("|", "\\|")


def read_search_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any], Any, Path | None]:
    """A search file read and checked before any data is read: (the file's table, the
    space, the fixed options, the output directory). A :class:`ConfigError` names the
    file and the key."""
    from .runconfig import FIT_SCHEMA, _check_out

    where = str(path)
    cfg = read_toml(path, "search file")
    try:
        for key in cfg:
            if key not in search_space.TOML_KEYS:
                raise search_space.unknown(key, search_space.TOML_KEYS, "the search file")
        for key in ("data", "val", "test", "shots", "seed", "out"):
            what, ok, _ = FIT_SCHEMA["val" if key == "test" else key]
            if key in cfg and not ok(cfg[key]):
                raise ConfigError(f"{key} = {cfg[key]!r} must be {what}")
        if "data" not in cfg:
            raise ConfigError('it needs data = "builtin:digits" (or a path) to search on')
        if not all(isinstance(cfg.get(k, {}), dict) for k in ("fixed", "space")):
            raise ConfigError("fixed and space must be tables ([fixed], [space])")
        space, fixed = search_space.from_toml_table(cfg.get("space", {})), cfg.get("fixed", {})
        search_space.parse(space, fixed)  # before any data is read
        out = Path(cfg["out"]) if cfg.get("out") else None
        if out is not None:  # refused now, not after the search
            _check_out(str(out / "model"))
            for name in ("search.json", "search.md", "search.png"):
                owned.check_file(out / name, "search report")
    except ConfigError as e:  # the file named, whichever key was wrong
        raise ConfigError(f"{where}: {e}") from None
    return cfg, space, fixed, out


def search_from_toml(
    path: str | Path, storage: str | None = None, verbose: int = 1
) -> SearchResult:
    """Run the search a TOML file describes (``storage`` overrides the file's): data (as
    ``transferkit fit``'s), val, test, shots, metric, n_trials, cv ("auto", "none" or k),
    seed, storage, study_name, timeout, out (gets the best model in out/model and
    search.json, .md, .png), a ``[fixed]`` table and a ``[space]`` table, e.g.
    ``lr = {low = 1e-4, high = 1e-1, log = true}``, ``freeze = ["features", "full"]``
    (a list: a grid) or ``optimizer = {choices = ["adam", "sgd"]}``."""
    from .runconfig import _load_data, load_labelled

    where = str(path)
    cfg, space, fixed, out = read_search_file(path)
    try:
        seed, cv = cfg.get("seed", 0), cfg.get("cv", "auto")
        result = search(
            _load_data(cfg["data"], cfg.get("shots"), seed)[0],
            space,
            val=load_labelled(cfg["val"], "val") if cfg.get("val") else None,
            metric=cfg.get("metric", "accuracy"),
            n_trials=cfg.get("n_trials"),
            cv=None if cv == "none" else cv,
            seed=seed,
            storage=storage or cfg.get("storage"),
            study_name=cfg.get("study_name"),
            test=load_labelled(cfg["test"], "test") if cfg.get("test") else None,
            timeout=cfg.get("timeout"),
            verbose=verbose,
            fixed=fixed,
        )
    except ConfigError as e:  # the file named, whichever key was wrong
        raise ConfigError(f"{where}: {e}") from None
    if out is not None:
        result.best_model.save(out / "model")
        result.to_json(out / "search.json")
        owned.write_text(out / "search.md", result.to_markdown(), "search report")
        result.plot(out / "search.png")
    return result
