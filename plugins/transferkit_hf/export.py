"""Hugging Face encoders' deployment formats: ONNX and ``torch.export`` programs, written
by the PyTorch adapter's machinery from a module that takes token ids (image encoders:
from images, as every PyTorch image model).

The exported graph takes ``input_ids`` and ``attention_mask`` (int64 ``(N, L)``, any
``N``, ``L`` up to the model's ``max_length``) as the tokenizer saved beside the export
makes them, pools and applies the head, and returns probabilities (or values).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferkit.errors import ConfigError
from transferkit.export import tokenizer_path
from transferkit.formats import Serving
from transferkit_torch import export as torch_export
from transferkit_torch.export import _cpu_eval, run, write

NAMES = ["input_ids", "attention_mask"]
#: texts of different lengths the export is traced with (2: not core's check batch)
TRACE_TEXTS = ["a short example", "a somewhat longer example text to trace the graph with"]


class TextServing(nn.Module):
    """The model (``HFEncoder`` backbone + head) from token ids to what ``Serving`` says."""

    def __init__(self, net: nn.Module, serving: Serving) -> None:
        super().__init__()
        if serving.input_kind != "text":
            raise ConfigError(f"{serving.input_kind!r} inputs are not text")
        self.net = net
        self.probabilities = serving.output == "probabilities"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        y = self.net({"input_ids": input_ids, "attention_mask": attention_mask})
        return torch.softmax(y, dim=1) if self.probabilities else y


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    enc = tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np"
    )
    return {k: np.ascontiguousarray(enc[k], dtype=np.int64) for k in NAMES}


def export(model: Any, path: Path, fmt: str, serving: Serving) -> None:
    if serving.input_kind == "image":  # an image encoder: as any PyTorch image model
        return torch_export.export(model, path, fmt, serving)
    max_length = int(serving.input_shape[0])
    example = tokenize(model.engine.backbone.tokenizer, TRACE_TEXTS, max_length)
    tokens = torch.export.Dim("tokens", min=2, max=max_length)
    batch = torch.export.Dim("batch", min=1)
    dynamic = ({0: batch, 1: tokens}, {0: batch, 1: tokens})
    with _cpu_eval(model.engine.native) as net:
        wrapper = TextServing(net, serving).eval()
        args = tuple(torch.from_numpy(example[k]) for k in NAMES)
        write(wrapper, args, dynamic, NAMES, Path(path), fmt)


def run_exported(path: Path, fmt: str, texts: list[str], serving: Serving) -> np.ndarray:
    """Tokenize as a user would, with the tokenizer saved beside the export, and run it
    (images go in as they are)."""
    if serving.input_kind == "image":
        return torch_export.run_exported(path, fmt, texts)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path(Path(path))))
    return run(path, fmt, tokenize(tokenizer, texts, int(serving.input_shape[0])))
