"""``timm:`` and ``torchvision:`` backbones, built with random weights (no hub is reached):
the index against the installed libraries, features equal to the library's own, layer
groups from timm's block structure, fitting under freeze policies and LoRA, saving and
reloading, local weight files, and the errors for unknown names and missing weights."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import transferkit as tk
from transferkit import datasets, errors

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
torch = pytest.importorskip("torch")

from transferkit_torch import zoo, zoo_index  # noqa: E402


@pytest.fixture(scope="module")
def train():
    return datasets.digits_transfer(shots=4, seed=0)[0]


def _indexed(library: str) -> dict:
    part = zoo.index()[library]
    if part["version"] != zoo._installed(library):
        pytest.skip(f"the index describes {library} {part['version']}")
    return part


def test_listing_the_zoos_imports_neither_library_nor_torch():
    code = (
        "import sys, transferkit as tk; from transferkit.cli import main; "
        "main(['backbones', 'timm:*convnext_at*']); main(['backbones', 'torchvision:resnet1*']); "
        "print('IMPORTED', [m for m in ('torch', 'timm', 'torchvision') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "IMPORTED []" in out.stdout
    assert "timm:convnext_atto.d2_in1k" in out.stdout and "torchvision:resnet18" in out.stdout
    row = next(r for r in out.stdout.splitlines() if r.startswith("timm:convnext_atto "))
    assert "320" in row.split()  # its feature size, from the index


def test_the_index_lists_every_model_of_the_installed_libraries():
    part = _indexed("timm")
    assert set(part["models"]) == set(zoo_index.timm_names())
    assert len(tk.list_backbones("timm:*")) == len(part["models"]) > 1000
    tv = _indexed("torchvision")
    assert set(tv["models"]) == set(zoo_index.torchvision_names())
    for arch in ("resnet50", "vit_small_patch16_224", "test_vit", "efficientnet_b0"):
        assert part["archs"][arch] == json.loads(json.dumps(zoo_index.timm_arch(arch)))
    assert tv["archs"]["mobilenet_v3_small"] == zoo_index.torchvision_arch("mobilenet_v3_small")


def test_timm_groups_are_the_blocks_of_its_layer_decay():
    from timm.models import group_parameters

    spec = tk.list_backbones("timm:resnet50")[0]
    assert spec.group_names[:3] == ("stem", "layer1_0", "layer1_1") and len(spec.groups) == 17
    assert spec.feature_size == 2048 and "batchnorm" in spec.tags
    assert spec.mean == pytest.approx((0.485, 0.456, 0.406))
    assert spec.ignore_keys == ("fc", "*.num_batches_tracked")
    model = zoo_index.timm_model("resnet50")
    by_id = group_parameters(model, model.group_matcher(coarse=False))
    for i, g in enumerate(spec.group_names):  # the same parameters, in the same order
        assert {n for n, _ in model.named_parameters() if spec.group_of(n) == g} == set(by_id[i])
    vit = tk.list_backbones("timm:vit_small_patch16_224.augreg_in21k_ft_in1k")[0]
    assert vit.lora_target == ("qkv",) and vit.mean == (0.5, 0.5, 0.5)
    assert not vit.resizable and vit.input_shape == (224, 224, 3)


@pytest.mark.parametrize("arch", ["resnet50", "vit_small_patch16_224", "convnext_atto"])
def test_layer_wise_decay_scales_each_parameter_as_timms_own(arch):
    from timm.optim import param_groups_layer_decay

    spec = tk.list_backbones(f"timm:{arch}")[0]
    plan = tk.freeze.FullFineTune(lr_decay=0.7).plan(spec.group_names, epoch=0)
    with torch.device("meta"):
        model = timm.create_model(arch, num_classes=5)
    names = {id(p): n for n, p in model.named_parameters()}
    classifier = model.pretrained_cfg["classifier"]
    head_group = [] if arch != "convnext_atto" else ["head.norm.weight", "head.norm.bias"]
    for group in param_groups_layer_decay(model, weight_decay=0.0, layer_decay=0.7):
        for p in group["params"]:
            name = names[id(p)]
            ours = 1.0 if name.startswith(classifier + ".") else plan[spec.group_of(name)]
            if name in head_group:  # timm's head holds the final norm: the last block's here
                ours /= 0.7
            assert ours == pytest.approx(group["lr_scale"]), name


@pytest.mark.parametrize("name", ["timm:test_resnet", "timm:test_vit", "timm:convnext_atto"])
def test_timm_features_are_timms_pooled_features(train, name):
    shape = None if "vit" in name else (64, 64, 3)
    model = tk.build(name, head=tk.Classifier(5), weights=None, input_shape=shape, seed=3)
    x = model.prepare(train.x[:3])
    native = timm.create_model(name[5:], pretrained=False, num_classes=5)
    weights = model.get_weights().items()
    own = {k[9:]: torch.from_numpy(v) for k, v in weights if k.startswith("backbone.")}
    missing = native.load_state_dict(own, strict=False)
    assert all(k.startswith(native.pretrained_cfg["classifier"]) for k in missing.missing_keys)
    with torch.no_grad():
        tensor = torch.from_numpy(x).permute(0, 3, 1, 2)
        pooled = native.forward_head(native.eval().forward_features(tensor), pre_logits=True)
    np.testing.assert_allclose(model.features(train.x[:3]), pooled.numpy(), atol=1e-5)


POLICIES = {
    "feature extraction": tk.freeze.FeatureExtraction(),
    "train last 1": tk.freeze.TrainLast(1),
    "fine-tune": tk.freeze.FullFineTune(),
    "layer-wise decay": tk.freeze.FullFineTune(lr_decay=0.5),
    "gradual": tk.freeze.GradualUnfreeze(every=1),
}


@pytest.mark.parametrize("name", ["timm:test_resnet", "torchvision:resnet18"])
@pytest.mark.parametrize("policy", list(POLICIES))
def test_zoo_model_fits_under_each_policy_saves_and_reloads(train, tmp_path, policy, name):
    model = tk.build(name, head=tk.Classifier(5), weights=None, input_shape=(32, 32, 3), seed=0)
    before = model.get_weights()
    tk.fit(model, train, freeze=POLICIES[policy], epochs=2, lr=1e-2, batch_size=10, seed=0,
           verbose=0)  # fmt: skip
    after = model.get_weights()
    moved = {model.spec.group_of(k[9:]) for k in before
             if k.startswith("backbone.") and not np.array_equal(before[k], after[k])}  # fmt: skip
    expected = {
        "feature extraction": set(),
        "train last 1": {"layer4"},
        "gradual": {"layer4"},  # the head alone in the first epoch, then layer4
    }.get(policy, set(model.spec.group_names))
    assert moved == expected
    model.save(tmp_path / "m")
    again = tk.load(tmp_path / "m")
    assert again.spec.name == name
    np.testing.assert_allclose(again.predict(train.x[:6]), model.predict(train.x[:6]), atol=1e-6)


def _qkv(name, m):
    return name.endswith(".qkv")


def _ungrouped(name, m):
    return isinstance(m, torch.nn.Linear) or (isinstance(m, torch.nn.Conv2d) and m.groups == 1)


@pytest.mark.parametrize(
    "name, shape, adapts",
    [
        ("timm:test_vit", None, _qkv),  # the attention projections of each block
        ("timm:test_resnet", (32, 32, 3), _ungrouped),  # convolutions but depthwise ones
        ("torchvision:mobilenet_v3_small", (32, 32, 3), _ungrouped),
    ],
)
def test_lora_on_zoo_models(train, tmp_path, name, shape, adapts):
    pytest.importorskip("peft")
    model = tk.build(name, head=tk.Classifier(5), weights=None, input_shape=shape, seed=0)
    modules = model.engine.backbone.named_modules()
    adapted = sum(bool(n) and adapts(n, m) for n, m in modules)
    assert adapted >= 6
    frozen = {k: v for k, v in model.get_weights().items() if k.startswith("backbone.")}
    tk.fit(model, train, freeze=tk.freeze.LoRA(r=2, alpha=4), epochs=2, lr=1e-2, batch_size=10,
           seed=0, verbose=0)  # fmt: skip
    weights = model.get_weights()
    lora_b = [k for k in weights if ".lora_B." in k]
    assert len(lora_b) == adapted and any(np.abs(weights[k]).max() > 0 for k in lora_b)
    base = {k.replace(".base_layer.", "."): v for k, v in weights.items()}  # peft's wrapping
    assert set(frozen) <= set(base)
    for k, v in frozen.items():  # the backbone's own weights stay as they were
        np.testing.assert_array_equal(base[k], v)
    expected = model.predict(train.x[:4])
    model.save(tmp_path / "m")
    np.testing.assert_allclose(tk.load(tmp_path / "m").predict(train.x[:4]), expected, atol=1e-6)


def test_lora_targets_that_match_nothing_list_the_models_layers():
    pytest.importorskip("peft")
    model = tk.build("timm:test_vit", head=tk.Classifier(5), weights=None)
    train = datasets.digits_transfer(shots=2, seed=0)[0]
    with pytest.raises(errors.ConfigError, match=r"matches no module of 'timm:test_vit'.*qkv"):
        tk.fit(model, train, freeze=tk.freeze.LoRA(target=("to_q",)), epochs=1, verbose=0)


def test_torchvision_features_are_the_model_without_its_classifier(train):
    model = tk.build("torchvision:resnet18", head=tk.Classifier(5), weights=None,
                     input_shape=(32, 32, 3), seed=1)  # fmt: skip
    spec = model.spec
    assert spec.group_names == ("stem", "layer1", "layer2", "layer3", "layer4")
    assert spec.feature_size == 512 and spec.ignore_keys[0] == "fc"
    # the weights enum's transforms: a 224 crop, ImageNet's mean and std
    assert tk.list_backbones("torchvision:resnet18")[0].input_shape == (224, 224, 3)
    assert spec.mean == pytest.approx((0.485, 0.456, 0.406))
    native = torchvision.models.resnet18()
    native.load_state_dict({k[9:]: torch.from_numpy(v) for k, v in model.get_weights().items()
                            if k.startswith("backbone.")}, strict=False)  # fmt: skip
    native.fc = torch.nn.Identity()
    x = torch.from_numpy(model.prepare(train.x[:3])).permute(0, 3, 1, 2)
    with torch.no_grad():
        np.testing.assert_allclose(model.features(train.x[:3]), native.eval()(x), atol=1e-5)
    # the same architecture as the reference torch:resnet18, which all frameworks share
    ref = tk.build("torch:resnet18", head=tk.Classifier(5), weights=None, input_shape=(32, 32, 3))
    ref.set_weights({k: v for k, v in model.get_weights().items() if k.startswith("backbone.")})
    np.testing.assert_allclose(ref.features(train.x[:3]), model.features(train.x[:3]), atol=1e-5)


def test_a_local_weights_file_with_the_librarys_names(train, tmp_path):
    from safetensors.torch import save_file

    native = timm.create_model("test_resnet", pretrained=False, num_classes=1000)
    save_file(native.state_dict(), tmp_path / "model.safetensors")  # with its classifier
    file = tmp_path / "model.safetensors"
    model = tk.build("timm:test_resnet", head=tk.Classifier(5), weights=file,
                     input_shape=(32, 32, 3))  # fmt: skip
    got = model.get_weights()
    for k, v in native.state_dict().items():
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(got[f"backbone.{k}"], v.numpy())
    bad = dict(native.state_dict(), **{"layer1.0.conv1.weight": torch.zeros(1)})
    save_file(bad, tmp_path / "bad.safetensors")
    with pytest.raises(errors.WeightsError, match="layer1.0.conv1.weight"):
        tk.build("timm:test_resnet", head=tk.Classifier(5), weights=tmp_path / "bad.safetensors")


def test_missing_pretrained_weights_name_the_file_the_cache_and_a_local_copy(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    with pytest.raises(errors.WeightsError) as e:
        tk.build("timm:test_resnet.r160_in1k", head=tk.Classifier(5))
    message = str(e.value)
    assert "model.safetensors of the Hugging Face repo timm/test_resnet.r160_in1k" in message
    assert str(tmp_path / "hf") in message and "weights='<file>.safetensors'" in message
    with pytest.raises(errors.WeightsError, match=r"resnet18-f37072fd.pth\) are not in .*torch"
                       r"/checkpoints and HF_HUB_OFFLINE is set"):  # fmt: skip
        tk.build("torchvision:resnet18", head=tk.Classifier(5))
    with pytest.raises(errors.WeightsError, match="has no pretrained weights in timm"):
        tk.build("timm:test_vit4", head=tk.Classifier(5))


def test_unknown_names_and_versions_that_lack_a_model():
    for typo, meant in [
        ("timm:convnext_tinyy", "timm:convnext_tiny"),
        ("timm:resnet50.a1_in1kk", "timm:resnet50.a1_in1k"),
        ("torchvision:resnet500", "torchvision:resnet50"),
        ("torchvision:fasterrcnn_resnet50_fpn", None),  # a detection model: not offered
    ]:
        with pytest.raises(errors.UnknownBackboneError) as e:
            tk.build(typo, head=tk.Classifier(5))
        assert meant is None or meant in e.value.suggestions
    # a name the index has but the installed library lacks (an older timm, say)
    with pytest.raises(errors.ConfigError, match=r"timm .* has no model 'resnet9000' \(closest"):
        zoo.timm_factory((224, 224, 3), "resnet9000", pretrained=False)
    with pytest.raises(errors.ConfigError, match="no pretrained tag 'x' for 'resnet50'; its tags"):
        zoo.timm_factory((224, 224, 3), "resnet50.x")
    with pytest.raises(errors.ConfigError, match="torchvision .* has no classification model"):
        zoo.torchvision_factory((224, 224, 3), "resnet9000")
    with pytest.raises(errors.InputShapeError, match=r"only takes input_shape \(224, 224, 3\)"):
        tk.build("timm:vit_small_patch16_224", head=tk.Classifier(5), input_shape=(64, 64, 3))


@pytest.fixture
def index_of(monkeypatch):
    """Registers the zoos from another index for the test."""
    from transferkit import plugins

    def use(index: dict) -> None:
        monkeypatch.setattr(zoo, "index", lambda: index)
        zoo.indexed.cache_clear()
        plugins.reload()

    yield use
    monkeypatch.undo()
    zoo.indexed.cache_clear()
    plugins.reload()


def test_a_model_the_index_lacks_is_described_by_the_installed_library(index_of, train):
    index_of({})
    assert not tk.list_backbones("timm:*")
    model = tk.build("timm:test_convnext", head=tk.Classifier(5), weights=None,
                     input_shape=(32, 32, 3))  # fmt: skip
    native = zoo_index.timm_model("test_convnext")
    assert model.spec.feature_size == native.num_features
    assert model.features(train.x[:2]).shape == (2, native.num_features)


def test_another_installed_version_describes_each_model_again(index_of):
    stale = json.loads(json.dumps(zoo.index()["timm"]))
    stale["version"] = "0.9"
    stale["archs"]["test_resnet"]["features"] = 7  # what an old timm might have said
    stale["models"]["resnet9000"] = dict(stale["models"]["resnet18"], arch="resnet18")
    index_of({"timm": stale})
    assert tk.list_backbones("timm:test_resnet")[0].feature_size == 7  # as indexed
    model = tk.build("timm:test_resnet", head=tk.Classifier(5), weights=None,
                     input_shape=(32, 32, 3))  # fmt: skip
    assert model.spec.feature_size == 96 and model.engine.spec.feature_size == 96
    with pytest.raises(errors.ConfigError, match=r"timm 1\S* cannot build 'timm:resnet9000' "
                       r"\(.*\); transferkit's index lists it for timm 0.9. Closest: "
                       r".*resnet"):  # fmt: skip
        tk.build("timm:resnet9000", head=tk.Classifier(5), weights=None)


def test_vision_tag_lists_the_zoos():
    vision = {s.framework for s in tk.list_backbones(tags=("vision",))}
    assert {"timm", "torchvision", "torch"} <= vision
    text = tk.list_backbones(tags=("text",))
    assert not any(s.framework in ("timm", "torchvision") for s in text)
