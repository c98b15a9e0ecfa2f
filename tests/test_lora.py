"""LoRA on any PyTorch backbone: the backbone's default targets (convolutions of the
reference CNNs, the layers of the MLP), adapters trained with the head while the
backbone's own weights stay put, saved and reloaded; targets that match nothing are
named with what the model has."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

import transferkit as tk
from transferkit import datasets
from transferkit.errors import ConfigError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("peft") is None,
    reason="needs torch and peft",
)


@pytest.mark.parametrize(
    "arch, weights, adapted",
    [
        ("cnn", "pretrained", 4),  # its four 3x3 convolutions
        ("resnet18", None, 17),  # the stem and the blocks' 3x3 convolutions
        ("efficientnet_lite0", "pretrained", 32),  # the 1x1 expand/project/head convs
    ],
)
def test_lora_adapts_the_backbones_default_targets_and_reloads(tmp_path, arch, weights, adapted):
    train = datasets.digits_transfer(shots=4, seed=0)[0]
    model = tk.build(
        f"torch:{arch}", head=tk.Classifier(5), weights=weights, input_shape=(32, 32, 3), seed=0
    )
    before = model.get_weights()
    tk.fit(model, train, freeze=tk.freeze.LoRA(r=2, alpha=4), epochs=2, lr=1e-2, batch_size=10,
           seed=0, verbose=0, batchnorm="frozen")  # fmt: skip
    after = model.get_weights()
    lora_b = [k for k in after if ".lora_B." in k]
    assert len(lora_b) == adapted
    assert any(np.abs(after[k]).max() > 0 for k in lora_b)  # the adapters learned
    for k, v in before.items():  # the backbone's own weights did not move; the head did
        now = after.get(k, after.get(k.replace(".weight", ".base_layer.weight")))
        assert now is not None, k
        assert np.array_equal(now, v) != k.startswith("head."), k
    expected = model.predict(train.x[:6])
    model.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["peft"]["target"] == list(model.spec.lora_target)
    np.testing.assert_allclose(tk.load(tmp_path / "m").predict(train.x[:6]), expected, atol=1e-6)


def test_a_lora_target_that_matches_nothing_names_the_models_layers():
    model = tk.build("torch:cnn", head=tk.Classifier(5), weights=None)
    train = datasets.digits_transfer(shots=2, seed=0)[0]
    with pytest.raises(
        ConfigError,
        match=r"LoRA target \['query'\] matches no module of 'torch:cnn'; its linear and "
        r"convolution layers: stage1.conv, stage2.conv, stage3.conv, stage4.conv",
    ):
        tk.fit(model, train, freeze=tk.freeze.LoRA(target="query"), epochs=1, verbose=0)
    assert model.peft is None and not any("lora" in k for k in model.get_weights())


def test_lora_is_refused_where_the_framework_has_none():
    pytest.importorskip("flax")
    model = tk.build("flax:cnn", head=tk.Classifier(5), weights=None)
    train = datasets.digits_transfer(shots=2, seed=0)[0]
    with pytest.raises(ConfigError, match=r"the flax framework has no 'lora' modules "
                       r"\(tk.freeze.LoRA\); hf, timm, torch, torchvision do"):  # fmt: skip
        tk.fit(model, train, freeze=tk.freeze.LoRA(), epochs=1, verbose=0)
