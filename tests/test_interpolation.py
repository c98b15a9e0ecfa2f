"""tk.interpolate: weight-space ensembling of a fine-tuned model with its start."""

import numpy as np
import pytest

import transferkit as tk
from transferkit import errors


@pytest.fixture(scope="module")
def tuned():
    pytest.importorskip("torch")
    train, test = tk.datasets.digits_transfer(shots=3, seed=0)
    model = tk.build("torch:cnn", head=tk.Classifier(5), input_shape=(16, 16, 3), seed=1)
    tk.fit(model, train, epochs=2, lr=1e-2, batch_size=8, verbose=0)
    return model, test.x[:40]


def test_alpha_0_and_1_reproduce_the_inputs_exactly(tuned):
    model, x = tuned
    start = tk.build("torch:cnn", head=tk.Classifier(5), input_shape=(16, 16, 3), seed=1)
    one = tk.interpolate(start, model, alpha=1.0)
    np.testing.assert_array_equal(one.predict(x), model.predict(x))
    zero = tk.interpolate(start, model, alpha=0.0)
    np.testing.assert_array_equal(zero.features(x), start.features(x))
    w0, w1, half = (
        start.get_weights(),
        model.get_weights(),
        tk.interpolate(start, model).get_weights(),
    )
    for k in w1:
        expect = w1[k] if k.startswith("head.") else (w0[k].astype(np.float64) + w1[k]) / 2
        np.testing.assert_allclose(half[k], expect, rtol=1e-6, atol=1e-7, err_msg=k)
    assert model.get_weights().keys() == half.keys() and half is not w1  # inputs untouched
    np.testing.assert_array_equal(model.get_weights()["head.out.weight"], w1["head.out.weight"])


def test_a_backbone_name_means_its_pretrained_weights(tuned):
    model, x = tuned
    start = tk.build("torch:cnn", head=tk.Classifier(5), input_shape=(16, 16, 3))
    by_name = tk.interpolate("torch:cnn", model, alpha=0.0)
    np.testing.assert_array_equal(by_name.features(x), start.features(x))
    assert "interpolate(" in by_name.weights_origin


def test_across_frameworks(tuned):
    pytest.importorskip("flax")
    model, x = tuned
    start = tk.build("flax:cnn", head=tk.Classifier(5), input_shape=(16, 16, 3), seed=1)
    mixed = tk.interpolate(start, model, alpha=0.3)
    assert mixed.framework == "torch"
    ref = tk.interpolate(
        tk.build("torch:cnn", head=tk.Classifier(5), input_shape=(16, 16, 3), seed=1), model, 0.3
    )
    np.testing.assert_allclose(mixed.predict(x), ref.predict(x), atol=1e-5)


def test_bad_input(tuned):
    model, _ = tuned
    with pytest.raises(errors.ConfigError, match=r"finetuned=...\) needs a model"):
        tk.interpolate(model, "runs/x")
    with pytest.raises(errors.ConfigError, match=r"start=...\) needs a model or a backbone"):
        tk.interpolate(3, model)
    with pytest.raises(errors.ConfigError, match=r"alpha\) must be <= 1"):
        tk.interpolate(model, model, alpha=1.5)
    with pytest.raises(errors.ConfigError, match="must be a number"):
        tk.interpolate(model, model, alpha="0.5")
    other = tk.build("torch:resnet18", head=tk.Classifier(5), weights=None, input_shape=(32, 32, 3))
    with pytest.raises(errors.WeightsError, match="not the same architecture.*only in"):
        tk.interpolate(other, model)
    three = tk.build("torch:cnn", head=tk.Classifier(3), input_shape=(16, 16, 3))
    with pytest.raises(errors.ConfigError, match="3 outputs.*5.*same task"):
        tk.interpolate(three, model)
