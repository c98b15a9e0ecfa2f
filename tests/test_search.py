"""tk.search: grid and TPE searches on Optuna, resume, failures, validation, reports."""

import importlib
import json
import os
import sys

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("torch")

import transferkit as tk  # noqa: E402
from transferkit.errors import (  # noqa: E402
    ConfigError,
    FrameworkNotInstalledError,
    TransferkitError,
    UnknownBackboneError,
)

# the modules themselves (tk.search, once exported, is the function)
search_mod = importlib.import_module("transferkit.search")
space_mod = importlib.import_module("transferkit.search_space")
search, search_from_toml = search_mod.search, search_mod.search_from_toml

FIXED = {"backbone": "torch:cnn", "input_shape": (8, 8, 3), "epochs": 1, "batch_size": 16}
DIVERGES = 1e12  # sgd at this lr: the loss is inf in the first epoch (a TrainingError)


@pytest.fixture(scope="module")
def digits():
    """(train, val, test): 5 digit classes, 6 labelled examples each for training."""
    pool, test = tk.datasets.digits_transfer(shots=None, seed=0)
    rest, held = pool.split(0.5, seed=1)
    return rest.few_shot(6, seed=0), held.few_shot(12, seed=0), test


@pytest.fixture(scope="module")
def grid(digits):
    """A 2x2 grid scored on val, refit and tested: one lr diverges with sgd."""
    train, val, test = digits
    calls = []
    evaluate = tk.Model.evaluate

    def counting(self, data, *args, **kwargs):
        calls.append(data)
        return evaluate(self, data, *args, **kwargs)

    tk.Model.evaluate = counting
    try:
        result = search(
            train,
            {"lr": [1e-2, DIVERGES], "optimizer": ["sgd", "adam"]},
            val=val,
            test=test,
            verbose=0,
            fixed=FIXED,
        )
    finally:
        tk.Model.evaluate = evaluate
    return result, calls


def _points(result):
    return sorted(json.dumps(r["params"], sort_keys=True) for r in result.trials)


def test_grid_runs_every_combination_and_selects_on_validation(grid, digits):
    result, _ = grid
    train, val, _ = digits
    assert isinstance(result.study.sampler, optuna.samplers.GridSampler)
    rows = result.trials
    assert len(rows) == 4 and len(set(_points(result))) == 4
    states = {(r["params"]["lr"], r["params"]["optimizer"]): r["state"] for r in rows}
    assert states[(DIVERGES, "sgd")] == "FAIL"  # the diverging lr failed, the search went on
    assert states[(1e-2, "adam")] == "COMPLETE" and states[(1e-2, "sgd")] == "COMPLETE"
    done = [r for r in rows if r["state"] == "COMPLETE"]
    best = max(done, key=lambda r: r["value"])
    assert result.best_params == best["params"] and result.best_value == best["value"]
    assert result.best_params["lr"] == 1e-2
    assert result.validation == "val"
    # the value is the validation metric of that configuration, nothing else
    model = tk.build("torch:cnn", head=tk.Classifier(5), input_shape=(8, 8, 3), seed=0)
    tk.fit(model, train, epochs=1, batch_size=16, verbose=0, seed=0, **result.best_params)
    assert model.evaluate(val)["accuracy"] == pytest.approx(result.best_value, abs=1e-9)
    # best_model: that configuration refit on all of train
    assert result.best_model.evaluate(val) == pytest.approx(model.evaluate(val))


def test_failed_trial_is_recorded_with_its_error(grid):
    result, _ = grid
    failed = [r for r in result.trials if r["params"]["lr"] == DIVERGES]
    assert failed and all(r["state"] == "FAIL" and r["value"] is None for r in failed)
    assert any(
        "TrainingError" in r["error"] and "lower the learning rate" in r["error"] for r in failed
    )
    assert all(r["error"] is None for r in result.trials if r["state"] == "COMPLETE")


