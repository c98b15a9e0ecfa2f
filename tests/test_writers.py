"""Writers own what they write: every writer (``save``, ``fit --out``, checkpoints,
``export`` and its sidecar, ``predict --out``, ``cache --clear``, the search's and the
ranking's outputs, history files) refuses a path holding what transferkit did not write
— a user's directory or file, a Hugging Face or Keras model directory, a symbolic link, a
directory of another transferkit kind — and leaves it byte for byte as it was."""

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess

import numpy as np
import pytest

import transferkit as tk
from transferkit import feature_store, owned
from transferkit.checkpoint import TrainState
from transferkit.cli import main
from transferkit.errors import CacheError, ModelDirError, OverwriteError

pytest.importorskip("torch")


def snapshot(root):
    """Every path under ``root`` (links not followed) with its bytes or link target."""
    out = {}
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    out[rel] = ("file", f.read())
            else:
                out[rel] = ("dir", None)
    return out


def user_dir(p):
    (p / "photos").mkdir(parents=True)
    (p / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    (p / "notes.txt").write_text("mine")


def user_file(p):
    p.write_text("my own file")


def hf_model_dir(p):
    p.mkdir()
    (p / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    (p / "tokenizer.json").write_text("{}")
    (p / "model.safetensors").write_bytes(b"weights")
    (p / "onnx").mkdir()
    (p / "onnx" / "model.onnx").write_bytes(b"graph")


def keras_model_dir(p):
    p.mkdir()  # Keras 3's unzipped .keras layout, and a SavedModel beside it
    (p / "config.json").write_text(json.dumps({"class_name": "Functional", "config": {}}))
    (p / "metadata.json").write_text(json.dumps({"keras_version": "3.10.0"}))
    (p / "model.weights.h5").write_bytes(b"\x89HDF")
    (p / "saved_model.pb").write_bytes(b"pb")
    (p / "variables").mkdir()
    (p / "variables" / "variables.index").write_bytes(b"idx")


def symlink(p):
    target = p.parent / f"{p.name}-elsewhere"
    user_dir(target)
    p.symlink_to(target, target_is_directory=True)


def file_symlink(p):
    target = p.parent / f"elsewhere-{p.name}"
    target.write_text("the file a link points at")
    p.symlink_to(target)


FOREIGN_DIRS = {
    "user directory": user_dir,
    "user file": user_file,
    "Hugging Face model": hf_model_dir,
    "Keras model": keras_model_dir,
    "symbolic link": symlink,
}


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    x = rng.random((12, 8, 8, 1), dtype=np.float32)
    m = tk.build("torch:cnn", head=tk.Classifier(3), weights=None, classes=["a", "b", "c"])
    tk.fit(m, (x, np.arange(12) % 3), epochs=1, batch_size=6, verbose=0)
    return m


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("writers") / "model"
    model.save(path)
    return path


def checkpoint_dir(model, p):
    TrainState(1, 2, model.get_weights(), {}, {"seed": 0}).save(p)


def model_dir(model, p):
    model.save(p)


@contextlib.contextmanager
def read_only(directory):
    """``directory`` made unwritable, also for root (the immutable attribute)."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("chattr is needed to make a directory read-only for root")
        r = subprocess.run(["chattr", "+i", str(directory)], capture_output=True)
        if r.returncode:
            pytest.skip(f"this file system has no immutable attribute: {r.stderr.decode()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)


# --- save / fit --out ----------------------------------------------------------------
@pytest.mark.parametrize("make", list(FOREIGN_DIRS.values()), ids=list(FOREIGN_DIRS))
def test_save_refuses_what_it_did_not_write(model, tmp_path, make):
    target = tmp_path / "out"
    make(target)
    before = snapshot(tmp_path)
    with pytest.raises(OverwriteError, match="out"):
        model.save(target)
    assert snapshot(tmp_path) == before


def test_save_refuses_a_checkpoint_and_fit_out_refuses_before_any_work(model, tmp_path):
    checkpoint_dir(model, tmp_path / "ckpt")
    hf_model_dir(tmp_path / "hf")
    before = snapshot(tmp_path)
    with pytest.raises(OverwriteError, match="not a transferkit model directory"):
        model.save(tmp_path / "ckpt")
    for out in ("ckpt", "hf"):
        args = ["fit", "--backbone", "torch:cnn", "--data", "builtin:digits", "--epochs", "1"]
        assert main([*args, "--out", str(tmp_path / out)]) == 2
    assert snapshot(tmp_path) == before


def test_save_keeps_a_users_files_in_a_model_directory(model, tmp_path):
    target = tmp_path / "m"
    model.save(target)
    model.save(target)  # its own directory: replaced
    (target / "README.md").write_text("my notes about this model")
    before = snapshot(tmp_path)
    with pytest.raises(OverwriteError, match="'README.md', which save did not write"):
        model.save(target)
    assert snapshot(tmp_path) == before
    assert tk.load(target).classes == ["a", "b", "c"]


def test_save_into_a_read_only_directory(model, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    model.save(parent / "m")
    before = snapshot(tmp_path)
    with read_only(parent), pytest.raises(ModelDirError, match="cannot write the model"):
        model.save(parent / "m")
    assert snapshot(tmp_path) == before


# --- checkpoints -----------------------------------------------------------------------
@pytest.mark.parametrize("make", list(FOREIGN_DIRS.values()), ids=list(FOREIGN_DIRS))
def test_checkpoint_refuses_what_it_did_not_write(model, tmp_path, make):
    target = tmp_path / "ckpt"
    make(target)
    (target / "state.json").write_text("{}") if target.is_dir() else None
    before = snapshot(tmp_path)
    with pytest.raises(OverwriteError, match="ckpt"):
        checkpoint_dir(model, target)
    with pytest.raises(OverwriteError, match="ckpt"):
        tk.callbacks.Checkpoint(target)
    assert snapshot(tmp_path) == before


def test_checkpoint_refuses_a_saved_model_and_extra_files(model, tmp_path):
    model_dir(model, tmp_path / "m")
    checkpoint_dir(model, tmp_path / "c")
    checkpoint_dir(model, tmp_path / "c")  # its own: replaced
    (tmp_path / "c" / "plot.png").write_bytes(b"png")
    before = snapshot(tmp_path)
    with pytest.raises(OverwriteError, match="not a training checkpoint that transferkit wrote"):
        checkpoint_dir(model, tmp_path / "m")
    with pytest.raises(OverwriteError, match="'plot.png', which no checkpoint wrote"):
        checkpoint_dir(model, tmp_path / "c")
    assert snapshot(tmp_path) == before
    assert TrainState.load(tmp_path / "c").step == 2


# --- export and its sidecar ------------------------------------------------------------
def _export_format():
    from transferkit import export as tk_export

    formats = tk_export.formats()
    if "torch-export" not in formats:
        pytest.skip("no torch-export format registered")
    return "torch-export"


@pytest.mark.parametrize(
    "make", [user_dir, user_file, file_symlink, symlink], ids=["dir", "file", "link", "dirlink"]
)
def test_export_refuses_what_it_did_not_write(model, tmp_path, make):
    fmt = _export_format()
    make(tmp_path / "mine.pt2")
    before = snapshot(tmp_path)
    with pytest.raises(OverwriteError, match="mine.pt2"):
        model.export(tmp_path / "mine.pt2", format=fmt)
    assert snapshot(tmp_path) == before


def test_export_refuses_a_users_sidecar_and_replaces_its_own(model, tmp_path):
    fmt = _export_format()
    (tmp_path / "m.pt2.json").write_text('{"my": "settings"}')
    before = snapshot(tmp_path)
    with pytest.raises(OverwriteError, match="not the sidecar of a transferkit export"):
        model.export(tmp_path / "m.pt2", format=fmt)
    assert snapshot(tmp_path) == before
    (tmp_path / "m.pt2.json").unlink()
    path = model.export(tmp_path / "m.pt2", format=fmt)
    first = snapshot(tmp_path)
    model.export(path, format=fmt)  # its own export: replaced
    assert sorted(snapshot(tmp_path)) == sorted(first) == ["m.pt2", "m.pt2.json"]
    meta = json.loads((tmp_path / "m.pt2.json").read_text())
    assert meta["sha256"] == owned.digest(path)
    path.write_bytes(path.read_bytes() + b"edited by the user")
    before = snapshot(tmp_path)
    with pytest.raises(OverwriteError, match="no transferkit export wrote"):
        model.export(path, format=fmt)
    assert snapshot(tmp_path) == before


def test_export_into_a_read_only_directory(model, tmp_path):
    fmt = _export_format()
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro), pytest.raises(tk.errors.TransferkitError, match="ro"):
        model.export(ro / "m.pt2", format=fmt)
    assert snapshot(ro) == {}


# --- predict --out ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "make", [user_file, file_symlink, lambda p: p.mkdir()], ids=["file", "link", "dir"]
)
def test_predict_out_refuses_what_it_did_not_write(saved, tmp_path, make, capsys):
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 8, 8, 1), np.float32))
    out = tmp_path / "preds.csv"
    make(out)
    before = snapshot(tmp_path)
    assert main(["predict", str(saved), "--data", str(tmp_path / "x.npz"), "--out", str(out)]) == 2
    assert "preds.csv" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_predict_out_replaces_its_own_file_only(saved, tmp_path, capsys):
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 8, 8, 1), np.float32))
    out = tmp_path / "preds.csv"
    args = ["predict", str(saved), "--data", str(tmp_path / "x.npz"), "--out", str(out)]
    assert main(args) == 0
    first = out.read_text()
    assert first.startswith("input,prediction,probability")
    assert main(args) == 0 and out.read_text() == first  # its own: replaced
    with out.open("a") as f:
        f.write("my,own,row\n")
    assert main(args) == 2
    assert "transferkit did not write it (or it was changed since)" in capsys.readouterr().err
    assert out.read_text() == first + "my,own,row\n"


def test_predict_out_in_a_read_only_directory(saved, tmp_path, capsys):
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 8, 8, 1), np.float32))
    ro = tmp_path / "ro"
    ro.mkdir()
    args = ["predict", str(saved), "--data", str(tmp_path / "x.npz"), "--out", str(ro / "p.csv")]
    with read_only(ro):
        assert main(args) == 2
    assert "cannot write the predictions" in capsys.readouterr().err
    assert snapshot(ro) == {}


# --- the feature cache -----------------------------------------------------------------
def test_cache_clear_removes_only_cache_entries(model, tmp_path, capsys):
    cache = tmp_path / "u"
    user_dir(cache)
    hf_model_dir(cache / "bert")
    x = np.random.default_rng(1).random((5, 8, 8, 1), dtype=np.float32)
    feats = np.array(feature_store.features(model, x, cache))
    [entry] = feature_store.entries(cache)
    (cache / f".{entry['entry']}.partial-1-deadbeef").mkdir()  # not provably ours: no record
    users = {k: v for k, v in snapshot(cache).items() if not k.startswith(entry["entry"])}
    assert main(["cache", "--dir", str(cache)]) == 0
    assert "left alone 4 item(s) that are not cache entries" in capsys.readouterr().out
    assert main(["cache", "--dir", str(cache), "--clear"]) == 0
    assert "cleared 1 entries" in capsys.readouterr().out
    assert snapshot(cache) == users  # photos/, notes.txt, the HF model: all there
    # a foreign directory at the very place of an entry is refused, not deleted
    (cache / entry["entry"]).mkdir()
    (cache / entry["entry"] / "mine.txt").write_text("x")
    with pytest.raises(CacheError, match="not a cache entry transferkit wrote"):
        feature_store.features(model, x, cache)
    assert (cache / entry["entry"] / "mine.txt").read_text() == "x"
    shutil.rmtree(cache / entry["entry"])
    np.testing.assert_array_equal(feature_store.features(model, x, cache), feats)


def test_cache_clear_leaves_a_symlinked_directory(model, tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    symlink(cache / "link")
    before = snapshot(tmp_path)
    assert main(["cache", "--dir", str(cache), "--clear"]) == 0
    assert snapshot(tmp_path) == before


def test_feature_cache_in_a_read_only_directory(model, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    x = np.zeros((2, 8, 8, 1), np.float32)
    with read_only(ro), pytest.raises(CacheError, match="cannot write the feature cache"):
        feature_store.features(model, x, ro / "cache")
    assert snapshot(ro) == {}


def test_a_corrupted_cache_entry_is_found_by_its_checksum(model, tmp_path):
    x = np.random.default_rng(2).random((4, 8, 8, 1), dtype=np.float32)
    good = np.array(feature_store.features(model, x, tmp_path))
    [entry] = feature_store.entries(tmp_path)
    data = tmp_path / entry["entry"] / feature_store.DATA
    arr = np.load(data, mmap_mode="r+")
    arr[0, 0] = np.nan  # a value changed in place: same size, same shape, same header
    arr.flush()
    del arr
    with pytest.warns(UserWarning, match="incomplete or corrupt; rebuilding"):
        again = np.array(feature_store.features(model, x, tmp_path))
    np.testing.assert_array_equal(again, good)
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0x01  # one flipped bit
    data.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="incomplete or corrupt; rebuilding"):
        np.testing.assert_array_equal(feature_store.features(model, x, tmp_path), good)


# --- reports: search, ranking, history --------------------------------------------------
def test_report_files_refuse_a_users_file(model, tmp_path):
    history = tk.History()
    history.epochs = [{"loss": 1.0}]
    mine = tmp_path / "history.json"
    mine.write_text("my own history")
    with pytest.raises(OverwriteError, match="history.json"):
        history.to_json(mine)
    assert mine.read_text() == "my own history"
    history.to_json(tmp_path / "h.json")
    history.to_json(tmp_path / "h.json")  # its own: replaced
    assert json.loads((tmp_path / "h.json").read_text()) == [{"loss": 1.0}]
    link = tmp_path / "link.csv"
    link.symlink_to(mine)
    with pytest.raises(OverwriteError, match="symbolic link"):
        history.to_csv(link)
    assert mine.read_text() == "my own history"


def test_search_storage_refuses_a_database_that_is_not_optunas(tmp_path):
    pytest.importorskip("optuna")
    from transferkit.search import check_storage

    db = tmp_path / "mine.db"
    with contextlib.closing(sqlite3.connect(db)) as c:
        c.execute("CREATE TABLE photos (name TEXT)")
        c.commit()
    (tmp_path / "notes.db").write_text("not a database")
    before = snapshot(tmp_path)
    for name in ("mine.db", "notes.db"):
        with pytest.raises(OverwriteError, match="not an Optuna storage"):
            check_storage(f"sqlite:///{tmp_path / name}")
    assert snapshot(tmp_path) == before
    import optuna

    optuna.create_study(storage=f"sqlite:///{tmp_path / 'ok.db'}", study_name="s")
    check_storage(f"sqlite:///{tmp_path / 'ok.db'}")  # an Optuna storage: accepted
    check_storage(f"sqlite:///{tmp_path / 'new.db'}")  # a new file: accepted


def test_fit_out_twice_replaces_its_own_model_directory(tmp_path, capsys):
    args = ["fit", "--backbone", "torch:mlp", "--data", "builtin:digits", "--epochs", "1"]
    args += ["--out", str(tmp_path / "m")]
    assert main(args) == 0
    assert (tmp_path / "m" / "history.csv").is_file()  # fit writes it beside the model
    assert main(args) == 0, capsys.readouterr().err


def test_an_unreadable_record_is_left_as_it_is(tmp_path):
    (tmp_path / owned.RECORD).write_text("{not json")
    owned.write_text(tmp_path / "a.md", "one", "report")
    assert (tmp_path / owned.RECORD).read_text() == "{not json"  # no proof dropped
    with pytest.raises(OverwriteError, match="transferkit did not write it"):
        owned.write_text(tmp_path / "a.md", "two", "report")  # unproven: refused
    assert (tmp_path / "a.md").read_text() == "one"


def test_search_storage_refuses_an_application_database_with_a_trials_table(tmp_path):
    pytest.importorskip("optuna")
    from transferkit.search import check_storage

    with contextlib.closing(sqlite3.connect(tmp_path / "app.db")) as c:
        c.execute("CREATE TABLE trials (id INTEGER)")
        c.commit()
    with pytest.raises(OverwriteError, match="a SQLite database of other tables"):
        check_storage(f"sqlite:///{tmp_path / 'app.db'}")
