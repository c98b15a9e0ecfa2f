"""``tk.fit(batchnorm=...)``: bad input, the end-of-fit warning, what is recorded.

Each mode's semantics in every framework are in the conformance suite
(``transferkit/testing/norms.py``)."""

import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import transferkit as tk  # noqa: E402
from transferkit import errors  # noqa: E402
from transferkit.cli import main  # noqa: E402


def cnn(seed=0):
    return tk.build("torch:cnn", head=tk.Classifier(3), input_shape=(16, 16, 3), seed=seed)


def test_an_unknown_mode_is_named_before_any_work(tiny_images):
    x, y = tiny_images
    with pytest.raises(errors.ConfigError, match=r"batchnorm must be one of .*'recalibrate'"):
        tk.fit(cnn(), (x, y), epochs=1, batchnorm="precise")
    with pytest.raises(errors.ConfigError, match="batchnorm"):
        tk.fit(cnn(), (x, y), epochs=1, batchnorm=True)


def test_recalibrating_needs_two_examples(tiny_images):
    x, y = tiny_images
    model = cnn()
    before = model.get_weights()
    with pytest.raises(errors.ConfigError, match="at least 2 examples; the training data has 1"):
        tk.fit(model, (x[:1], y[:1]), epochs=1, batchnorm="recalibrate", verbose=0)
    after = model.get_weights()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing ran
    tk.fit(model, (x[:1], y[:1]), epochs=1, batchnorm="frozen", verbose=0)  # that one can


def _stale(model):
    """BatchNorm layers whose running statistics never move (momentum 0), as a stand-in
    for a backbone whose momentum is too small for the few steps a small fit takes."""
    for m in model.native.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.0


def test_a_fit_that_predicts_its_training_data_badly_says_why():
    rng = np.random.default_rng(0)
    # inputs far from what the running statistics (mean 0, variance 1) describe
    x = (0.9 + 0.1 * rng.random((24, 16, 16, 3))).astype(np.float32)
    x[np.arange(24) % 3 == 1, :8] -= 0.5
    x[np.arange(24) % 3 == 2, 8:] -= 0.5
    y = np.arange(24) % 3
    said = {}
    for mode in ("train", "recalibrate"):
        model = tk.build("torch:cnn", head=tk.Classifier(3), input_shape=(16, 16, 3), weights=None)
        _stale(model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tk.fit(model, (x, y), epochs=15, lr=1e-2, batch_size=8, verbose=0, batchnorm=mode)
        said[mode] = [str(w.message) for w in caught if "BatchNorm" in str(w.message)]
        said[mode + " accuracy"] = model.evaluate((x, y))["accuracy"]
    assert len(said["train"]) == 1
    assert (
        "in inference mode the fitted model predicts its own training examples"
        in (said["train"][0])
    )
    assert "batchnorm='recalibrate'" in said["train"][0]
    assert said["recalibrate"] == [] and said["recalibrate accuracy"] == 1.0
    assert said["train accuracy"] < 0.7


def test_the_mode_is_recorded_in_the_saved_model(tiny_images, tmp_path):
    x, y = tiny_images
    model = cnn()
    assert model.batchnorm is None
    tk.fit(model, (x, y), epochs=1, batchnorm="frozen", verbose=0)
    model.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["batchnorm"] == "frozen"
    assert tk.load(tmp_path / "m").batchnorm == "frozen"
    config["batchnorm"] = 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(errors.ModelDirError, match="field 'batchnorm'"):
        tk.load(tmp_path / "m")


def test_a_frozen_backbone_keeps_its_statistics_in_every_mode(tiny_images):
    x, y = tiny_images
    for mode in ("train", "frozen", "recalibrate"):
        model = cnn()
        start = model.get_weights()
        tk.fit(
            model, (x, y), freeze=tk.freeze.TrainLast(1), epochs=2, lr=1e-2, verbose=0,
            batchnorm=mode, cache_features=False,
        )  # fmt: skip
        end = model.get_weights()
        for k in start:
            if k.startswith(("backbone.stage1", "backbone.stage2", "backbone.stage3")):
                np.testing.assert_array_equal(end[k], start[k], err_msg=f"{mode}: {k}")
        stage4 = "backbone.stage4.bn.running_mean"
        moved = not np.array_equal(end[stage4], start[stage4])
        assert moved == (mode != "frozen"), mode


def test_cli_fit_takes_batchnorm_and_backbones_show_it(tmp_path, capsys):
    x = np.random.default_rng(0).random((12, 8, 8, 1)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(12) % 2)
    args = ["fit", "--backbone", "torch:cnn", "--data", str(tmp_path / "d.npz"), "--epochs", "1"]
    out = tmp_path / "model"
    assert main([*args, "--batchnorm", "frozen", "--out", str(out)]) == 0
    capsys.readouterr()
    assert tk.load(out).batchnorm == "frozen"
    (tmp_path / "run.toml").write_text(
        f'backbone = "torch:cnn"\ndata = "{tmp_path / "d.npz"}"\nbatchnorm = "precise"\n'
    )
    assert main(["fit", "--config", str(tmp_path / "run.toml")]) == 2
    assert '"recalibrate", "frozen" or "train"' in capsys.readouterr().err
    assert main(["backbones", "--tag", "batchnorm", "torch:*"]) == 0
    listed = capsys.readouterr().out
    assert "torch:resnet18" in listed and "torch:mlp" not in listed