def test_test_is_evaluated_once_on_the_refit_best_model(grid, digits):
    result, calls = grid
    train, val, test = digits
    assert sum(d is test for d in calls) == 1
    assert sum(d is val for d in calls) == sum(r["state"] == "COMPLETE" for r in result.trials)
    assert result.test == result.best_model.evaluate(test)
    assert result.best_config == {**FIXED, **result.best_params}


def test_all_trials_failing_is_an_error_with_the_first_reason(digits):
    train, val, _ = digits
    with pytest.raises(TransferkitError, match=r"all 2 trials of the search failed: TrainingError"):
        search(train, {"lr": [1e12, 1e13]}, val=val, verbose=0, fixed={**FIXED, "optimizer": "sgd"})


def test_tpe_runs_n_trials_within_the_ranges(digits):
    train, val, _ = digits
    space = {"lr": (1e-4, 1e-1, "log"), "hidden": [0, 8]}
    result = search(train, space, val=val, n_trials=3, seed=1, verbose=0, refit=False, fixed=FIXED)
    assert isinstance(result.study.sampler, optuna.samplers.TPESampler)
    assert len(result.trials) == 3 and all(r["state"] == "COMPLETE" for r in result.trials)
    assert all(1e-4 <= r["params"]["lr"] <= 1e-1 for r in result.trials)
    assert all(r["params"]["hidden"] in (0, 8) for r in result.trials)
    assert result.study.trials[0].distributions["lr"].log
    assert result.best_value == max(r["value"] for r in result.trials)
    assert result._model is None  # refit=False: nothing refit until best_model is used
    hidden = result.best_params["hidden"]
    assert result.best_model.head.hidden == ((hidden,) if hidden else ())


def test_resume_from_sqlite_runs_only_the_missing_grid_points(digits, tmp_path):
    train, val, _ = digits
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    space = {"lr": [1e-3, 1e-2], "hidden": [0, 8]}
    kwargs = dict(val=val, storage=storage, verbose=0, refit=False, fixed=FIXED)
    first = search(train, space, n_trials=2, **kwargs).trials
    assert len(first) == 2
    again = search(train, space, **kwargs)  # "interrupted" after 2: the other 2 run
    assert len(again.trials) == 4 and len(set(_points(again))) == 4
    assert again.trials[:2] == first  # the first two were not run again
    done = search(train, space, **kwargs)
    assert len(done.trials) == 4  # nothing left to run


def test_an_interrupted_trial_runs_again_on_resume(digits, tmp_path, monkeypatch):
    train, val, _ = digits
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    space = {"lr": [1e-3, 1e-2], "hidden": [0, 8]}
    kwargs = dict(val=val, storage=storage, verbose=0, refit=False, fixed=FIXED)
    score, calls = space_mod.score, []

    def interrupted(config, *args):
        calls.append(config)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the second trial
        return score(config, *args)

    monkeypatch.setattr(space_mod, "score", interrupted)
    with pytest.raises(KeyboardInterrupt):
        search(train, space, **kwargs)
    monkeypatch.setattr(space_mod, "score", score)
    result = search(train, space, **kwargs)
    rows = result.trials
    assert len(rows) == 5  # 2 before the interrupt, then the 3 points without a result
    assert rows[1]["state"] == "FAIL" and rows[1]["error"] == "interrupted"
    complete = [json.dumps(r["params"], sort_keys=True) for r in rows if r["state"] == "COMPLETE"]
    assert len(complete) == 4 and len(set(complete)) == 4
    assert rows[-1]["params"] == rows[1]["params"]  # the interrupted point, last


