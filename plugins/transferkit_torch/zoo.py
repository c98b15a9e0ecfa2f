"""``timm:`` and ``torchvision:`` backbones: the model zoos PyTorch users already have.

``timm:<name>`` is any model of ``timm.list_models()`` (``timm:convnext_tiny``, or with its
pretrained tag, ``timm:resnet50.a1_in1k``), built by timm's own
``create_model(..., num_classes=0)``, so its features are timm's pooled features;
``torchvision:<name>`` any classification model of ``torchvision.models`` (``resnet50``,
or a weights entry: ``resnet50.IMAGENET1K_V1``) without its last classification layer.
Preprocessing comes from timm's ``pretrained_cfg`` or the weights enum's transforms,
layer groups from timm's ``group_matcher`` (the blocks its layer-wise learning-rate decay
uses) or torchvision's stages. Pretrained weights come through each library's own loader
and cache; ``weights=None`` is random, ``weights="file.safetensors"`` a local file with
the library's parameter names.

Listing imports neither library: what each model is comes from ``zoo_index.json``,
written by :mod:`transferkit_torch.zoo_index` from the installed versions; a name the
index lacks, or any name when another version is installed, is described live.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from transferkit import BackboneSpec
from transferkit.catalog import LayerGroup
from transferkit.errors import ConfigError, WeightsError

from . import TorchFramework

INDEX = Path(__file__).with_name("zoo_index.json")


@functools.cache
def index() -> dict[str, Any]:
    try:
        return json.loads(INDEX.read_text())
    except (OSError, ValueError):
        return {}


def _installed(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def spec(
    library: str, name: str, model: dict, arch: dict, groups: tuple | None = None
) -> BackboneSpec:
    """The spec of ``library:name`` from its index (or live) entries; ``groups``: its
    architecture's, made once for all its tags."""
    c, h, w = model["input"]
    fixed = model.get("fixed", False) or min(model.get("min_size", (1,))) >= min(h, w)
    tags = (arch["module"], *(("batchnorm",) if arch["batchnorm"] else ()))
    if library == "timm":
        tag = f", pretrained: {model['tag']}" if model.get("tag") else ""
        description = f"timm {model['arch']} ({arch['module']}){tag}"
        ignore = tuple(model["classifier"])
        smallest = arch.get("stride", 32)
    else:
        description = f"torchvision {model['arch']} ({arch['module']}), weights {model['tag']}"
        ignore = (arch["classifier"], "aux1", "aux2", "AuxLogits")  # GoogLeNet's, Inception's
        smallest = max(32, *model.get("min_size", (1,)))
    return BackboneSpec(
        name=f"{library}:{name}",
        input_kind="image",
        input_shape=(h, w, c),
        feature_size=arch["features"],
        groups=groups or tuple(LayerGroup(g, tuple(p)) for g, p in arch["groups"]),
        factory=f"transferkit_torch.zoo:{library}_factory",
        loads_pretrained=True,
        mean=tuple(model["mean"]),
        std=tuple(model["std"]),
        tags=tags,
        description=description,
        resizable=not fixed,
        ignore_keys=(*ignore, "*.num_batches_tracked"),  # in every saved state dict
        min_input_size=min(h, w) if fixed else min(smallest, h, w),
        lora_target=tuple(arch["lora"]),
        options={"source": name},
    )


@functools.cache
def indexed(library: str) -> tuple[BackboneSpec, ...]:
    """Every model of ``library`` in the index (specs are immutable: made once)."""
    part = index().get(library, {})
    archs = part.get("archs", {})
    groups = {
        a: tuple(LayerGroup(g, tuple(p)) for g, p in arch["groups"]) for a, arch in archs.items()
    }
    return tuple(
        spec(library, n, m, archs[m["arch"]], groups[m["arch"]])
        for n, m in part.get("models", {}).items()
    )


