"""Deployment formats: what a framework declares it can export (:class:`ExportFormat`)
and what every exported model computes (:class:`Serving`). ``model.export`` and
``transferkit export`` (``export.py``) use them; adapters implement
:meth:`~transferkit.framework.Framework.export` and ``run_exported``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExportFormat:
    """A deployment format a framework writes (:attr:`Framework.exports`): ``suffix`` of
    the file it writes (``""``: a directory), the modules it needs besides the framework
    (each a ``pip install 'transferkit[<extra>]'`` away), and the largest absolute
    difference from transferkit's own predictions the check after writing accepts
    (scaled by the largest output where that exceeds 1)."""

    name: str
    suffix: str
    requires: tuple[str, ...] = ()
    extra: str = "export"
    tolerance: float = 1e-4
    description: str = ""


@dataclass(frozen=True)
class Serving:
    """What an exported model computes, the same in every format: from inputs as a user
    has them (images: float32 ``(N, H, W, C)`` in [0, 1] at ``input_shape``, any ``N``;
    vectors: float32 ``(N, D)``) to ``output``: ``"probabilities"`` (softmax of a
    classifier's logits) or ``"values"`` (a regressor's outputs). Images are normalised
    inside, ``(x - mean) / std``. Text (``input_shape=(max_length,)``): int64 ``(N, L)``
    ``input_ids`` and ``attention_mask``, ``L <= max_length``, from the model's tokenizer,
    which is saved beside the export at ``<path>.tokenizer``."""

    input_kind: str
    input_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    output: str


__all__ = ["ExportFormat", "Serving"]