@pytest.mark.parametrize(
    "space, n_trials, error, message",
    [
        ({"lrr": [1e-3]}, None, ConfigError, r"'lrr'.*did you mean 'lr'"),
        ({"lr": []}, None, ConfigError, r"space\['lr'\] is an empty list"),
        ({"lr": (1e-1, 1e-4)}, 2, ConfigError, r"space\['lr'\].*empty"),
        ({"lr": (1e-4, 1e-1, "log")}, None, ConfigError, r"n_trials"),
        ({"backbone": ["torch:cnn", "torch:cnnn"]}, None, UnknownBackboneError, "torch:cnn"),
        ({"freeze": ["full", "frozen"]}, None, ConfigError, r"unknown freeze policy 'frozen'"),
        ({"epochs": [0, 2]}, None, ConfigError, r"epochs must be an integer >= 1"),
        ({"input_shape": (8, 8, 3)}, None, ConfigError, r"give a list of values"),
    ],
)
def test_bad_spaces_fail_before_any_trial(digits, tmp_path, space, n_trials, error, message):
    train, val, _ = digits
    db = tmp_path / "search.db"
    fixed = {k: v for k, v in FIXED.items() if k not in space}
    with pytest.raises(error, match=message):
        search(
            train,
            space,
            val=val,
            n_trials=n_trials,
            storage=f"sqlite:///{db}",
            verbose=0,
            fixed=fixed,
        )
    assert not db.exists()  # not even a study was created


def test_other_bad_arguments(digits):
    train, val, _ = digits
    with pytest.raises(ConfigError, match="both searched"):
        search(train, {"lr": [1e-3]}, val=val, fixed={**FIXED, "lr": 1e-3})
    with pytest.raises(ConfigError, match="metric='mse'"):
        search(train, {"lr": [1e-3]}, val=val, metric="mse", fixed=FIXED)
    with pytest.raises(ConfigError, match="cv=7 folds, but a class of train has 6"):
        search(train, {"lr": [1e-3]}, cv=7, fixed=FIXED)


def test_cross_validation_when_labels_are_few(digits):
    train, val, _ = digits
    few = train.few_shot(3, seed=0)
    result = search(few, {"lr": [1e-2]}, verbose=0, refit=False, fixed=FIXED)
    assert result.validation == "3-fold cv on train"  # 3 per class: k = min(5, 3)
    trial = result.study.trials[0]
    folds = trial.user_attrs["folds"]
    assert len(folds) == 3 and trial.value == pytest.approx(np.mean(folds))
    # the first fold, remade independently: stratified, shuffled by the seed
    from sklearn.model_selection import StratifiedKFold

    fit_idx, val_idx = next(StratifiedKFold(3, shuffle=True, random_state=0).split(few.y, few.y))
    model = tk.build("torch:cnn", head=tk.Classifier(5), input_shape=(8, 8, 3), seed=0)
    tk.fit(model, few.subset(fit_idx), epochs=1, batch_size=16, lr=1e-2, verbose=0, seed=0)
    assert model.evaluate(few.subset(val_idx))["accuracy"] == pytest.approx(folds[0])
    two = search(few, {"lr": [1e-2]}, cv=2, verbose=0, refit=False, fixed=FIXED)
    assert two.validation == "2-fold cv on train"
    assert len(two.study.trials[0].user_attrs["folds"]) == 2
    # 10 labels per class or more: a stratified 20% hold-out
    many = tk.data.Dataset(np.concatenate([train.x, val.x]), np.concatenate([train.y, val.y]))
    held = search(many, {"lr": [1e-2]}, verbose=0, refit=False, fixed=FIXED)
    assert held.validation == "20% hold-out of train"
    assert len(held.study.trials[0].user_attrs["folds"]) == 1


