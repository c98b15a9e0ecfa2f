"""PyTorch's deployment formats: ONNX (``torch.onnx.export``, run with ONNX Runtime) and
``torch.export`` programs (``.pt2``, ``torch.export.save``).

Both export :class:`ServingModule`: the model's own ``nn.Module`` wrapped so that it
computes what :class:`~transferkit.formats.Serving` says (inputs as a user has them,
normalised inside; probabilities or values out), on the CPU, in inference mode, with a
dynamic batch size.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferkit.errors import ConfigError
from transferkit.formats import Serving

#: the batch size the export is traced with: neither 1 nor core's check batch (3), so a
#: batch size specialised into the graph by mistake fails the check after writing
TRACE_BATCH = 2
INPUT_NAME = "input"
OUTPUT_NAME = "output"


class ServingModule(nn.Module):
    """``net`` (normalised NCHW float32 -> logits or values) as :class:`Serving` says:
    float32 ``(N, H, W, C)`` images in [0, 1] (normalised here, then made NCHW) or
    ``(N, D)`` vectors in; softmax probabilities (``output="probabilities"``) or raw
    values (``"values"``) out."""

    def __init__(self, net: nn.Module, serving: Serving) -> None:
        super().__init__()
        if serving.output not in ("probabilities", "values"):
            raise ConfigError(f"unknown serving output {serving.output!r}")
        if serving.input_kind not in ("image", "vector"):
            raise ConfigError(f"{serving.input_kind!r} inputs cannot be exported")
        self.net = net
        self.image = serving.input_kind == "image"
        self.probabilities = serving.output == "probabilities"
        self.register_buffer("mean", torch.tensor(serving.mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(serving.std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.image:
            # the same arithmetic as transferkit's own preparation, in float32
            x = ((x - self.mean) / self.std).permute(0, 3, 1, 2).contiguous()
        y = self.net(x)
        return torch.softmax(y, dim=1) if self.probabilities else y


@contextlib.contextmanager
def _cpu_eval(native: nn.Module) -> Iterator[nn.Module]:
    """``native`` on the CPU in inference mode, leaving the user's module as it was:
    a CPU copy when it lives on another device, otherwise the module itself, whose
    per-module train/eval flags are restored afterwards."""
    if not _on_cpu(native):
        # copy on the CPU, not on the device: a copy of a large model may not fit there
        memo: dict[int, Any] = {id(b): b.detach().cpu() for b in native.buffers()}
        memo.update({id(p): nn.Parameter(p.detach().cpu(), False) for p in native.parameters()})
        net = copy.deepcopy(native, memo)
        net.eval()
        yield net
        return
    modes = [(m, m.training) for m in native.modules()]
    native.eval()
    try:
        yield native
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' own noise, not errors: torch.onnx's registry warns about
    each torchvision operator it skips when torchvision is not installed, and torch's
    pytree code raises a FutureWarning about itself (``LeafSpec``) while exporting."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def _on_cpu(module: nn.Module) -> bool:
    return all(t.device.type == "cpu" for t in (*module.parameters(), *module.buffers()))


def _example(serving: Serving) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand((TRACE_BATCH, *serving.input_shape), generator=g, dtype=torch.float32)


def _dynamic_batch() -> tuple[dict[int, Any]]:
    return ({0: torch.export.Dim("batch", min=1)},)


def write(
    wrapper: nn.Module,
    example: tuple[torch.Tensor, ...],
    dynamic: tuple[dict[int, Any], ...],
    names: list[str],
    path: Path,
    fmt: str,
) -> None:
    """Export ``wrapper`` (in inference mode, on the CPU) traced on ``example`` with the
    ``dynamic`` dimensions, its inputs named ``names``, as ``fmt`` to ``path``."""
    with _quiet():
        if fmt == "onnx":
            # external_data=False: one self-contained file (weights inside; < 2 GB)
            program = torch.onnx.export(
                wrapper,
                example,
                dynamo=True,
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic,
                external_data=False,
                verbose=False,
            )
            program.save(str(path), external_data=False)
        elif fmt == "torch-export":
            ep = torch.export.export(wrapper, example, dynamic_shapes=dynamic)
            # a file object: torch.export.save warns on file names not ending in .pt2
            with open(path, "wb") as f:
                torch.export.save(ep, f)
        else:
            raise ConfigError(f"the torch framework exports no format {fmt!r}")


def export(model: Any, path: Path, fmt: str, serving: Serving) -> None:
    """Write ``model`` (a built transferkit model of the torch framework) as ``fmt``
    (``"onnx"`` or ``"torch-export"``) to ``path``, computing ``serving``."""
    with _cpu_eval(model.engine.native) as net:
        wrapper = ServingModule(net, serving).eval()
        write(wrapper, (_example(serving),), _dynamic_batch(), [INPUT_NAME], Path(path), fmt)


def run(path: Path, fmt: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Run the export at ``path`` on named ``inputs`` with the format's own runtime: ONNX
    Runtime for ``"onnx"``, the loaded ``torch.export`` program for ``"torch-export"``."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, inputs)[0])
    if fmt == "torch-export":
        with open(path, "rb") as f, _quiet():
            program = torch.export.load(f)
        with torch.no_grad():
            args = [torch.from_numpy(a) for a in inputs.values()]
            return program.module()(*args).numpy()
    raise ConfigError(f"the torch framework exports no format {fmt!r}")


def run_exported(path: Path, fmt: str, x: np.ndarray) -> np.ndarray:
    """:func:`run` on images or vectors ``x``."""
    return run(path, fmt, {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})