class ZooFramework(TorchFramework):
    """A PyTorch model library: its models train through the PyTorch adapter's steps."""

    reference = False  # its own names, not the reference architectures'
    extra = "zoo"
    library = ""

    def resolve(self, name: str, assets: Path | None = None) -> BackboneSpec | None:
        """A model of the installed library that the index lacks, described live."""
        if self.missing():
            return None
        try:
            return self.describe(name)
        except (KeyError, RuntimeError, ValueError):
            return None

    def describe(self, name: str) -> BackboneSpec:
        """``name`` as the installed library says it is (imports it)."""
        from . import zoo_index

        model = getattr(zoo_index, f"{self.library}_weights")(name)
        arch = getattr(zoo_index, f"{self.library}_arch")(model["arch"])
        return spec(self.library, name, model, arch)

    def indexed_here(self) -> bool:
        """Whether the index describes the installed version (local builds, ``+cpu``,
        are the same release)."""
        indexed = index().get(self.library, {}).get("version")
        return indexed is not None and indexed == (_installed(self.library) or "").split("+")[0]

    def specialise(self, spec, input_shape):
        """The indexed spec, or where another version of the library is installed, the
        model described again by it (so the head, groups and LoRA targets fit what it
        builds), or an error naming what that version has instead."""
        if self.indexed_here():
            return spec
        self.ensure_installed()
        try:
            fresh = self.describe(spec.options["source"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise ConfigError(
                f"{self.library} {_installed(self.library)} cannot build {spec.name!r} "
                f"({str(e)[:200]}); transferkit's index lists it for {self.library} "
                f"{index()[self.library]['version']}. {self.hint(spec.options['source'])}"
            ) from None
        return replace(fresh, input_shape=input_shape)

    def hint(self, name: str) -> str:
        """What the installed library has that is close to ``name``."""
        from . import zoo_index

        return f"Closest: {_closest(name, getattr(zoo_index, f'{self.library}_names')())}"


class TimmFramework(ZooFramework):
    """timm (PyTorch Image Models) on the PyTorch adapter: ``timm:<model>`` or
    ``timm:<model>.<pretrained tag>``."""

    name = "timm"
    library = "timm"
    requires = ("timm", "torch")
    description = "timm (PyTorch Image Models), through the PyTorch adapter"


class TorchvisionFramework(ZooFramework):
    """torchvision's classification models on the PyTorch adapter:
    ``torchvision:<model>`` (its default weights) or ``torchvision:<model>.<WEIGHTS>``."""

    name = "torchvision"
    library = "torchvision"
    requires = ("torchvision", "torch")
    description = "torchvision.models classification models, through the PyTorch adapter"


# --- factories (import torch and the library) -------------------------------------------
def _closest(name: str, names: list[str]) -> str:
    import difflib

    return ", ".join(difflib.get_close_matches(name, names, n=3, cutoff=0.5)) or "none"


def _offline() -> str | None:
    """The variable that says this process is offline, if one is set."""
    for v in ("HF_HUB_OFFLINE", "TRANSFERKIT_OFFLINE"):
        if os.environ.get(v, "").lower() in {"1", "true", "yes", "on"}:
            return v
    return None


def missing_weights(backbone: str, file: str, cache: str, fetch: str, why: str) -> WeightsError:
    """The error for pretrained weights that are neither cached nor downloadable."""
    return WeightsError(
        f"the pretrained weights of {backbone!r} ({file}) are not in {cache} and {why}. "
        f"Download them where there is a network ({fetch}) into that cache, or "
        f"pass a local copy: tk.build({backbone!r}, weights='<file>.safetensors', ...) "
        "(the library's parameter names; the classifier's are ignored), or "
        "weights=None for a randomly initialised model"
    )


def _timm_file(backbone: str, cfg: Any) -> tuple[bool, str, str, str]:
    """Whether timm's caches hold the pretrained weights of ``cfg``; the file, the cache
    directory, and how to fetch it."""
    import torch

    hub = getattr(cfg, "hf_hub_id", None)
    if hub:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.constants import HF_HUB_CACHE

        named = getattr(cfg, "hf_hub_filename", None)
        names = (named,) if named else ("model.safetensors", "pytorch_model.bin")
        cached = any(isinstance(try_to_load_from_cache(hub, n), str) for n in names)
        file = f"{names[0]} of the Hugging Face repo {hub}"
        return cached, file, str(HF_HUB_CACHE), f"hf download {hub} {names[0]}"
    if getattr(cfg, "url", None):
        file = cfg.url.rsplit("/", 1)[-1]
        cache = os.path.join(torch.hub.get_dir(), "checkpoints")
        return os.path.isfile(os.path.join(cache, file)), file, cache, cfg.url
    raise WeightsError(
        f"{backbone!r} has no pretrained weights in timm; build it with weights=None, or "
        "pick a pretrained tag (`transferkit backbones 'timm:<model>.*'`)"
    )


def _fetched(backbone: str, where: tuple[bool, str, str, str], create) -> Any:
    """``create()``, which reads pretrained weights through the library's own loader;
    weights that are not cached and cannot be downloaded are a :class:`WeightsError`."""
    cached, file, cache, fetch = where
    if not cached and _offline():
        raise missing_weights(backbone, file, cache, fetch, f"{_offline()} is set")
    try:
        return create()
    except (ConfigError, TypeError, ValueError):
        raise
    except Exception as e:  # no network, a proxy's refusal, a partial download
        if cached:
            raise
        why = f"downloading them failed ({type(e).__name__}: {str(e)[:200]})"
        raise missing_weights(backbone, file, cache, fetch, why) from None


def timm_factory(
    input_shape: tuple[int, ...], source: str, pretrained: bool = True, assets: Any = None
) -> Any:
    """``timm.create_model(source, pretrained=..., num_classes=0)``: pooled features."""
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch, tag = split_model_name_tag(source)
    if not timm.is_model(arch):
        raise ConfigError(
            f"timm {timm.__version__} has no model {arch!r} (closest: "
            f"{_closest(arch, timm.list_models())}); a newer timm may: pip install -U timm"
        )
    try:
        cfg = get_pretrained_cfg(source)
    except RuntimeError:  # an invalid tag
        cfg = None
    if tag and cfg is None:
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
        raise ConfigError(
            f"timm {timm.__version__} has no pretrained tag {tag!r} for {arch!r}; its tags: "
            f"{', '.join(tags) or 'none'}"
        )

    def create() -> Any:
        return timm.create_model(source, pretrained=pretrained, num_classes=0)

    if not pretrained:
        return create()
    backbone = f"timm:{source}"
    return _fetched(backbone, _timm_file(backbone, cfg), create)


def torchvision_factory(
    input_shape: tuple[int, ...], source: str, pretrained: bool = True, assets: Any = None
) -> Any:
    """The torchvision model, its weights from torchvision's loader and cache, without
    its last classification layer."""
    import torch
    from torchvision import models

    from .zoo_index import torchvision_model

    arch, _, entry = source.partition(".")
    if arch not in models.list_models(module=models):
        names = models.list_models(module=models)
        raise ConfigError(
            f"torchvision {_installed('torchvision')} has no classification model {arch!r} "
            f"(closest: {_closest(arch, names)}); a newer torchvision may"
        )
    enum = models.get_model_weights(arch)
    if entry and entry not in enum.__members__:
        raise ConfigError(
            f"torchvision's {arch!r} has no weights {entry!r}; its weights: "
            f"{', '.join(enum.__members__)}"
        )
    if not pretrained:
        return torchvision_model(arch, image_size=input_shape[0])[0]
    weights = enum[entry] if entry else enum.DEFAULT
    file = weights.url.rsplit("/", 1)[-1]
    cache = os.path.join(torch.hub.get_dir(), "checkpoints")
    where = (os.path.isfile(os.path.join(cache, file)), file, cache, weights.url)
    return _fetched(f"torchvision:{source}", where, lambda: torchvision_model(arch, weights)[0])
