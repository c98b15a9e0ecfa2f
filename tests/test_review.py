"""Bad input found by trying the library as a new user would: each a clear error or warning."""

import json

import numpy as np
import pytest

import transferkit as tk
from transferkit import errors
from transferkit.cli import main


@pytest.fixture(scope="module")
def mlp():
    pytest.importorskip("torch")
    return tk.build("torch:mlp", head=tk.Classifier(5), weights=None)


def test_builtin_data_for_evaluate_and_val(tmp_path, capsys, mlp):
    mlp.save(tmp_path / "m")
    assert main(["evaluate", str(tmp_path / "m"), "--data", "builtin:digits"]) == 0
    assert "accuracy" in json.loads(capsys.readouterr().out)
    code = main(
        ["fit", "--backbone", "torch:mlp", "--data", "builtin:digits", "--shots", "2",
         "--epochs", "1", "--val", "builtin:digits", "--out", str(tmp_path / "v")]
    )  # fmt: skip
    assert code == 0 and "val" in json.loads(capsys.readouterr().out)


def test_the_output_directory_is_checked_before_training(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    (tmp_path / "file").write_text("x")
    for out, problem in (
        (tmp_path / "notes", "not a transferkit model"),
        (tmp_path / "file", "is a file"),
    ):
        code = main(["fit", "--backbone", "torch:mlp", "--data", "nope.npz", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and problem in err and "nope.npz" not in err  # before the data


def test_string_labels_are_class_names(tmp_path):
    np.savez(
        tmp_path / "s.npz", x=np.zeros((4, 8, 8, 1), np.float32), y=np.array(["dog", "cat"] * 2)
    )
    data = tk.data.load(tmp_path / "s.npz")
    assert data.classes == ["cat", "dog"] and data.y.tolist() == [1, 0, 1, 0]
    assert data.num_classes == 2 and len(data.few_shot(1)) == 2
    with pytest.raises(errors.LabelError, match=r"labels \['bird'\] are not in classes"):
        tk.Dataset(np.zeros((1, 2)), ["bird"], classes=["cat", "dog"])


def test_one_image_without_a_batch_axis_is_named(mlp):
    with pytest.raises(
        errors.InputShapeError, match=r"looks like one \(H, W, C\) image.*x\[None\]"
    ):
        mlp.predict(np.zeros((8, 8, 1), np.float32))
    assert mlp.predict(np.zeros((8, 8, 1), np.float32)[None]).shape == (1, 5)
    assert mlp.predict(np.zeros((2, 8, 8), np.float32)).shape == (2, 5)  # grey (N, H, W)


def test_16_bit_images_are_scaled_by_their_range(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
    Image.fromarray(np.full((6, 6), 32768, np.uint16)).save(tmp_path / "a" / "x.png")
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "b" / "y.png")
    data = tk.data.image_folder(tmp_path)
    assert data.x[0].mean() == pytest.approx(0.5, abs=1e-4) and data.x[1].max() == 0
    with pytest.raises(errors.EmptyDataError, match="is a file, not a folder"):
        tk.data.image_folder(tmp_path / "a" / "x.png")


@pytest.mark.parametrize(
    "call, error, problem",
    [
        (lambda m: tk.Dataset(5, [1]), errors.InputDTypeError, "not a collection"),
        (lambda m: tk.data.load(5), errors.EmptyDataError, "needs a path"),
        (lambda m: tk.list_backbones(5), errors.ConfigError, "pattern\\) must be a non-empty"),
        (lambda m: m.set_weights([1, 2]), errors.ConfigError, "takes a dict"),
        (
            lambda m: m.set_weights({"head.out.bias": np.full(5, np.nan, np.float32)}),
            errors.WeightsError,
            "NaN or infinite",
        ),
        (lambda m: tk.Checkpoint(5), errors.ConfigError, "needs a directory path"),
        (lambda m: tk.datasets.digits_transfer(shots=2, seed="a"), errors.ConfigError, "seed"),
        (
            lambda m: tk.freeze.from_name("train_last", m=2),
            errors.ConfigError,
            "no option .m.; its options are lr_decay, n",
        ),
    ],
)
def test_raw_exceptions_became_named_errors(mlp, call, error, problem):
    with pytest.raises(error, match=problem):
        call(mlp)


def test_history_names_what_it_logs(mlp):
    train, _ = tk.datasets.digits_transfer(shots=2, seed=0)
    h = tk.fit(mlp, train, epochs=1, lr=1e-3, verbose=0)
    with pytest.raises(KeyError, match="history has no 'val_accuracy'; it logs epoch, loss"):
        h["val_accuracy"]


def test_settings_that_cannot_take_effect_are_said(mlp):
    train, _ = tk.datasets.digits_transfer(shots=2, seed=0)
    with pytest.warns(UserWarning, match="warmup_steps=1000 is not shorter than the run"):
        tk.fit(mlp, train, epochs=1, lr=1e-3, warmup_steps=1000, verbose=0)
    with pytest.warns(UserWarning, match="has 2 layer groups; all of them train"):
        tk.fit(mlp, train, epochs=1, lr=1e-3, freeze=tk.freeze.TrainLast(5), verbose=0)
    with pytest.warns(UserWarning, match="trains no backbone group within epochs=2"):
        tk.fit(mlp, train, epochs=2, lr=1e-3, freeze=tk.freeze.UnfreezeAt(5), verbose=0)


def test_an_unconverged_probe_is_said(mlp, monkeypatch):
    from transferkit import probe

    monkeypatch.setattr(probe, "GRADIENT_TOL", 0.0)  # nothing counts as converged
    train, _ = tk.datasets.digits_transfer(shots=2, seed=0)
    model = tk.build("torch:mlp", head=tk.Classifier(5), weights=None)
    with pytest.warns(UserWarning, match="did not reach its optimum"):
        h = tk.fit(model, train, freeze=tk.freeze.FeatureExtraction(), verbose=0)
    assert h["converged"] == [False]


def test_a_backbone_without_a_reference_architecture_stays_in_its_framework(mlp, tmp_path):
    mlp.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["arch"] = None
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(errors.ConfigError, match="loads only in its own framework \\('torch'\\)"):
        tk.load(tmp_path / "m", framework="flax")