def test_reports(grid, tmp_path):
    result, _ = grid
    md = result.to_markdown()
    assert "| trial | lr | optimizer | accuracy | state | seconds | error |" in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 4 and rows[0].startswith("| 0 | ")  # a row per trial
    assert f"accuracy {result.best_value:.4f}" in md and "Test (" in md
    assert "TrainingError" in md
    text = result.to_json(tmp_path / "search.json")
    doc = json.loads((tmp_path / "search.json").read_text())
    assert doc == json.loads(text)
    assert doc["best_params"] == result.best_params and doc["best_value"] == result.best_value
    assert doc["direction"] == "maximize" and doc["test"] == result.test
    assert [t["state"] for t in doc["trials"]] == [r["state"] for r in result.trials]
    png = result.plot(tmp_path / "search.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    import matplotlib.image

    height, width = matplotlib.image.imread(tmp_path / "search.png").shape[:2]
    assert width == 3 * 450 and height == 380  # trials + one panel per searched option


def test_search_from_toml_end_to_end(tmp_path):
    out = tmp_path / "out"
    cfg = tmp_path / "search.toml"
    cfg.write_text(
        f"""
data = "builtin:digits"
shots = 4
test = "builtin:digits"
cv = "none"
out = "{out}"
[fixed]
backbone = "torch:cnn"
input_shape = [8, 8, 3]
epochs = 1
[space]
lr = [1e-3, 1e-2]
"""
    )
    result = search_from_toml(cfg, verbose=0)
    assert len(result.trials) == 2 and result.validation == "20% hold-out of train"
    assert set(result.test) == {"loss", "accuracy", "macro_f1"}
    assert json.loads((out / "search.json").read_text())["best_params"] == result.best_params
    assert "| trial | lr |" in (out / "search.md").read_text()
    assert (out / "search.png").read_bytes()[:4] == b"\x89PNG"
    loaded = tk.load(out / "model")
    _, test = tk.datasets.digits_transfer(shots=4, seed=0)
    assert loaded.evaluate(test) == pytest.approx(result.test)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            'data = "builtin:digits"\nn_trial = 3\n',
            r"unknown option 'n_trial'.*did you mean 'n_trials'",
        ),
        (
            'data = "builtin:digits"\n[space]\nlr = {lo = 1e-4, high = 1e-1}\n',
            r"'lo'.*did you mean 'low'",
        ),
        (
            'data = "builtin:digits"\n[fixed]\nbackbone = "torch:cnn"\n[space]\nlrr = [1]\n',
            r"'lrr'",
        ),
        ('data = "builtin:digits"\n[space]\nlr = [1e-3\n', "cannot read"),
        ("[space]\nlr = [1e-3]\n", "needs data"),
        (
            'data = "builtin:digits"\nmetric = "mse"\n[fixed]\nbackbone = "torch:cnn"\n'
            "[space]\nlr = [1e-3]\n",
            r"metric='mse' is not one of classification's",
        ),
    ],
)
def test_bad_search_files_name_the_key_and_the_file(tmp_path, text, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        search_from_toml(cfg, verbose=0)
    assert "bad.toml" in str(e.value)


def test_optuna_missing_says_what_to_install(digits, monkeypatch):
    train, val, _ = digits
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    with pytest.raises(FrameworkNotInstalledError, match=r"pip install 'transferkit\[search\]'"):
        search(train, {"lr": [1e-3]}, val=val, fixed=FIXED)


def test_backbones_of_two_frameworks_run_each_trial_in_a_fresh_process(digits):
    flax = tk.plugins.registry().frameworks.get("flax")
    if flax is None or flax.missing():
        pytest.skip("flax is not installed")
    train, val, _ = digits
    had_jax = "jax" in sys.modules
    # the mlp: the cheapest reference architecture to import and compile in a fresh process
    fixed = {"epochs": 1, "batch_size": 16, "lr": 1e-2}
    space = {"backbone": ["torch:mlp", "flax:mlp"]}
    result = search(train, space, val=val, verbose=0, refit=False, fixed=fixed)
    trials = {t.params["backbone"]: t for t in result.study.trials}
    assert all(t.state.name == "COMPLETE" for t in trials.values()), result.trials
    pids = {t.user_attrs["pid"] for t in trials.values()}
    assert len(pids) == 2 and os.getpid() not in pids  # each trial in a process of its own
    assert had_jax or "jax" not in sys.modules  # flax never came into this process
    # the torch trial scores what it scores in this process
    alone = search(train, {"backbone": ["torch:mlp"]}, val=val, verbose=0, refit=False, fixed=fixed)
    assert alone.study.trials[0].user_attrs["pid"] == os.getpid()
    assert alone.best_value == pytest.approx(trials["torch:mlp"].value, abs=1e-9)
