"""Saves are atomic at every instant: a kill at each step of the swap leaves a loadable
model (the old one or the new one, complete), and the next save cleans up."""

import json
import os
import warnings

import numpy as np
import pytest

import transferkit as tk
from transferkit import atomic, errors
from transferkit.training import TrainState

STEPS = ("writing", "filled", "moved-old", "moved-new", "cleaning")


def _killed_at(step, action):
    """Run ``action`` in a forked child that dies (SIGKILL-like: no cleanup, no finally)
    at the named instant of the swap. The child does file I/O only (no framework)."""
    with warnings.catch_warnings():  # the child touches no framework thread
        warnings.simplefilter("ignore", RuntimeWarning)
        pid = os.fork()
    if pid == 0:  # child
        try:
            atomic._step = lambda name: os._exit(9) if name == step else None
            action()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 9, f"the child was not killed at {step!r}"


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.mark.parametrize("step", STEPS)
def test_a_directory_write_killed_at_any_step_leaves_old_or_new(tmp_path, step):
    target = tmp_path / "out"

    def fill(tag):
        def write(d):
            (d / "data.bin").write_bytes(tag.encode() * 1000)
            (d / "done").write_text(tag)

        return write

    atomic.write_dir(target, fill("old"), "done")
    _killed_at(step, lambda: atomic.write_dir(target, fill("new"), "done"))
    atomic.recover(target, "done")
    got = (target / "done").read_text()
    # before the new copy is complete the old one stands; once it is, either may
    assert got == ("old" if step in ("writing", "filled") else "new")
    assert (target / "data.bin").read_bytes() == got.encode() * 1000
    atomic.write_dir(target, fill("third"), "done")  # cleans what the kill left
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (target / "done").read_text() == "third"


KILLED_SAVE = """
import os, sys
import transferkit as tk
from transferkit import atomic
model = tk.build("torch:mlp", head=tk.Classifier(3), weights=None, seed=2)
atomic._step = lambda name: os._exit(9) if name == sys.argv[2] else None
model.save(sys.argv[1])
"""


@pytest.mark.parametrize("step", STEPS)
def test_a_model_save_killed_at_any_step_loads(tmp_path, step):
    # a real process per kill (not a fork: the test process runs multithreaded frameworks)
    import subprocess
    import sys

    pytest.importorskip("torch")
    x = np.random.default_rng(0).random((6, 8, 8, 1), dtype=np.float32)
    old = tk.build("torch:mlp", head=tk.Classifier(3), weights=None, seed=1)
    new = tk.build("torch:mlp", head=tk.Classifier(3), weights=None, seed=2)
    path = tmp_path / "m"
    old.save(path)
    done = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(path), step], timeout=120)
    assert done.returncode == 9, f"the child was not killed at {step!r}"
    loaded = tk.load(path)  # recovers an interrupted swap
    expect = old if step in ("writing", "filled") else new
    np.testing.assert_array_equal(loaded.logits(x), expect.logits(x))
    new.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize("step", ("filled", "moved-old", "cleaning"))
def test_a_checkpoint_killed_at_any_step_loads(tmp_path, step):
    def state(epoch):
        w = {"backbone.w": np.full(3, epoch, np.float32)}
        return TrainState(epoch, epoch * 10, w, {}, {"seed": 1}, [{"epoch": epoch}])

    state(1).save(tmp_path / "ckpt")
    _killed_at(step, lambda: state(2).save(tmp_path / "ckpt"))
    got = TrainState.load(tmp_path / "ckpt")
    assert got.epoch == (1 if step == "filled" else 2)
    assert got.weights["backbone.w"].tolist() == [got.epoch] * 3


