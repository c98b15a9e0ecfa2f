"""Hugging Face image encoders as backbones (ViT, DINOv2, CLIP's and SigLIP's vision
towers, ConvNeXt, Swin), from tiny models made here and saved as local directories with
their image processors: preprocessing from the processor, pooled features per family,
layer groups, fitting under freeze policies and LoRA, saving and reloading, and the
errors for what is missing."""

from __future__ import annotations

import json

import numpy as np
import pytest

import transferkit as tk
from transferkit import datasets, errors

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

TOWER = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
             num_attention_heads=2, intermediate_size=64)  # fmt: skip
MEAN, STD = [0.4, 0.45, 0.5], [0.2, 0.25, 0.3]


def _make(kind: str, path):
    """A tiny ``kind`` model with random weights and its image processor, saved."""
    import torch

    t = transformers
    norm = dict(image_mean=MEAN, image_std=STD)
    made = {
        "vit": lambda: (
            t.ViTModel(t.ViTConfig(**TOWER)),
            t.ViTImageProcessor(size={"height": 32, "width": 32}, **norm),
        ),
        "dinov2": lambda: (
            t.Dinov2Model(t.Dinov2Config(**{**TOWER, "intermediate_size": None}, mlp_ratio=2)),
            t.BitImageProcessor(
                size={"shortest_edge": 40},
                crop_size={"height": 32, "width": 32},
                do_center_crop=True,
                **norm,
            ),  # fmt: skip
        ),
        "clip": lambda: (  # a whole image-text model: its vision tower is the backbone
            t.CLIPModel(
                t.CLIPConfig(
                    vision_config=TOWER,
                    projection_dim=16,
                    text_config=dict(
                        vocab_size=99,
                        hidden_size=16,
                        num_hidden_layers=1,
                        num_attention_heads=2,
                        intermediate_size=32,
                    ),
                )
            ),  # fmt: skip
            t.CLIPImageProcessor(
                size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, **norm
            ),  # fmt: skip
        ),
        "siglip": lambda: (
            t.SiglipVisionModel(t.SiglipVisionConfig(**TOWER)),
            t.SiglipImageProcessor(size={"height": 32, "width": 32}, **norm),
        ),
        "convnext": lambda: (
            t.ConvNextModel(t.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)),
            t.ConvNextImageProcessor(size={"shortest_edge": 32}, **norm),
        ),
        "swin": lambda: (
            t.SwinModel(
                t.SwinConfig(
                    image_size=32,
                    patch_size=4,
                    embed_dim=8,
                    depths=[1, 1],
                    num_heads=[1, 2],
                    window_size=4,
                )
            ),  # fmt: skip
            t.ViTImageProcessor(size={"height": 32, "width": 32}, **norm),
        ),
    }
    torch.manual_seed(7)
    model, processor = made[kind]()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    kinds = ("vit", "dinov2", "clip", "siglip", "convnext", "swin")
    return {k: _make(k, tmp_path_factory.mktemp(k)) for k in kinds}


@pytest.fixture(scope="module")
def train():
    return datasets.digits_transfer(shots=4, seed=0)[0]


#: (family, pooling, features, layer groups)
FAMILIES = [
    ("vit", "cls", 32, 3),
    ("dinov2", "cls", 32, 3),
    ("clip", "pooler", 32, 3),
    ("siglip", "pooler", 32, 3),
    ("convnext", "pooler", 16, 3),
    ("swin", "pooler", 16, 3),
]


@pytest.mark.parametrize("kind, pooling, width, n_groups", FAMILIES)
def test_image_encoders_build_fit_save_and_reload(zoo, train, tmp_path, kind, pooling, width,
                                                   n_groups):  # fmt: skip
    model = tk.build(f"hf:{zoo[kind]}", head=tk.Classifier(5), seed=0)
    spec = model.spec
    assert spec.input_kind == "image" and spec.input_shape == (32, 32, 3)
    assert spec.mean == pytest.approx(MEAN) and spec.std == pytest.approx(STD)
    assert len(spec.groups) == n_groups and spec.group_names[0] == "embeddings"
    owners = {
        spec.group_of(k[len("backbone.") :]) for k in model.get_weights() if "head." not in k[:5]
    }
    assert owners == set(spec.group_names)  # every group holds weights of its own
    assert model.engine.options() == {"pooling": pooling}
    x = train.x[:3]
    features = model.features(x)
    assert features.shape == (3, width)
    groups = model.engine.group_features(model.prepare(x))
    assert list(groups) == list(spec.group_names)
    np.testing.assert_allclose(groups[spec.group_names[-1]], features, atol=1e-5)
    before = model.get_weights()
    tk.fit(model, train, freeze=tk.freeze.TrainLast(1), epochs=2, lr=1e-2, batch_size=10,
           seed=0, verbose=0)  # fmt: skip
    after = model.get_weights()
    moved = {k for k in before if not np.array_equal(before[k], after[k])}
    last = spec.group_names[-1]
    assert all(k.startswith("head.") or spec.group_of(k[9:]) == last for k in moved)
    assert any(k.startswith("backbone.") for k in moved)  # the last group trained
    expected = model.predict(train.x[:6])
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "assets" / "preprocessor_config.json").is_file()
    again = tk.load(tmp_path / "m")
    np.testing.assert_allclose(again.predict(train.x[:6]), expected, atol=1e-6)


