"""What ``transferkit bench`` needs from a Hugging Face encoder: PyTorch's baselines and
counts (the encoder is a torch module), with text tokenised by the model's own
tokenizer as a Transformers user does, up front and padded to the longest text."""

from __future__ import annotations

from typing import Any

import torch

from transferkit_torch import baselines as torch_baselines

device_name = torch_baselines.device_name


def _tokens(model, texts: list[str], **padding: Any) -> dict[str, torch.Tensor]:
    tokenizer = model.native.backbone.tokenizer
    enc = tokenizer(
        list(texts),
        truncation=True,
        max_length=int(model.input_shape[0]),
        return_tensors="pt",
        **padding,
    )
    return dict(enc)


class Eager(torch_baselines.Eager):
    def inputs(self, model, x, dev: torch.device) -> Any:
        if model.spec.input_kind == "image":  # an image encoder: as any PyTorch model
            return super().inputs(model, x, dev)
        return {k: v.to(dev) for k, v in _tokens(model, x, padding=True).items()}


def count_macs(model) -> int:
    """MACs of one text of ``max_length`` tokens (the model's ``input_shape``) through
    encoder and head: the dense layers and the attention matrix products (an image
    encoder: of one image, as any PyTorch model)."""
    if model.spec.input_kind == "image":
        return torch_baselines.count_macs(model)
    dev = next(model.native.parameters()).device
    inputs = _tokens(model, ["a"], padding="max_length")
    return torch_baselines.forward_macs(model.native, {k: v.to(dev) for k, v in inputs.items()})
