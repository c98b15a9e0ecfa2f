"""Pretrained weights that ship inside transferkit, framework-neutral.

``cnn.safetensors`` and ``mlp.safetensors`` are made by ``transferkit pretrain``
(trained on the digits 0-4 source task, deterministically) and loaded unchanged by
every framework's realisation of those architectures.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import WeightsError

HERE = Path(__file__).parent


def shipped(arch: str) -> Path:
    """Path of a shipped pretrained file, e.g. ``shipped("cnn")``."""
    path = HERE / f"{arch}.safetensors"
    if not path.is_file():
        raise WeightsError(
            f"the pretrained weights file {str(path)!r} is missing from this installation; "
            f"make it with `transferkit pretrain {arch}` or pass weights=None"
        )
    return path


def cnn() -> Path:
    return shipped("cnn")


def mlp() -> Path:
    return shipped("mlp")


def cache_dir() -> Path:
    """Where converted weights are kept: ``$TRANSFERKIT_HOME`` or ``~/.cache/transferkit``."""
    root = os.environ.get("TRANSFERKIT_HOME") or Path.home() / ".cache" / "transferkit"
    return Path(root)
