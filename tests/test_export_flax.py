"""Flax's export format ``"jax"``: a serialized ``jax.export`` function, run here with
``jax.export.deserialize(...).call`` alone, not through transferkit."""

import json

import numpy as np
import pytest

pytest.importorskip("flax")

import jax  # noqa: E402

import transferkit as tk  # noqa: E402


def _inputs(n, shape, seed=0):
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def run_jax(path, x):
    exported = jax.export.deserialize(bytearray(path.read_bytes()))
    return np.asarray(exported.call(x))


def check_export(model, tmp_path, output="probabilities", tol=1e-5):
    path = model.export(tmp_path / "m", format="jax")
    assert path == tmp_path / "m.jax" and path.is_file()
    meta = json.loads((tmp_path / "m.jax.json").read_text())
    assert meta["format"] == "jax" and meta["output"] == output
    assert meta["exported_by"] == "flax"
    assert meta["input"]["shape"] == ["batch", *model.input_shape]
    assert meta["check"]["max_abs_diff"] <= meta["check"]["tolerance"]
    exported = jax.export.deserialize(bytearray(path.read_bytes()))
    assert "cpu" in exported.platforms
    assert str(exported.in_avals[0].shape[0]) == "batch"  # any batch size
    for n in (1, 5):
        x = _inputs(n, model.input_shape, seed=n)
        got, expected = run_jax(path, x), model.predict(x)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=tol, rtol=0)
        if output == "probabilities":
            np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    return path


def test_cnn_classifier_exports(tmp_path):
    m = tk.build("flax:cnn", head=tk.Classifier(3), weights=None, input_shape=(16, 16, 3), seed=0)
    check_export(m, tmp_path)


def test_mlp_regressor_exports_values(tmp_path):
    m = tk.build("flax:mlp", head=tk.Regressor(2), weights=None, input_shape=(8, 8, 1), seed=0)
    check_export(m, tmp_path, output="values")


def test_resnet18_exports_batchnorm_on_running_statistics(tmp_path):
    m = tk.build("flax:resnet18", head=tk.Classifier(3), weights=None, input_shape=(32, 32, 3))
    rng = np.random.default_rng(0)
    weights = m.get_weights()
    for name, w in weights.items():  # statistics a batch of inputs would not give
        if name.endswith("running_mean"):
            weights[name] = rng.normal(0, 0.5, w.shape).astype(np.float32)
        elif name.endswith("running_var"):
            weights[name] = rng.uniform(0.5, 2.0, w.shape).astype(np.float32)
    m.set_weights(weights)
    check_export(m, tmp_path)


def test_flax_fitted_export_follows_later_training(tiny_images, tmp_path):
    x, y = tiny_images
    m = tk.build("flax:cnn", head=tk.Classifier(3), weights=None, input_shape=(16, 16, 3))
    tk.fit(m, (x, y), epochs=1, verbose=0, batch_size=8)
    first = run_jax(check_export(m, tmp_path / "a"), x[:4])
    tk.fit(m, (x, y), epochs=1, verbose=0, batch_size=8)
    second = run_jax(check_export(m, tmp_path / "b"), x[:4])
    assert np.abs(first - second).max() > 1e-6  # the parameters were not frozen in


def test_torch_fitted_model_exports_to_jax(tiny_images, tmp_path):
    pytest.importorskip("torch")
    x, y = tiny_images
    t = tk.build("torch:cnn", head=tk.Classifier(3), weights=None, input_shape=(16, 16, 3))
    tk.fit(t, (x, y), epochs=1, verbose=0, batch_size=8)
    path = t.export(tmp_path / "t.jax", format="jax")
    meta = json.loads((tmp_path / "t.jax.json").read_text())
    assert meta["fitted_in"] == "torch" and meta["exported_by"] == "flax"
    for n in (1, 5):
        np.testing.assert_allclose(run_jax(path, x[:n]), t.predict(x[:n]), atol=1e-5, rtol=0)
