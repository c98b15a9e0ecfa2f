"""Hugging Face models run as PyTorch models: the PyTorch engine with tokenisation in
the pipeline (truncation to ``max_length``, dynamic padding per batch) and a feature
memo so a frozen encoder embeds each text once."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit import BackboneSpec, Head
from transferkit.errors import ConfigError, TruncationWarning, warn
from transferkit_torch.engine import TorchEngine

from .encoder import HFEncoder


class HFEngine(TorchEngine):
    def __init__(
        self,
        spec: BackboneSpec,
        backbone: HFEncoder,
        head: Head,
        max_length: int,
        device: str = "auto",
    ) -> None:
        super().__init__(spec, backbone, head, device)
        self.max_length = max_length
        self._warned = False
        self._memo: dict[str, np.ndarray] = {}

    def to_input(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.backbone.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        if not self._warned and any(e.overflowing for e in (enc.encodings or [])):
            warn(
                f"some texts are longer than max_length={self.max_length} tokens and were "
                "truncated (shown once); build with input_shape=(N,) to change the limit",
                TruncationWarning,
            )
            self._warned = True
        return {k: v.to(self.device, non_blocking=True) for k, v in enc.items()}

    def features(self, x: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in x if t not in self._memo))
        if missing:
            for t, f in zip(missing, super().features(missing), strict=True):
                self._memo[t] = f
        return np.stack([self._memo[t] for t in x])

    @torch.inference_mode()
    def group_features(self, x: list[str]) -> dict[str, np.ndarray]:
        # The groups are the embeddings and each encoder layer: the hidden states the
        # model returns, in order, each pooled as the features are (the last group's are
        # the features themselves).
        self._eval()
        inputs = self.to_input(x)
        out = self.backbone.model(**inputs, output_hidden_states=True)
        hidden = out.hidden_states
        names = self.spec.group_names
        if hidden is None or len(hidden) != len(names):
            raise ConfigError(
                f"group_features: {self.spec.name!r} returns "
                f"{0 if hidden is None else len(hidden)} hidden states for its {len(names)} "
                "layer groups (the embeddings, then each layer), so they cannot be matched"
            )
        mask = inputs["attention_mask"]
        states = (*hidden[:-1], out.last_hidden_state)
        return {
            g: self.backbone.pool(h, mask).float().cpu().numpy()
            for g, h in zip(names, states, strict=True)
        }

    def predict(self, x: list[str]) -> np.ndarray:
        # Inference is deterministic: reuse the memoised features of texts seen before.
        return self.head_predict(self.features(x))

    def clear_feature_memo(self) -> None:
        """Drop the memoised features (done by itself whenever the encoder changes)."""
        self._memo.clear()

    def set_weights(self, arrays: Mapping[str, np.ndarray]) -> None:
        super().set_weights(arrays)
        if any(k.startswith("backbone.") for k in arrays):
            self.clear_feature_memo()

    def add_peft(self, peft: Mapping[str, Any]) -> None:
        super().add_peft(peft)
        self.clear_feature_memo()

    def train_step(self, x: Any, y: np.ndarray, lr: float) -> Any:
        if not self.head_only:
            self.clear_feature_memo()  # the encoder (or its adapters) may change
        return super().train_step(x, y, lr)

    def save_assets(self, path: Path) -> None:
        self.backbone.tokenizer.save_pretrained(path)
        self.backbone.model.config.save_pretrained(path)

    def options(self) -> dict[str, Any]:
        return {"pooling": self.backbone.pooling, "normalize": self.backbone.normalize}


class HFVisionEngine(TorchEngine):
    """An image model of Transformers: the PyTorch engine (NCHW pixel values), with the
    layer groups' features from the hidden states the model returns."""

    @torch.inference_mode()
    def group_features(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self._eval()
        out = self.backbone.model(pixel_values=self.to_input(x), output_hidden_states=True)
        names = self.spec.group_names
        hidden = out.hidden_states
        if hidden is None or len(hidden) < len(names):
            raise ConfigError(
                f"group_features: {self.spec.name!r} returns "
                f"{0 if hidden is None else len(hidden)} hidden states for its {len(names)} "
                "layer groups (the embeddings, then each layer), so they cannot be matched"
            )
        pooled = [self.backbone.pool(h).float().cpu().numpy() for h in hidden[: len(names) - 1]]
        last = self.backbone(self.to_input(x)).float().cpu().numpy()  # the features
        return dict(zip(names, [*pooled, last], strict=True))

    def save_assets(self, path: Path) -> None:
        self.backbone.processor.save_pretrained(path)
        self.backbone.model.config.save_pretrained(path)

    def options(self) -> dict[str, Any]:
        return {"pooling": self.backbone.pooling}


def build_engine(
    spec: BackboneSpec,
    head: Head,
    input_shape: tuple[int, ...],
    seed: int,
    pretrained: bool = False,
    assets: Path | None = None,
    device: str = "auto",
    **options: Any,
) -> TorchEngine:
    torch.manual_seed(seed)
    kwargs = {**spec.options, **options}
    if spec.input_kind == "image":
        kwargs.pop("normalize", None)  # a text encoder's option
        backbone = spec.create(
            torch.nn.Module, input_shape=input_shape, pretrained=pretrained, assets=assets, **kwargs
        )
        return HFVisionEngine(spec, backbone, head, device=device)
    backbone = spec.create(
        HFEncoder, input_shape=input_shape, pretrained=pretrained, assets=assets, **kwargs
    )
    return HFEngine(spec, backbone, head, max_length=int(input_shape[0]), device=device)
