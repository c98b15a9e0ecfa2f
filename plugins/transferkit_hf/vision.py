"""Hugging Face image encoders as transferkit backbones: ViT, DINOv2, CLIP's and SigLIP's
vision towers, ConvNeXt and Swin, loaded through Transformers' own code (``AutoModel``,
``CLIPVisionModel``/``SiglipVisionModel`` for the towers of image-text models) with
their ``AutoImageProcessor``'s preprocessing.

The processor's preprocessing becomes the backbone's: images are resized to its crop
size (or its size where it does not crop) and normalised with its mean and standard
deviation; transferkit resizes whole images, so a processor's centre crop is not
applied. Features are pooled as each family's model card prescribes (:data:`FAMILIES`).
Imports no framework at module level.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferkit import BackboneSpec
from transferkit.errors import ConfigError, WeightsError

POOLINGS = ("cls", "mean", "pooler")
PROCESSOR_FILE = "preprocessor_config.json"


@dataclass(frozen=True)
class Family:
    """How one model type is used: where its layers are, how its features are pooled,
    which modules LoRA adapts by default, and whether other input sizes are allowed."""

    #: the module list of its layer groups, under the model (Transformers' names have
    #: changed between versions: each that a version uses)
    layers: tuple[str, ...]
    pooling: str  # "cls": the first token of the last hidden state; "pooler": the
    # model's own pooled output; "mean": the average over tokens (or positions)
    lora_target: tuple[str, ...]
    resizable: bool = False
    #: the vision tower's class, for image-text models
    tower: str | None = None
    #: whether the first token is a [CLS] token (``pooling="cls"`` means something)
    cls_token: bool = True


_QV = ("query", "value", "q_proj", "v_proj")  # attention query and value projections
FAMILIES = {
    # the [CLS] token after the final layer norm (ViT's and DINOv2's cards)
    "vit": Family(("layers", "encoder.layer"), "cls", _QV),
    "dinov2": Family(("encoder.layer", "layers"), "cls", _QV, resizable=True),
    # the post-layer-norm [CLS] token CLIP projects; SigLIP's attention-pooling head
    "clip_vision_model": Family(
        ("encoder.layers", "vision_model.encoder.layers"), "pooler", _QV, tower="CLIPVisionModel"
    ),
    "siglip_vision_model": Family(
        ("encoder.layers", "vision_model.encoder.layers"),
        "pooler",
        _QV,
        tower="SiglipVisionModel",
        cls_token=False,
    ),
    # the layer-normed global average of the last stage
    "convnext": Family(
        ("encoder.stages",), "pooler", ("pwconv1", "pwconv2"), resizable=True, cls_token=False
    ),
    "swin": Family(("encoder.layers",), "pooler", _QV, cls_token=False),
}
#: image-text models whose vision tower is the backbone
TOWERS = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}


#: the model types ``hf:`` takes as image encoders
MODEL_TYPES = (*FAMILIES, *TOWERS)


def looks_like_images(config: dict) -> bool:
    """An image model's config (of any family): it sizes images, not vocabularies."""
    kind = config.get("model_type", "")
    return kind in TOWERS or "num_channels" in config or "image_size" in config


def vision_config(config: dict) -> dict | None:
    """The vision model's config (the tower's, for an image-text model), or None for a
    model that is not one of :data:`FAMILIES`."""
    kind = config.get("model_type", "")
    if kind in TOWERS:
        return {**config.get("vision_config", {}), "model_type": TOWERS[kind]}
    return config if kind in FAMILIES else None


def _need(config: dict, key: str) -> Any:
    if config.get(key) is None:
        raise ConfigError(
            f"a {config['model_type']!r} image model without {key!r} in its config.json: save "
            "its config with save_pretrained, which writes every field"
        )
    return config[key]


def _depth(config: dict) -> int:
    if "depths" in config:
        return len(config["depths"])
    return int(_need(config, "num_hidden_layers"))


def _width(config: dict) -> int:
    if config.get("hidden_sizes"):
        return int(config["hidden_sizes"][-1])
    if config["model_type"] == "swin":
        return int(_need(config, "embed_dim") * 2 ** (_depth(config) - 1))
    return int(_need(config, "hidden_size"))


def _smallest(config: dict, family: Family, size: tuple[int, int]) -> int:
    """The smallest input side: a patch (DINOv2), the total stride (ConvNeXt), or the
    processor's size for models that take no other."""
    if not family.resizable:
        return min(size)
    patch = int(config.get("patch_size", 4))
    return patch * 2 ** (_depth(config) - 1) if config["model_type"] == "convnext" else patch


def groups(config: dict) -> tuple:
    """The embeddings (with a pre-encoder norm), then each layer (or stage); the last
    group also holds what is above the encoder (final norms, pooling heads)."""
    layers, n = FAMILIES[config["model_type"]].layers, _depth(config)

    def layer(i: int) -> tuple[str, ...]:
        return tuple(f"model.{where}.{i}" for where in layers)

    embeddings = ("model.embeddings", "model.pre_layrnorm", "model.vision_model.embeddings")
    return (
        ("embeddings", (*embeddings, "model.vision_model.pre_layrnorm")),
        *((f"layer{i}", layer(i)) for i in range(n - 1)),
        (f"layer{n - 1}", (*layer(n - 1), "model")),
    )