def test_save_refuses_bad_targets_and_loses_nothing(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    model = tk.build("torch:mlp", head=tk.Classifier(3), weights=None)
    (tmp_path / "afile").write_text("keep me")
    with pytest.raises(errors.ModelDirError, match="a file of that name exists"):
        model.save(tmp_path / "afile")
    with pytest.raises(errors.ModelDirError, match="is a file, not a directory"):
        model.save(tmp_path / "afile" / "m")
    assert (tmp_path / "afile").read_text() == "keep me"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(errors.ModelDirError, match="not a transferkit model directory"):
        model.save(tmp_path / "mine")
    model.save(tmp_path / "m")
    before = _files(tmp_path / "m")

    def denied(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic.os, "replace", denied)  # an unwritable directory, as root
    with pytest.raises(errors.ModelDirError, match="Permission denied.*writable directory"):
        tk.build("torch:mlp", head=tk.Classifier(3), weights=None, seed=5).save(tmp_path / "m")
    monkeypatch.undo()
    assert _files(tmp_path / "m") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "m", "mine"]


@pytest.mark.parametrize(
    "config, problem",
    [
        ("[1, 2]", "expected a JSON object"),
        ('"text"', "expected a JSON object"),
        ("{not json", "corrupt"),
        ("__REPLACE__input_shape=oops", "field 'input_shape'"),
        ("__REPLACE__input_shape=[8, -1, 1]", "positive integers"),
        ("__REPLACE__head=3", "field 'head'"),
        ("__REPLACE__backbone=7", "field 'backbone'"),
        ("__REPLACE__classes=[1, 2, 3]", "list of strings"),
        ("__REPLACE__head={'kind': 'classifier', 'num_classes': 2.5}", "integer"),
        ("__DELETE__backbone", "'backbone' is missing"),
    ],
)
def test_a_corrupt_config_is_a_model_dir_error(tmp_path, config, problem):
    pytest.importorskip("torch")
    tk.build("torch:mlp", head=tk.Classifier(3), weights=None).save(tmp_path / "m")
    cfg_file = tmp_path / "m" / "config.json"
    if config.startswith("__REPLACE__"):
        key, _, value = config[len("__REPLACE__") :].partition("=")
        cfg = json.loads(cfg_file.read_text())
        try:
            cfg[key] = json.loads(value.replace("'", '"'))
        except ValueError:
            cfg[key] = value
        config = json.dumps(cfg)
    elif config.startswith("__DELETE__"):
        cfg = json.loads(cfg_file.read_text())
        del cfg[config[len("__DELETE__") :]]
        config = json.dumps(cfg)
    cfg_file.write_text(config)
    with pytest.raises(errors.ModelDirError, match=problem):
        tk.load(tmp_path / "m")


@pytest.mark.parametrize(
    "state, problem",
    [
        ("garbage", "corrupt"),
        ("[]", "expected a JSON object"),
        ('{"epoch": 1}', "corrupt.*'step'"),
        ('{"epoch": -1, "step": 0, "rng": {}, "history": []}', "must be counts"),
        ('{"epoch": 1, "step": 2, "rng": 5, "history": []}', "rng must be an object"),
    ],
)
def test_a_garbage_checkpoint_is_named(tmp_path, state, problem):
    TrainState(1, 1, {"w": np.zeros(2, np.float32)}, {}, {}, []).save(tmp_path / "c")
    (tmp_path / "c" / "state.json").write_text(state)
    with pytest.raises(errors.ModelDirError, match=problem):
        TrainState.load(tmp_path / "c")


def test_resume_from_a_checkpoint_of_another_architecture(tmp_path):
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x, y = rng.random((8, 8, 8, 1), dtype=np.float32), np.arange(8) % 2
    other = tk.build("torch:mlp", head=tk.Classifier(2, hidden=(4,)), weights=None)
    tk.fit(other, tk.Dataset(x, y), epochs=1, verbose=0, checkpoint_dir=tmp_path / "ckpt")
    model = tk.build("torch:mlp", head=tk.Classifier(2), weights=None)
    before = model.get_weights()
    with pytest.raises(errors.WeightsError, match="unexpected.*head.hidden.0"):
        tk.fit(model, tk.Dataset(x, y), epochs=2, verbose=0, resume_from=tmp_path / "ckpt")
    after = model.get_weights()
    assert all(np.array_equal(before[k], after[k]) for k in before)
