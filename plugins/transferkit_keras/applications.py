"""Every model in ``keras.applications`` as a backbone ``keras:<name>``, with its input
size, preprocessing and feature size written down here, so that listing them imports no
keras. ImageNet weights (``weights="pretrained"``, the default) go through Keras's own
loading code and download cache; ``weights_file=`` names a Keras weights file on disk.

Features are globally average-pooled, except VGG16/VGG19, whose feature map is flattened
(the classic recipe: Flatten -> Dense(1024, relu) -> softmax), so their feature size
depends on the input size.

Layer groups are the model's resolution stages, input to output: ``stage1`` holds the
layers that work at the finest resolution, the last stage those at the coarsest (stride
32). Canonical weight names are ``<stage>.<keras layer name>.<weight>``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from transferkit.catalog import BackboneSpec, WeightSource
from transferkit.errors import ConfigError, InputShapeError, WeightsError

# Per-channel normalisation of [0, 1] inputs that reproduces each family's
# ``preprocess_input``: "tf" is x/127.5 - 1 on 0..255; "torch" ImageNet mean/std;
# "caffe" subtracts the ImageNet mean on 0..255 (BGR order: the channel flip is a layer
# inside the backbone); "raw" models rescale 0..255 themselves.
PREPROCESSING = {
    "tf": ((0.5,), (0.5,)),
    "torch": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "caffe": ((123.68 / 255, 116.779 / 255, 103.939 / 255), (1 / 255,) * 3),
    "raw": ((0.0,), (1 / 255,)),
}


class App(NamedTuple):
    keras_name: str  # the constructor in keras.applications
    size: int  # default (ImageNet) input size
    features: int  # channels of the final feature map
    mode: str  # preprocessing, a key of PREPROCESSING
    strides: tuple[int, int]  # log2 of the first and last stage's stride
    family: str
    min_size: int = 32


def _family(family: str, mode: str, strides: tuple[int, int], min_size: int = 32, **models):
    return {
        name: App(keras_name, size, features, mode, strides, family, min_size)
        for name, (keras_name, size, features) in models.items()
    }


APPLICATIONS: dict[str, App] = {
    **_family(
        "convnext",
        "raw",
        (2, 5),
        convnext_tiny=("ConvNeXtTiny", 224, 768),
        convnext_small=("ConvNeXtSmall", 224, 768),
        convnext_base=("ConvNeXtBase", 224, 1024),
        convnext_large=("ConvNeXtLarge", 224, 1536),
        convnext_xlarge=("ConvNeXtXLarge", 224, 2048),
    ),
    **_family(
        "densenet",
        "torch",
        (1, 5),
        densenet121=("DenseNet121", 224, 1024),
        densenet169=("DenseNet169", 224, 1664),
        densenet201=("DenseNet201", 224, 1920),
    ),
    **_family(
        "efficientnet",
        "raw",
        (1, 5),
        efficientnet_b0=("EfficientNetB0", 224, 1280),
        efficientnet_b1=("EfficientNetB1", 240, 1280),
        efficientnet_b2=("EfficientNetB2", 260, 1408),
        efficientnet_b3=("EfficientNetB3", 300, 1536),
        efficientnet_b4=("EfficientNetB4", 380, 1792),
        efficientnet_b5=("EfficientNetB5", 456, 2048),
        efficientnet_b6=("EfficientNetB6", 528, 2304),
        efficientnet_b7=("EfficientNetB7", 600, 2560),
    ),
    **_family(
        "efficientnet_v2",
        "raw",
        (1, 5),
        efficientnet_v2_b0=("EfficientNetV2B0", 224, 1280),
        efficientnet_v2_b1=("EfficientNetV2B1", 240, 1280),
        efficientnet_v2_b2=("EfficientNetV2B2", 260, 1408),
        efficientnet_v2_b3=("EfficientNetV2B3", 300, 1536),
        efficientnet_v2_s=("EfficientNetV2S", 384, 1280),
        efficientnet_v2_m=("EfficientNetV2M", 480, 1280),
        efficientnet_v2_l=("EfficientNetV2L", 480, 1280),
    ),
    **_family(
        "inception",
        "tf",
        (1, 5),
        75,
        inception_v3=("InceptionV3", 299, 2048),
        inception_resnet_v2=("InceptionResNetV2", 299, 1536),
    ),
    **_family("mobilenet", "tf", (1, 5), mobilenet=("MobileNet", 224, 1024)),
    **_family("mobilenet_v2", "tf", (1, 5), mobilenet_v2=("MobileNetV2", 224, 1280)),
    **_family(
        "mobilenet_v3",
        "raw",
        (1, 5),
        mobilenet_v3_small=("MobileNetV3Small", 224, 576),
        mobilenet_v3_large=("MobileNetV3Large", 224, 960),
    ),
    **_family(
        "nasnet",
        "tf",
        (1, 5),
        nasnet_mobile=("NASNetMobile", 224, 1056),
        nasnet_large=("NASNetLarge", 331, 4032),
    ),
    **_family(
        "resnet",
        "caffe",
        (1, 5),
        resnet50=("ResNet50", 224, 2048),
        resnet101=("ResNet101", 224, 2048),
        resnet152=("ResNet152", 224, 2048),
    ),
    **_family(
        "resnet_v2",
        "tf",
        (1, 5),
        resnet50_v2=("ResNet50V2", 224, 2048),
        resnet101_v2=("ResNet101V2", 224, 2048),
        resnet152_v2=("ResNet152V2", 224, 2048),
    ),
    **_family(
        "vgg",
        "caffe",
        (0, 4),
        vgg16=("VGG16", 224, 512),
        vgg19=("VGG19", 224, 512),
    ),
    **_family("xception", "tf", (1, 5), 71, xception=("Xception", 299, 2048)),
}

#: backbones whose feature map is flattened rather than pooled
FLATTENED = ("vgg16", "vgg19")


def _flat_features(app: App, input_shape: tuple[int, ...]) -> int:
    # VGG: five 2x2 max-pools, floor division at each.
    return (input_shape[0] // 32) * (input_shape[1] // 32) * app.features


def application_spec(name: str) -> BackboneSpec:
    app = APPLICATIONS[name]
    mean, std = PREPROCESSING[app.mode]
    shape = (app.size, app.size, 3)
    flat = name in FLATTENED
    features = _flat_features(app, shape) if flat else app.features
    n_stages = app.strides[1] - app.strides[0] + 1
    return BackboneSpec(
        name=f"keras:{name}",
        input_kind="image",
        input_shape=shape,
        feature_size=features,
        groups=tuple((f"stage{i}", (f"stage{i}",)) for i in range(1, n_stages + 1)),
        factory=f"transferkit_keras.applications:{name}",
        weights=WeightSource(
            f"ImageNet-1k, keras.applications.{app.keras_name} (Keras's weights file)",
            "transferkit_keras.applications:_loaded_by_keras",
        ),
        loads_pretrained=True,
        mean=mean,
        std=std,
        tags=("keras.applications", "imagenet", app.family)
        + (() if app.family in ("convnext", "vgg") else ("batchnorm",)),
        description=f"keras.applications.{app.keras_name} without its top, "
        + (
            f"flattened feature map ({app.features} x (H/32) x (W/32) features)"
            if flat
            else f"global average pool ({app.features} features)"
        )
        + f"; '{app.mode}' preprocessing",
        resizable=True,
        options={"keras_application": name},
    )


def specialise(spec: BackboneSpec, input_shape: tuple[int, ...]) -> BackboneSpec:
    """Check the input size against the model's minimum; a flattened feature map's size
    follows the input size."""
    name = spec.options.get("keras_application")
    if name is None:
        return spec
    app = APPLICATIONS[name]
    if min(input_shape[:2]) < app.min_size:
        raise InputShapeError(
            f"backbone {spec.name!r} takes images of at least {app.min_size}x{app.min_size}, "
            f"got input_shape {tuple(input_shape)}"
        )
    if name in FLATTENED:
        return dataclasses.replace(spec, feature_size=_flat_features(app, input_shape))
    return spec


def _loaded_by_keras() -> Path:
    raise ConfigError("keras.applications weights are loaded by Keras itself, not from a file")


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded application weights."""
    home = os.environ.get("KERAS_HOME") or str(Path.home() / ".keras")
    return Path(home) / "models"


