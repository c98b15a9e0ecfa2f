"""The reference architectures as Keras functional models. Layer names are the canonical
names with ``-`` for ``.`` (PyTorch parameter names may not contain dots there, and the
Keras torch backend registers variables by path), so ``layer1-0-conv1`` holds the
canonical ``layer1.0.conv1.weight``.

Each factory takes the input shape ``(H, W, C)`` and returns a ``keras.Model`` mapping
normalised NHWC float32 input to ``(N, feature_size)`` features. PyTorch's BatchNorm
momentum 0.1 is Keras's 0.9; wherever PyTorch pads symmetrically the padding is an
explicit ``ZeroPadding2D`` before a ``"valid"`` convolution.
"""

from __future__ import annotations

from . import import_order  # noqa: F401  (before keras: see import_order.py)

# isort: split
import keras
from keras import layers

from .efficientnet import efficientnet_lite0  # noqa: F401  (the factory lives there)
from .norm import BatchNormalization


def _bn(x, name: str):
    return BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)(x)


def _conv(x, filters: int, kernel: int, stride: int, pad: int, name: str):
    if pad:
        x = layers.ZeroPadding2D(pad, name=f"{name}-pad")(x)
    return layers.Conv2D(filters, kernel, stride, padding="valid", use_bias=False, name=name)(x)


def mlp(input_shape: tuple[int, ...]) -> keras.Model:
    """Flatten -> Dense(128) -> ReLU -> Dense(64) -> ReLU (channels-last flatten order, as
    the canonical ``fc1`` weight)."""
    inputs = keras.Input(input_shape)
    x = layers.Flatten(name="flatten")(inputs)
    x = layers.Dense(128, activation="relu", name="fc1")(x)
    x = layers.Dense(64, activation="relu", name="fc2")(x)
    return keras.Model(inputs, x, name="mlp")


def cnn(input_shape: tuple[int, ...]) -> keras.Model:
    """Four 3x3 conv-BN-ReLU stages (32, 64, 128, 128; strides 1, 2, 2, 2), global pool."""
    inputs = keras.Input(input_shape)
    x = inputs
    for i, (width, stride) in enumerate(((32, 1), (64, 2), (128, 2), (128, 2)), start=1):
        x = _conv(x, width, 3, stride, 1, f"stage{i}-conv")
        x = layers.ReLU(name=f"stage{i}-relu")(_bn(x, f"stage{i}-bn"))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, x, name="cnn")


def _basic_block(x, cin: int, cout: int, stride: int, name: str):
    out = _conv(x, cout, 3, stride, 1, f"{name}-conv1")
    out = layers.ReLU(name=f"{name}-relu1")(_bn(out, f"{name}-bn1"))
    out = _bn(_conv(out, cout, 3, 1, 1, f"{name}-conv2"), f"{name}-bn2")
    identity = x
    if stride != 1 or cin != cout:
        identity = _bn(_conv(x, cout, 1, stride, 0, f"{name}-downsample-0"), f"{name}-downsample-1")
    return layers.ReLU(name=f"{name}-relu2")(layers.Add(name=f"{name}-add")([out, identity]))


def resnet18(input_shape: tuple[int, ...]) -> keras.Model:
    """ResNet-18 with torchvision's names, without ``fc``: 512 features."""
    inputs = keras.Input(input_shape)
    x = _conv(inputs, 64, 7, 2, 3, "conv1")
    x = layers.ReLU(name="relu")(_bn(x, "bn1"))
    # Zero padding is the same as PyTorch's -inf padding here: inputs are >= 0 after ReLU.
    x = layers.ZeroPadding2D(1, name="maxpool-pad")(x)
    x = layers.MaxPooling2D(3, 2, name="maxpool")(x)
    cin = 64
    for i, (cout, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
        x = _basic_block(x, cin, cout, stride, f"layer{i}-0")
        x = _basic_block(x, cout, cout, 1, f"layer{i}-1")
        cin = cout
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, x, name="resnet18")
