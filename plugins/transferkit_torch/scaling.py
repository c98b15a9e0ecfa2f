"""Precision, multi-process data parallel and compiled steps on PyTorch's own machinery:
``torch.autocast`` with ``torch.amp.GradScaler`` for float16, ``torch.distributed``
with ``DistributedDataParallel`` in processes started by ``torchrun``, ``torch.compile``.
The Hugging Face adapter trains through the same code."""

from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
import torch
from torch import nn

from transferkit.errors import ConfigError

#: transferkit's precision -> the autocast dtype (None: float32 throughout)
AUTOCAST = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def check_precision(precision: str, device: torch.device) -> torch.dtype | None:
    dtype = AUTOCAST[precision]
    if dtype is not None and not torch.amp.is_autocast_available(device.type):
        raise ConfigError(
            f"precision={precision!r}: PyTorch has no autocast on {device.type}; use precision='32'"
        )
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"precision='bf16-mixed': {torch.cuda.get_device_name(device)} has no bfloat16; "
            "use precision='16-mixed'"
        )
    return dtype


def join(device: torch.device, timeout: float) -> tuple[torch.device, int, int]:
    """Join the process group ``torchrun`` set up (gloo on the CPU, NCCL on CUDA, one
    GPU per process by ``LOCAL_RANK``); returns this process's device, rank and world."""
    import torch.distributed as dist

    if not dist.is_available():
        raise ConfigError("strategy='ddp': this PyTorch is built without torch.distributed")
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise ConfigError(
                "strategy='ddp' runs in processes started by torchrun: `transferkit fit ... "
                "--nproc N`, or `torchrun --nproc_per_node N your_script.py`"
            )
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if local >= torch.cuda.device_count():
                raise ConfigError(
                    f"strategy='ddp' runs one process per GPU, and this machine has "
                    f"{torch.cuda.device_count()}: start at most that many processes, or "
                    "build with device='cpu' (gloo)"
                )
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    return device, dist.get_rank(), dist.get_world_size()


def reached(out: torch.Tensor) -> set[int]:
    """``id`` of every leaf tensor (parameter) the autograd graph of ``out`` reaches."""
    seen, found, stack = set(), set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            found.add(id(variable))
        stack.extend(f for f, _ in node.next_functions)
    return found


def wrap(module: nn.Module, device: torch.device, find_unused: bool) -> nn.Module:
    """``module`` under DistributedDataParallel (its trainable parameters as they are now);
    ``find_unused``: some of them take no part in the loss."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather(rows: np.ndarray, device: torch.device) -> np.ndarray:
    """Every process's ``rows`` concatenated in rank order (lengths may differ: padded
    to the longest for the collective, then cut back)."""
    import torch.distributed as dist

    world = dist.get_world_size()
    n = torch.tensor([len(rows)], device=device)
    lengths = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(lengths, n)
    longest = max(int(k) for k in lengths)
    mine = torch.zeros((longest, *rows.shape[1:]), dtype=torch.float32, device=device)
    mine[: len(rows)] = torch.from_numpy(np.ascontiguousarray(rows, np.float32))
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine)
    return np.concatenate([p[: int(k)].cpu().numpy() for p, k in zip(parts, lengths, strict=True)])


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()
