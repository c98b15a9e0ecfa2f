"""Conformance suite: every installed framework adapter must pass these.

A third-party framework adapter can run them too (parametrise ``framework``).
"""

import json

import numpy as np
import pytest

import transferkit as tk
from transferkit import errors


def cnn(framework, num_classes=3, weights=None, **kw):
    return tk.build(
        f"{framework}:cnn",
        head=tk.Classifier(num_classes, **kw),
        weights=weights,
        input_shape=(16, 16, 3),
    )


def test_build_predict_features_shapes(framework, tiny_images):
    x, _ = tiny_images
    model = cnn(framework)
    assert model.backbone.framework == framework and model.native is not None
    p = model.predict(x)
    assert p.shape == (24, 3) and np.allclose(p.sum(1), 1.0, atol=1e-5)
    assert model.features(x).shape == (24, 128)
    assert model.logits(x[:5]).dtype == np.float32


def test_pretrained_weights_load_and_differ_from_scratch(framework, tiny_images):
    x, _ = tiny_images
    pre = tk.build(f"{framework}:cnn", head=tk.Classifier(3))
    raw = tk.build(f"{framework}:cnn", head=tk.Classifier(3), weights=None)
    assert pre.weights_origin and "digits" in pre.weights_origin
    assert not np.allclose(pre.features(x), raw.features(x))


def test_fit_is_repeatable_and_learns(framework, tiny_images):
    x, y = tiny_images
    x = x.copy()
    x[y == 1, :8] += 0.8  # make the classes separable
    x[y == 2, 8:] += 0.8
    x = np.clip(x, 0, 1)
    data = tk.Dataset(x, y)
    runs = []
    for _ in range(2):
        model = cnn(framework)
        h = tk.fit(model, data, val=data, epochs=6, lr=3e-3, batch_size=8, seed=3, verbose=0)
        runs.append((model.engine.get_weights(), h))
    w1, h1 = runs[0]
    w2, _ = runs[1]
    assert all(np.array_equal(w1[k], w2[k]) for k in w1)
    assert len(h1) == 6 and h1["loss"][-1] < h1["loss"][0]
    assert h1["val_accuracy"][-1] > 0.6
    assert {"loss", "lr", "val_loss", "val_accuracy", "val_macro_f1"} <= set(h1.history)


def test_frozen_groups_do_not_change_and_hold_no_optimizer_state(framework, tiny_images):
    x, y = tiny_images
    model = cnn(framework, weights="pretrained")
    before = model.engine.get_weights()
    tk.fit(
        model,
        tk.Dataset(x, y),
        freeze=tk.freeze.TrainLast(1),
        epochs=2,
        batch_size=8,
        verbose=0,
        cache_features=False,
    )
    after = model.engine.get_weights()
    for k in before:
        same = np.array_equal(before[k], after[k])
        if k.startswith(("backbone.stage1", "backbone.stage2", "backbone.stage3")):
            assert same, f"{k} is frozen but changed (BatchNorm statistics included)"
        elif k.startswith(("backbone.stage4.conv", "head.")):
            assert not same, f"{k} trains but did not change"
    state = model.engine.training_state()
    assert not any(".stage1." in k or ".stage2." in k for k in state)


def test_feature_caching_matches_the_uncached_run(framework, tiny_images):
    x, y = tiny_images
    outs = []
    for cache in (True, False):
        model = cnn(framework, weights="pretrained")
        calls = []
        original = model.engine.features
        model.engine.features = lambda b, _o=original, _c=calls: _c.append(len(b)) or _o(b)
        tk.fit(
            model,
            tk.Dataset(x, y),
            freeze=tk.freeze.FeatureExtraction(),
            epochs=5,
            batch_size=8,
            verbose=0,
            cache_features=cache,
            seed=1,
        )
        outs.append(model.predict(x))
        assert (sum(calls) == 24) if cache else not calls
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)


def test_gradual_unfreeze_and_lr_decay_run(framework, tiny_images):
    x, y = tiny_images
    model = cnn(framework, weights="pretrained")
    h = tk.fit(
        model,
        tk.Dataset(x, y),
        freeze=tk.freeze.GradualUnfreeze(lr_decay=0.5),
        epochs=4,
        batch_size=8,
        optimizer="adamw",
        weight_decay=0.01,
        warmup_steps=2,
        verbose=0,
    )
    assert h["trainable_groups"] == [0, 1, 2, 3]


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_optimizers(framework, tiny_images, optimizer):
    x, y = tiny_images
    model = cnn(framework)
    h = tk.fit(model, tk.Dataset(x, y), epochs=2, optimizer=optimizer, lr=1e-2, verbose=0)
    assert np.isfinite(h["loss"]).all()


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_a_linear_probe_trains_identically_to_torch(framework, optimizer):
    # Same backbone weights, same head initialisation, the same optimizer semantics, the
    # scheduled learning rate passed per step: the frameworks agree step for step.
    if framework == "torch":
        pytest.skip("torch is the reference")
    pytest.importorskip("torch")
    train, test = tk.datasets.digits_transfer(shots=5, seed=0)
    probs = []
    for fw in ("torch", framework):
        model = tk.build(f"{fw}:cnn", head=tk.Classifier(5), seed=3)
        tk.fit(
            model,
            train,
            freeze=tk.freeze.FeatureExtraction(),
            epochs=8,
            batch_size=8,
            optimizer=optimizer,
            weight_decay=0.01,
            lr=1e-2,
            warmup_steps=3,
            verbose=0,
        )
        probs.append(model.predict(test.x))
    assert np.abs(probs[0] - probs[1]).max() < 1e-4


