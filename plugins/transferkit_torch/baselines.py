"""What ``transferkit bench`` needs from PyTorch: native baselines, device names, MACs.

The baselines are what a PyTorch user writes for the same model and data: transferkit's
own ``nn.Module`` (backbone + head, ``model.native``) deep-copied, so both sides start
from the same weights; the data converted once up front (one NCHW tensor); then a plain
loop: forward, ``F.cross_entropy``, ``zero_grad``, ``backward``,
``torch.optim.Adam.step``. The Hugging Face adapter reuses them with tokenised text.
Each class is a :class:`transferkit.framework.Baseline` factory.
"""

from __future__ import annotations

from . import import_order  # noqa: F401  (before torch: see import_order.py)

# isort: split
import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def device_name(model) -> str:
    return str(next(model.native.parameters()).device)


def _device(model) -> torch.device:
    return next(model.native.parameters()).device


class Eager:
    description = "PyTorch eager loop: Adam, cross-entropy, data as tensors up front"
    steps_per_round = 1

    def __init__(self, model, x, y, lr: float, twin=None) -> None:
        dev = _device(model)
        self.net = copy.deepcopy(model.native).to(dev).train()
        self.xs = self.inputs(model, x, dev)
        self.ys = torch.from_numpy(np.asarray(y)).to(dev)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.forward = self.net

    def inputs(self, model, x, dev: torch.device) -> Any:
        """Prepared images ``(N, H, W, C)`` as one NCHW tensor (vectors as they are)."""
        t = torch.from_numpy(np.asarray(x, dtype=np.float32))
        return (t.permute(0, 3, 1, 2) if t.ndim == 4 else t).contiguous().to(dev)

    def _x(self, idx: torch.Tensor):
        if isinstance(self.xs, torch.Tensor):
            return self.xs[idx]
        return {k: v[idx] for k, v in self.xs.items()}

    def step(self, idx: np.ndarray) -> torch.Tensor:
        i = torch.from_numpy(idx)
        loss = F.cross_entropy(self.forward(self._x(i)), self.ys[i])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def run(self, batches: list[np.ndarray]) -> None:
        loss = None
        for idx in batches:
            loss = self.step(idx)
        float(loss)  # waits for the device


class Compiled(Eager):
    description = "PyTorch torch.compile(model) (inductor), otherwise the eager loop"

    def __init__(self, model, x, y, lr: float, twin=None) -> None:
        super().__init__(model, x, y, lr, twin)
        self.forward = torch.compile(self.net)


def forward_macs(net: torch.nn.Module, inputs: Any) -> int:
    """Multiply-accumulates of one inference-mode forward pass, counted by PyTorch's
    ``FlopCounterMode`` (convolutions, matrix products; attention through the math
    kernel, whose matrix products it sees); every module's mode is restored after."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    modes = {m: m.training for m in net.modules()}
    net.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), counter:
            net(inputs)
    finally:
        for m, training in modes.items():
            m.training = training
    return counter.get_total_flops() // 2


def count_macs(model) -> int:
    """MACs of one example through backbone and head at the model's input shape."""
    shape = model.input_shape
    if len(shape) == 3:  # (H, W, C) -> NCHW
        shape = (shape[2], shape[0], shape[1])
    return forward_macs(model.native, torch.zeros((1, *shape), device=_device(model)))
