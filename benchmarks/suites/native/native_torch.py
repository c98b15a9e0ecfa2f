"""Native PyTorch baselines: what a PyTorch user writes for the same model and data.

The module is transferkit's own ``nn.Module`` (backbone + head), deep-copied so both
sides start from the same weights; the data is converted once up front (one NCHW
tensor, or one tokenised batch of every text), then a plain loop: forward,
``F.cross_entropy``, ``zero_grad``, ``backward``, ``torch.optim.Adam.step``.
Hugging Face encoders are torch modules and use the same loops.

Loaded by ``transferkit.bench_case`` from this file; ``BASELINES`` maps a baseline name
to a factory ``(model, x, y, lr) -> runner`` whose ``run(batches)`` does one step per
index array and waits for the last.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F


def device(model) -> str:
    return str(next(model.native.parameters()).device)


class Eager:
    description = "PyTorch eager loop: Adam, cross-entropy, data as tensors up front"
    steps_per_round = 1

    def __init__(self, model, x, y, lr: float, twin=None) -> None:
        dev = next(model.native.parameters()).device
        self.net = copy.deepcopy(model.native).to(dev).train()
        inputs = model.engine.to_input(x)  # NCHW tensor, or a dict of token tensors
        if isinstance(inputs, torch.Tensor):
            self.xs = inputs.to(dev)
        else:
            self.xs = {k: v.to(dev) for k, v in dict(inputs).items()}
        self.ys = torch.from_numpy(np.asarray(y)).to(dev)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.forward = self.net

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


BASELINES = {"eager": Eager, "compile": Compiled}