def test_regressor(framework, tiny_images):
    x, _ = tiny_images
    target = x.mean(axis=(1, 2, 3))
    model = tk.build(
        f"{framework}:cnn", head=tk.Regressor(1), weights=None, input_shape=(16, 16, 3)
    )
    tk.fit(model, tk.Dataset(x, target), epochs=3, verbose=0)
    scores = model.evaluate(tk.Dataset(x, target))
    assert set(scores) == {"loss", "mse", "mae"} and model.predict(x).shape == (24, 1)


def test_save_load_round_trip(framework, tiny_images, tmp_path):
    x, y = tiny_images
    model = cnn(framework, hidden=(8,))
    tk.fit(model, tk.Dataset(x, y), epochs=1, verbose=0)
    model.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["backbone"] == f"{framework}:cnn" and cfg["head"]["hidden"] == [8]
    again = tk.load(tmp_path / "m")
    np.testing.assert_allclose(again.predict(x), model.predict(x), atol=1e-6)
    assert again.history and again.history[0]["epoch"] == 1


def test_early_stopping_restores_best(framework, tiny_images):
    x, y = tiny_images
    model = cnn(framework)
    stop = tk.EarlyStopping(monitor="val_loss", patience=1)
    h = tk.fit(
        model,
        tk.Dataset(x, y),
        val=tk.Dataset(x[::-1].copy(), (y[::-1] + 1) % 3),
        epochs=30,
        lr=1e-2,
        early_stopping=stop,
        verbose=0,
    )
    assert len(h) < 30
    assert model.evaluate(tk.Dataset(x[::-1].copy(), (y[::-1] + 1) % 3))["loss"] == (
        pytest.approx(min(h["val_loss"]), rel=1e-4)
    )


def test_exact_resume(framework, tiny_images, tmp_path):
    x, y = tiny_images
    data = tk.Dataset(x, y)
    opts = dict(
        epochs=4, batch_size=8, lr=1e-2, seed=5, verbose=0, freeze=tk.freeze.GradualUnfreeze()
    )
    straight = cnn(framework, dropout=0.3)
    tk.fit(straight, data, **opts)

    class Interrupt(tk.Callback):  # the run dies after its second epoch
        def on_epoch_end(self, trainer, epoch, logs):
            trainer.stop = epoch == 1

    first = cnn(framework, dropout=0.3)
    tk.fit(first, data, callbacks=[Interrupt()], checkpoint_dir=tmp_path / "ckpt", **opts)
    resumed = cnn(framework, dropout=0.3)
    h = tk.fit(resumed, data, resume_from=tmp_path / "ckpt", **opts)
    assert [e["epoch"] for e in h.epochs] == [1, 2, 3, 4]
    a, b = straight.engine.get_weights(), resumed.engine.get_weights()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)


# --- bad input: the same errors in every framework, raised before framework code ---------


def test_bad_inputs(framework, tiny_images):
    x, y = tiny_images
    model = cnn(framework)
    with pytest.raises(errors.LabelError, match=r"outside \[0, 3\)"):
        tk.fit(model, tk.Dataset(x, y + 1), verbose=0)
    nan = x.copy()
    nan[0, 0, 0, 0] = np.inf
    with pytest.raises(errors.NonFiniteInputError):
        tk.fit(model, tk.Dataset(nan, y), verbose=0)
    with pytest.raises(errors.InputShapeError):
        model.predict(np.zeros((2, 16, 16, 4), np.float32))
    with pytest.raises(errors.InputDTypeError):
        model.predict(np.array([["a", "b"]]))
    with pytest.raises(errors.EmptyDataError):
        model.predict(np.zeros((0, 16, 16, 3), np.float32))
    with pytest.raises(errors.LabelError, match="missing"):
        tk.fit(model, tk.Dataset(x), verbose=0)


def test_weights_that_do_not_match(framework, tmp_path):
    from transferkit import weights as wio

    good = cnn(framework).engine.get_weights()
    arrays = {k[9:]: v for k, v in good.items() if k.startswith("backbone.")}
    arrays["stage1.conv.weight"] = arrays["stage1.conv.weight"][:4]
    arrays.pop("stage2.bn.running_mean")
    arrays["extra.weight"] = np.zeros(3, np.float32)
    wio.save(arrays, tmp_path / "bad.safetensors")
    with pytest.raises(errors.WeightsError) as e:
        cnn(framework, weights=tmp_path / "bad.safetensors")
    msg = str(e.value)
    assert "stage2.bn.running_mean" in msg and "extra.weight" in msg
    assert "stage1.conv.weight: file (4, 3, 3, 3) vs model (32, 3, 3, 3)" in msg
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(errors.WeightsError, match="corrupt"):
        cnn(framework, weights=tmp_path / "junk.safetensors")
    with pytest.raises(errors.WeightsError, match="does not exist"):
        cnn(framework, weights=tmp_path / "nope.safetensors")


def test_failed_fit_and_bad_dirs_lose_nothing(framework, tiny_images, tmp_path):
    x, y = tiny_images
    model = cnn(framework)
    model.save(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    with pytest.raises(errors.ModelDirError, match="not a training checkpoint"):
        tk.fit(model, tk.Dataset(x, y), epochs=1, verbose=0, checkpoint_dir=tmp_path / "m")
    with pytest.raises(errors.TrainingError, match="became"):
        tk.fit(
            model,
            tk.Dataset(x, y),
            epochs=3,
            lr=1e38,
            batch_size=8,
            optimizer="sgd",
            verbose=0,
            checkpoint_dir=tmp_path / "ckpt",
        )
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before
    with pytest.raises(errors.ModelDirError, match="does not exist"):
        tk.load(tmp_path / "missing")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(errors.ModelDirError, match="corrupt"):
        tk.load(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(errors.ModelDirError, match="model.safetensors is missing"):
        tk.load(tmp_path / "m")