@pytest.mark.parametrize("kind, adapted", [("vit", 4), ("clip", 4), ("convnext", 4)])
def test_lora_on_image_encoders_defaults_to_the_familys_modules(zoo, train, tmp_path, kind,
                                                                 adapted):  # fmt: skip
    model = tk.build(f"hf:{zoo[kind]}", head=tk.Classifier(5), seed=0)
    tk.fit(model, train, freeze=tk.freeze.LoRA(r=2, alpha=4), epochs=2, lr=1e-2,
           batch_size=10, seed=0, verbose=0)  # fmt: skip
    weights = model.get_weights()
    lora_b = [k for k in weights if ".lora_B." in k]
    assert len(lora_b) == adapted and any(np.abs(weights[k]).max() > 0 for k in lora_b)
    expected = model.predict(train.x[:4])
    model.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["peft"]["target"] == list(model.spec.lora_target)
    np.testing.assert_allclose(tk.load(tmp_path / "m").predict(train.x[:4]), expected, atol=1e-6)


def test_pooling_is_an_option_and_normalize_is_not(zoo, train):
    vit = f"hf:{zoo['vit']}"
    mean = tk.build(vit, head=tk.Classifier(5), pooling="mean")
    cls = tk.build(vit, head=tk.Classifier(5))
    assert not np.allclose(mean.features(train.x[:2]), cls.features(train.x[:2]))
    with pytest.raises(errors.ConfigError, match=r"unknown option\(s\) normalize"):
        tk.build(vit, head=tk.Classifier(5), normalize=True)
    with pytest.raises(errors.ConfigError, match="pooling"):
        tk.build(vit, head=tk.Classifier(5), pooling="max")
    with pytest.raises(errors.ConfigError, match=r"SiglipVisionModel has no \[CLS\] token"):
        tk.build(f"hf:{zoo['siglip']}", head=tk.Classifier(5), pooling="cls")


def test_an_image_model_without_its_processor_is_named(zoo, tmp_path):
    import shutil

    shutil.copytree(zoo["vit"], tmp_path / "vit")
    (tmp_path / "vit" / "preprocessor_config.json").unlink()
    with pytest.raises(errors.WeightsError, match=r"preprocessor_config.json is missing.*"
                       r"AutoImageProcessor.from_pretrained"):  # fmt: skip
        tk.build(f"hf:{tmp_path / 'vit'}", head=tk.Classifier(5))


def test_a_hub_image_model_offline_says_how_to_pass_a_local_copy(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = r"'facebook/dinov2-small'.*HF_HUB_OFFLINE is set. It is looked for in .*hub"
    with pytest.raises(errors.WeightsError, match=message + r".*tk.build\('hf:/path/to/model'"):
        tk.build("hf:facebook/dinov2-small", head=tk.Classifier(5))


def test_an_image_encoder_exports_from_images(zoo, train, tmp_path):
    pytest.importorskip("onnxruntime")
    model = tk.build(f"hf:{zoo['vit']}", head=tk.Classifier(5), seed=0)
    model.export(tmp_path / "vit.pt2", format="torch-export")  # checked against the model
    path = model.export(tmp_path / "vit.onnx", format="onnx")
    import onnxruntime as ort

    x = model.prepare(train.x[:3]) * np.float32(STD) + np.float32(MEAN)  # [0, 1], 32x32
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]
    np.testing.assert_allclose(out, model.predict(x), atol=1e-4)


def test_an_image_model_of_another_family_is_named(tmp_path):
    config = transformers.BeitConfig(image_size=32, patch_size=8, hidden_size=32,
                                     num_hidden_layers=2, num_attention_heads=2)  # fmt: skip
    transformers.BeitModel(config).save_pretrained(tmp_path / "beit")
    message = r"is a 'beit' image model; transferkit's Hugging Face image encoders are vit, "
    with pytest.raises(errors.ConfigError, match=message + "dinov2, clip_vision_model"):
        tk.build(f"hf:{tmp_path / 'beit'}", head=tk.Classifier(5))
