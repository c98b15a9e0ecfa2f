import numpy as np
import pytest

import transferkit as tk
from transferkit import metrics
from transferkit.errors import ConfigError


def test_heads_describe_their_layers():
    layers = tk.Classifier(5, hidden=(32, 16), dropout=0.1).dense_layers(64)
    assert [(d.name, d.in_features, d.out_features, d.activation) for d in layers] == [
        ("hidden.0", 64, 32, "relu"),
        ("hidden.1", 32, 16, "relu"),
        ("out", 16, 5, None),
    ]
    assert tk.Regressor(outputs=2).outputs == 2 and tk.Regressor().loss == "mse"


def test_head_config_round_trip_and_errors():
    for head in (tk.Classifier(3, hidden=(8,), dropout=0.2), tk.Regressor(2)):
        assert tk.Head.from_config(head.to_config()) == head
    with pytest.raises(ConfigError, match=r"num_classes\) must be >= 2"):
        tk.Classifier(1)
    with pytest.raises(ConfigError, match="dropout"):
        tk.Classifier(2, dropout=1.5)
    with pytest.raises(ConfigError, match="unknown head kind"):
        tk.Head.from_config({"kind": "segmenter"})


def test_classification_metrics():
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0]])
    y = np.array([0, 1, 1, 0])
    m = metrics.classification(logits, y)
    assert m["accuracy"] == 0.75
    # class 0: tp 2 fp 1 fn 0 -> 0.8; class 1: tp 1 fp 0 fn 1 -> 2/3
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    expected = -np.mean(np.log([np.exp(2) / (np.exp(2) + 1)] * 3 + [1 / (np.exp(2) + 1)]))
    assert m["loss"] == pytest.approx(expected)


def test_regression_metrics():
    m = metrics.regression(np.array([[1.0], [3.0]]), np.array([[0.0], [3.0]]))
    assert m == {"loss": 0.5, "mse": 0.5, "mae": 0.5}
