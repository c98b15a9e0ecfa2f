"""transferkit's PyTorch adapter, registered through the ``transferkit`` entry point.

Importing this module imports no torch: the framework and the backbones are
registered as metadata; torch is imported when a model is built. It also registers the
``timm:`` and ``torchvision:`` model zoos (:mod:`transferkit_torch.zoo`).
"""

from __future__ import annotations

import sys

from transferkit import hookimpl
from transferkit.formats import ExportFormat
from transferkit.framework import Baseline, BuildOption, Framework
from transferkit.reference import REFERENCE, reference_spec

#: the formats PyTorch's machinery writes (the Hugging Face adapter writes them too)
ONNX = ExportFormat(
    "onnx",
    ".onnx",
    requires=("onnx", "onnxscript", "onnxruntime"),
    tolerance=1e-4,
    description="ONNX through torch.onnx.export, checked with ONNX Runtime",
)
TORCH_EXPORT = ExportFormat(
    "torch-export", ".pt2", tolerance=1e-5, description="a torch.export program (torch.export.save)"
)


class TorchFramework(Framework):
    """PyTorch (eager). Backbone factories receive ``input_shape=(H, W, C)`` (and, where
    the spec ``loads_pretrained``, ``pretrained=``, ``assets=`` and the spec's options) and
    return an ``nn.Module`` mapping normalised NCHW input to ``(N, feature_size)``
    features."""

    name = "torch"
    extra = "torch"
    requires = ("torch",)
    description = "PyTorch, eager"
    reference = True  # canonical names and layouts are PyTorch's
    baselines = (
        Baseline("eager", "transferkit_torch.baselines:Eager"),
        Baseline("compile", "transferkit_torch.baselines:Compiled", isolated=True),
    )
    exports = (ONNX, TORCH_EXPORT)
    options = (
        BuildOption(
            "compile", (bool,), False, "compile training and inference steps (torch.compile)"
        ),
    )
    precisions = ("32", "bf16-mixed", "16-mixed")
    strategies = ("ddp",)
    peft_kinds = ("lora",)

    def launcher(self, nproc):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone"] + [
            "--nproc_per_node",
            str(nproc),
            "-m",
            "transferkit",
        ]

    def device_name(self, model):
        from .baselines import device_name

        return device_name(model)

    def count_macs(self, model):
        from .baselines import count_macs

        return count_macs(model)

    def export(self, model, path, fmt, serving):
        from .export import export

        export(model, path, fmt, serving)

    def run_exported(self, path, fmt, x, serving=None):
        from .export import run_exported

        return run_exported(path, fmt, x)

    def build(self, spec, head, input_shape, seed=0, **options):
        from .engine import build_engine

        return build_engine(spec, head, input_shape, seed, **options)


@hookimpl
def transferkit_register_frameworks(register):
    from .zoo import TimmFramework, TorchvisionFramework

    register(TorchFramework())
    register(TimmFramework())
    register(TorchvisionFramework())


@hookimpl
def transferkit_register_backbones(register):
    from .zoo import indexed

    for arch in REFERENCE:
        register(reference_spec("torch", arch, f"transferkit_torch.architectures:{arch}"))
    for library in ("timm", "torchvision"):  # from the index: neither is imported
        for spec in indexed(library):
            register(spec)
