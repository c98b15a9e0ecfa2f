"""Keras's export formats: a TensorFlow SavedModel and a LiteRT flatbuffer, each run
here with its own runtime (TensorFlow, the LiteRT interpreter), not through transferkit."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("keras")
pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

import transferkit as tk  # noqa: E402
from transferkit.errors import ConfigError  # noqa: E402


def _inputs(n, shape, seed=0):
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def savedmodel_runner(path):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # held: its variables die with it

    def run(x):
        return np.asarray(loaded.serve(tf.constant(x)))

    return run


def run_tflite(path, x):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    (inp,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(inp["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    (out,) = interpreter.get_output_details()
    return np.array(interpreter.get_tensor(out["index"]))


RUNNER = {"savedmodel": savedmodel_runner, "tflite": lambda path: lambda x: run_tflite(path, x)}
NAME = {"savedmodel": "m", "tflite": "m.tflite"}


def check_export(model, tmp_path, fmt, output="probabilities", tol=1e-5):
    path = model.export(tmp_path / NAME[fmt], format=fmt)
    assert path == tmp_path / NAME[fmt]
    assert path.is_dir() if fmt == "savedmodel" else path.is_file()
    meta = json.loads((tmp_path / f"{NAME[fmt]}.json").read_text())
    assert meta["format"] == fmt and meta["output"] == output
    assert meta["exported_by"] == "keras"
    assert meta["check"]["max_abs_diff"] <= meta["check"]["tolerance"]
    run = RUNNER[fmt](path)
    for n in (1, 5):  # batch sizes other than the check's
        x = _inputs(n, model.input_shape, seed=n)
        got = run(x)
        expected = model.predict(x)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=tol, rtol=0)
        if output == "probabilities":
            np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    return path


@pytest.fixture(scope="module")
def cnn():
    return tk.build("keras:cnn", head=tk.Classifier(3), weights=None, input_shape=(16, 16, 3))


@pytest.mark.parametrize("fmt", ["savedmodel", "tflite"])
def test_cnn_classifier_exports(cnn, tmp_path, fmt):
    check_export(cnn, tmp_path, fmt)


def test_mlp_regressor_exports_values(tmp_path):
    m = tk.build("keras:mlp", head=tk.Regressor(2), weights=None, input_shape=(8, 8, 1), seed=0)
    check_export(m, tmp_path, "tflite", output="values")
    check_export(m, tmp_path, "savedmodel", output="values")


def test_efficientnet_lite0_with_underscore_layer_names_exports(tmp_path):
    # its layers are named after the checkpoint (``_blocks-0-_bn0``), which TensorFlow
    # rejects as variable scopes in a SavedModel: the export renames them in a clone
    m = tk.build(
        "keras:efficientnet_lite0", head=tk.Classifier(3), weights=None, input_shape=(32, 32, 3)
    )
    check_export(m, tmp_path, "savedmodel")
    assert m.engine.backbone.layers[1].name == "_conv_stem"  # the model is untouched


def test_keras_fitted_with_frozen_layers_exports(tiny_images, tmp_path):
    x, y = tiny_images
    m = tk.build("keras:cnn", head=tk.Classifier(3), weights=None, input_shape=(16, 16, 3))
    tk.fit(m, (x, y), epochs=1, verbose=0, batch_size=8, freeze=tk.freeze.TrainLast(1))
    check_export(m, tmp_path, "savedmodel")


def test_torch_fitted_model_exports_to_tflite(tiny_images, tmp_path):
    pytest.importorskip("torch")
    x, y = tiny_images
    t = tk.build("torch:cnn", head=tk.Classifier(3), weights=None, input_shape=(16, 16, 3))
    tk.fit(t, (x, y), epochs=1, verbose=0, batch_size=8)
    path = t.export(tmp_path / "t", format="tflite")
    assert path.name == "t.tflite"
    meta = json.loads((tmp_path / "t.tflite.json").read_text())
    assert meta["fitted_in"] == "torch" and meta["exported_by"] == "keras"
    for n in (1, 5):
        xb = x[:n]
        np.testing.assert_allclose(run_tflite(path, xb), t.predict(xb), atol=1e-5, rtol=0)


def test_keras_application_exports_to_savedmodel_not_onnx(tmp_path):
    m = tk.build("keras:mobilenet", head=tk.Classifier(2), weights=None, input_shape=(32, 32, 3))
    check_export(m, tmp_path, "savedmodel", tol=1e-4)
    with pytest.raises(ConfigError) as e:
        m.export(tmp_path / "m.onnx", format="onnx")
    from transferkit.export import formats

    if "onnx" in formats():  # declared by the torch adapter, which has no MobileNet
        assert "tf2onnx" in str(e.value)
    assert not (tmp_path / "m.onnx").exists()


def _run_backend(backend, script):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_jax_backend_exports_both_formats(tmp_path):
    pytest.importorskip("jax")
    r = _run_backend(
        "jax",
        f"""
        import numpy as np
        import transferkit as tk
        from transferkit_keras.export import run_exported
        m = tk.build("keras:mlp", head=tk.Classifier(2), weights=None, input_shape=(8, 8, 1))
        x = np.random.default_rng(0).random((5, 8, 8, 1), dtype=np.float32)
        for fmt, name in (("savedmodel", "m"), ("tflite", "m.tflite")):
            p = m.export({str(tmp_path)!r} + "/" + name, format=fmt)
            print("DIFF", fmt, float(np.abs(run_exported(p, fmt, x) - m.predict(x)).max()))
        """,
    )
    diffs = dict(line.split()[1:] for line in r.stdout.splitlines() if line.startswith("DIFF "))
    assert set(diffs) == {"savedmodel", "tflite"}, r.stderr[-2000:]
    assert all(float(d) < 1e-5 for d in diffs.values())


def test_torch_backend_refuses_with_the_alternative(tmp_path):
    pytest.importorskip("torch")
    r = _run_backend(
        "torch",
        f"""
        import transferkit as tk
        from transferkit.errors import ConfigError
        m = tk.build("keras:mlp", head=tk.Classifier(2), weights=None, input_shape=(8, 8, 1))
        try:
            m.export({str(tmp_path / "m")!r}, format="savedmodel")
        except ConfigError as e:
            print("REFUSED", e)
        """,
    )
    assert "REFUSED" in r.stdout, r.stderr[-2000:]
    assert "KERAS_BACKEND=tensorflow" in r.stdout and "framework='keras'" in r.stdout
    assert not (tmp_path / "m").exists()
