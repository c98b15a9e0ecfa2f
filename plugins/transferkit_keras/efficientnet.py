"""EfficientNet-Lite0 backbone as a Keras functional model, with the canonical names of
the ImageNet checkpoint (``_conv_stem``, ``_blocks-N-_depthwise_conv``, ...), so the same
canonical safetensors file loads here, in PyTorch and in Flax.

Keras's ``padding="same"`` is TensorFlow's (uneven on stride-2 layers), which is what the
weights were trained with.
"""

from __future__ import annotations

from . import import_order  # noqa: F401  (before keras: see import_order.py)

# isort: split
import keras
from keras import layers

from transferkit.reference import LITE0_BLOCKS

from .norm import BatchNormalization

# PyTorch momentum 0.01 (weight of the new statistic) is Keras momentum 0.99.
BN_MOMENTUM = 0.99
BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


def _conv(x, filters: int, kernel: int, name: str, stride: int = 1):
    return layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=name)(x)


def _bn(x, name: str):
    return BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPS, name=name)(x)


def _relu6(x, name: str):
    return layers.ReLU(max_value=6.0, name=name)(x)


def _mbconv(x, cin: int, cout: int, expand: int, kernel: int, stride: int, name: str):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 linear projection."""
    y = x
    if expand != 1:
        y = _relu6(
            _bn(_conv(x, cin * expand, 1, f"{name}-_expand_conv"), f"{name}-_bn0"), f"{name}-relu0"
        )
    y = layers.DepthwiseConv2D(
        kernel, stride, padding="same", use_bias=False, name=f"{name}-_depthwise_conv"
    )(y)
    y = _relu6(_bn(y, f"{name}-_bn1"), f"{name}-relu1")
    y = _bn(_conv(y, cout, 1, f"{name}-_project_conv"), f"{name}-_bn2")
    # Drop-connect is a training-time regulariser of the original recipe; it is omitted
    # here, as in the PyTorch and Flax realisations, which is exact at inference.
    if stride == 1 and cin == cout:
        y = layers.Add(name=f"{name}-add")([y, x])
    return y


def efficientnet_lite0(input_shape: tuple[int, ...]) -> keras.Model:
    """Normalised NHWC input -> (N, 1280) features."""
    inputs = keras.Input(input_shape)
    x = _relu6(_bn(_conv(inputs, STEM_CHANNELS, 3, "_conv_stem", 2), "_bn0"), "stem-relu")
    cin, index = STEM_CHANNELS, 0
    for expand, cout, repeats, kernel, stride in LITE0_BLOCKS:
        for i in range(repeats):
            x = _mbconv(x, cin, cout, expand, kernel, stride if i == 0 else 1, f"_blocks-{index}")
            cin, index = cout, index + 1
    x = _relu6(_bn(_conv(x, HEAD_CHANNELS, 1, "_conv_head"), "_bn1"), "head-relu")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, x, name="efficientnet_lite0")