def image_size(processor: dict, config: dict) -> tuple[int, int]:
    """The (height, width) the processor gives the model: its crop, else its size."""
    for key in ("crop_size", "size") if processor.get("do_center_crop") else ("size",):
        size = processor.get(key)
        if isinstance(size, int):
            return size, size
        if isinstance(size, dict):
            if "height" in size and "width" in size:
                return int(size["height"]), int(size["width"])
            if "shortest_edge" in size:
                return int(size["shortest_edge"]), int(size["shortest_edge"])
    side = int(config.get("image_size", 224))
    return side, side


def spec(name: str, config: dict, processor: dict, **extra: Any) -> BackboneSpec:
    config = vision_config(config)
    family = FAMILIES[config["model_type"]]
    h, w = image_size(processor, config)
    channels = int(config.get("num_channels", 3))
    normalize = processor.get("do_normalize", True)
    mean = processor.get("image_mean", (0.5,) * channels) if normalize else (0.0,) * channels
    std = processor.get("image_std", (0.5,) * channels) if normalize else (1.0,) * channels
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    options = {"pooling": family.pooling, **extra.pop("options", {})}
    return BackboneSpec(
        name=name,
        input_kind="image",
        input_shape=(h, w, channels),
        feature_size=_width(config),
        groups=groups(config),
        factory="transferkit_hf.vision:from_name",
        loads_pretrained=True,
        mean=mean,
        std=std,
        resizable=family.resizable,
        min_input_size=_smallest(config, family, (h, w)),
        lora_target=family.lora_target,
        options=options,
        **extra,
    )


def read_processor(where: Path) -> dict:
    """A local model directory's image processor settings, or an error naming the file."""
    path = where / PROCESSOR_FILE
    if not path.is_file():
        raise WeightsError(
            f"{str(where)!r} holds an image model without its image processor ({PROCESSOR_FILE} "
            "is missing): save it beside the model with "
            "AutoImageProcessor.from_pretrained(<model id>).save_pretrained(<this directory>)"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else e
        raise WeightsError(f"{str(path)!r} is not valid JSON ({why})") from None
    if not isinstance(doc, dict):
        raise WeightsError(f"{str(path)!r} is not an image processor's settings (a JSON object)")
    return doc


def _encoder_class() -> type:
    import torch
    from torch import nn

    class HFVisionEncoder(nn.Module):
        """An image model and its processor; pools its outputs into one vector."""

        def __init__(self, model: nn.Module, processor: Any, pooling: str, cls: bool) -> None:
            super().__init__()
            if pooling not in POOLINGS:
                raise ConfigError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
            if pooling == "cls" and not cls:
                raise ConfigError(
                    f"{type(model).__name__} has no [CLS] token; build with pooling='pooler' "
                    "(its own pooled output) or 'mean'"
                )
            self.model, self.processor, self.pooling = model, processor, pooling

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            out = self.model(pixel_values=pixel_values)
            if self.pooling == "pooler":
                if getattr(out, "pooler_output", None) is None:
                    raise ConfigError(
                        f"{type(self.model).__name__} has no pooled output; build with "
                        "pooling='cls' or 'mean'"
                    )
                return out.pooler_output
            return self.pool(out.last_hidden_state)

        def pool(self, hidden: torch.Tensor) -> torch.Tensor:
            """Tokens ``(N, L, D)`` or feature maps ``(N, C, H, W)`` -> ``(N, D)``."""
            if hidden.dim() == 4:
                return hidden.mean(dim=(2, 3))
            return hidden[:, 0] if self.pooling == "cls" else hidden.mean(dim=1)

    return HFVisionEncoder


def from_name(
    input_shape: tuple[int, ...],
    source: str,
    pretrained: bool = True,
    assets: Path | None = None,
    pooling: str = "cls",
) -> Any:
    """Factory of ``hf:<image model id or path>`` backbones: the model (the vision tower
    of an image-text model) and its image processor, through Transformers."""
    import transformers
    from transformers import AutoConfig, AutoImageProcessor, AutoModel
    from transformers.utils import logging

    from .encoder import loading

    logging.disable_progress_bar()
    where = str(assets if assets is not None else source)
    with loading(source, where):
        processor = AutoImageProcessor.from_pretrained(where)
        config = AutoConfig.from_pretrained(where)
        kind = TOWERS.get(config.model_type, config.model_type)
        tower = FAMILIES[kind].tower
        cls = getattr(transformers, tower) if tower else AutoModel
        if pretrained and assets is None:
            model = cls.from_pretrained(where)
        elif tower:  # randomly initialised: core loads the weights
            model = cls._from_config(getattr(config, "vision_config", config))
        else:
            model = AutoModel.from_config(config)
    return _encoder_class()(model, processor, pooling, FAMILIES[kind].cls_token)