@contextlib.contextmanager
def _named_missing_weights(name: str) -> Iterator[None]:
    """Turn a failed download of a weights file into a WeightsError that says which
    file, where Keras looks for it and how to pass it."""
    from keras.src.utils import file_utils

    original = file_utils.get_file

    def get_file(fname=None, origin=None, *args, **kwargs):
        try:
            return original(fname, origin, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - Keras raises plain Exception on a failed fetch
            fname = fname or (origin or "").rsplit("/", 1)[-1]
            cache = keras_cache_dir()
            raise WeightsError(
                f"ImageNet weights for keras:{name}: Keras's weights file {fname!r} is not in "
                f"its download cache {str(cache)!r} and could not be downloaded from {origin} "
                f"({type(e).__name__}: {str(e)[:200]}). Copy the file to {str(cache / fname)!r}, "
                f"or pass it: tk.build('keras:{name}', ..., weights_file='path/to/{fname}'); "
                "weights=None builds the model with random weights"
            ) from None

    file_utils.get_file = get_file
    try:
        yield
    finally:
        file_utils.get_file = original


def _stage_of(layer, lo: int, hi: int, size: int) -> int | None:
    """log2 of the stride a layer works at (from its input and output sizes), or None
    where that says nothing: global/squeeze layers on 1x1 maps, vectors, stems below the
    first stage."""
    try:
        inp, out = layer.input.shape, layer.output.shape
    except (AttributeError, ValueError):
        return None
    if len(out) != 4 or len(inp) != 4 or not inp[1] or inp[1] == 1 or not out[1]:
        return None
    stride = round(math.log2(size / out[1]))
    return stride if lo <= stride <= hi else None


def build_application(
    name: str,
    input_shape: tuple[int, ...],
    pretrained: bool = False,
    weights_file: str | os.PathLike | None = None,
):
    import keras
    from keras import layers, ops

    app = APPLICATIONS[name]
    if weights_file is not None:
        if not Path(weights_file).is_file():
            raise WeightsError(f"weights_file {str(weights_file)!r} does not exist")
        weights = str(weights_file)
    else:
        weights = "imagenet" if pretrained else None
    ctor = getattr(keras.applications, app.keras_name)
    try:
        with _named_missing_weights(name):
            base = ctor(
                include_top=False,
                weights=weights,
                input_shape=tuple(input_shape),
                pooling=None if name in FLATTENED else "avg",
            )
    except ValueError as e:
        if weights_file is not None:
            raise WeightsError(
                f"weights_file {str(weights_file)!r} does not fit keras:{name}: {e}"
            ) from None
        raise InputShapeError(f"keras:{name} with input_shape {tuple(input_shape)}: {e}") from None
    lo, hi = app.strides
    stage = lo
    for layer in base.layers:
        if not layer.weights:
            continue
        stage = s if (s := _stage_of(layer, lo, hi, input_shape[0])) is not None else stage
        layer.name = f"stage{stage - lo + 1}-{layer.name}"
    inputs = keras.Input(tuple(input_shape), name="image")
    x = inputs
    if app.mode == "caffe":  # Keras's caffe preprocessing feeds BGR
        x = layers.Lambda(lambda t: ops.flip(t, axis=-1), name="rgb_to_bgr")(x)
    x = base(x)
    if name in FLATTENED:
        x = layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, x, name=name)


def _factory(name: str):
    def factory(input_shape, pretrained=False, weights_file=None):
        return build_application(name, input_shape, pretrained, weights_file)

    factory.__name__ = name
    return factory


for _name in APPLICATIONS:
    globals()[_name] = _factory(_name)
