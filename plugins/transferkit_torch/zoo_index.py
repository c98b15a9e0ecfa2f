"""What ``timm:`` and ``torchvision:`` backbones are, read from the libraries themselves.

Each model is built on PyTorch's ``meta`` device (no memory, no weights, no download)
and described: its feature size (a forward pass at its input size), its layer groups
(timm's ``group_matcher(coarse=False)``, the blocks timm's layer-wise learning-rate decay
uses; torchvision's stages), its BatchNorm layers and LoRA's default targets. Pretrained
tags add their preprocessing (timm's ``pretrained_cfg``, torchvision's weights enum).

``python -m transferkit_torch.zoo_index`` writes these for every model of the installed
timm and torchvision to ``zoo_index.json``, which registration reads instead of importing
either library; a name the index lacks is described live by the same functions.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .zoo import INDEX

#: attention projections (LoRA's default for transformers): fused, then separate
_ATTENTION = (("qkv",), ("to_qkv",), ("q", "v"), ("q_proj", "v_proj"), ("query", "value"))
#: where torchvision models keep their sequence of stages or blocks
_TRUNKS = ("features", "layers", "trunk_output", "blocks", "encoder.layers")


def _prefixes(names: list[str], everything: Iterable[str]) -> list[str]:
    """The fewest module prefixes that own exactly ``names`` among ``everything``."""
    mine = set(names)
    others = [n for n in everything if n not in mine]
    out: list[str] = []
    for name in names:
        if any(name == p or name.startswith(p + ".") for p in out):
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            p = ".".join(parts[:i])
            if not any(o == p or o.startswith(p + ".") for o in others):
                out.append(p)
                break
    return out


def _group_name(prefixes: list[str], names: list[str], first: bool, taken: set[str]) -> str:
    """The module path of the prefix that owns most of the group's parameters ("stem"
    for a first group of several layers), with "_" for "."."""
    if first and len(prefixes) > 1:
        name = "stem"
    else:
        owned = [sum(n == p or n.startswith(p + ".") for n in names) for p in prefixes]
        name = prefixes[owned.index(max(owned))].replace(".", "_")
    if name == "head":  # the task head's name
        name = "neck"
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def groups_from(ordered: list[list[str]], model: nn.Module) -> list[list[Any]]:
    """Named layer groups from parameter names grouped input to output; buffers outside
    every group (a root-level buffer, say) join the last one."""
    params = [n for n, _ in model.named_parameters()]
    everything = params + [n for n, _ in model.named_buffers()]
    out: list[list[Any]] = []
    taken: set[str] = set()
    for i, names in enumerate(g for g in ordered if g):
        prefixes = _prefixes(names, params)
        out.append([_group_name(prefixes, names, i == 0, taken), prefixes])
    for name in everything:
        if not any(name == p or name.startswith(p + ".") for _, ps in out for p in ps):
            out[-1][1].append(name)
    return out


def _features(model: nn.Module, size: tuple[int, int], fallback: int) -> int:
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            return int(model.eval()(torch.empty(1, 3, *size, device=device)).shape[-1])
    except Exception:  # an operation without a meta kernel
        return int(fallback)


def _suffixes(model: nn.Module, eligible) -> list[str]:
    """For each eligible module, the shortest name suffix (whole components, one of them
    not a number) that only eligible modules end with: peft's ``target_modules``."""
    modules = [(n, m) for n, m in model.named_modules() if n]
    ok = {n for n, m in modules if eligible(m)}
    out: set[str] = set()
    for name in sorted(ok):
        parts = name.split(".")
        for i in range(len(parts) - 1, -1, -1):
            suffix = ".".join(parts[i:])
            if all(p.isdigit() for p in parts[i:]):
                continue
            hits = [n for n, _ in modules if n == suffix or n.endswith("." + suffix)]
            if all(h in ok for h in hits):
                out.add(suffix)
                break
    return sorted(out)


def _lora(model: nn.Module) -> list[str]:
    """Attention projections where the model has them (fused ``qkv``, query and value, or
    a ``nn.MultiheadAttention``), else its convolutions (but depthwise and other grouped
    ones) and linear layers: peft adapts convolutions of any kernel size."""
    linear = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    for names in _ATTENTION:
        if set(names) <= linear:
            projections = _named(model, names)
            return _suffixes(model, lambda m, p=projections: isinstance(m, nn.Linear) and m in p)
    if any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        return _suffixes(model, lambda m: isinstance(m, nn.MultiheadAttention))
    return _suffixes(
        model,
        lambda m: isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1),
    )


def _named(model: nn.Module, last: tuple[str, ...]) -> list[nn.Module]:
    return [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in last]


def _on_meta(build):
    """Built on the meta device (no memory), or on the CPU where the model's own code
    needs values while it is built."""
    try:
        with torch.device("meta"):
            return build()
    except (NotImplementedError, RuntimeError):
        return build()


def _has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# --- timm ----------------------------------------------------------------------------
def timm_model(name: str, **kwargs: Any) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


def _timm_order(model: nn.Module, classifier: list[str]) -> list[list[str]]:
    """Parameter names by timm's layer id (``group_matcher(coarse=False)``: the blocks of
    its layer-wise learning-rate decay), on the model with its classifier. The classifier
    is the new head's; what timm groups with it (ConvNeXt's ``head.norm``, say) joins the
    last block, so each block keeps timm's depth below the head."""
    from timm.models import group_parameters

    by_id = group_parameters(model, model.group_matcher(coarse=False))
    ordered = [by_id[k] for k in sorted(by_id)]
    owned = lambda n: any(n.startswith(c + ".") for c in classifier)
    for i, names in enumerate(ordered):
        if any(owned(n) for n in names):
            rest = [n for n in names if not owned(n)]
            ordered[i] = []
            if rest:
                ordered[max(i - 1, 0)] += rest
    return [g for g in ordered if g]


def timm_arch(arch: str) -> dict[str, Any]:
    """One timm architecture: feature size, groups, BatchNorm, LoRA targets, strides."""
    import timm

    model = _on_meta(lambda: timm.create_model(arch, pretrained=False))
    cfg = model.pretrained_cfg
    classifier = cfg.get("classifier") or "head"
    classifier = [classifier] if isinstance(classifier, str) else list(classifier)
    ordered = _timm_order(model, classifier) if hasattr(model, "group_matcher") else None
    try:
        model.reset_classifier(0)  # as create_model(..., num_classes=0)
    except (AttributeError, TypeError, NotImplementedError):
        model = _on_meta(lambda: timm_model(arch))
    size = tuple(cfg.get("input_size", (3, 224, 224))[1:])
    fallback = getattr(model, "head_hidden_size", None) or model.num_features
    present = {n for n, _ in model.named_parameters()}
    if ordered is not None:
        ordered = [[n for n in g if n in present] for g in ordered]
    else:
        ordered = _torchvision_order(model)
    info = getattr(model, "feature_info", None) or [{}]
    return {
        "features": _features(model, size, fallback),
        "groups": groups_from(ordered, model),
        "batchnorm": _has_bn(model),
        "lora": _lora(model),
        "stride": int(info[-1].get("reduction", 32)) if isinstance(info, list) else 32,
        "module": model.__class__.__module__.rsplit(".", 1)[-1],
    }


def timm_weights(name: str) -> dict[str, Any]:
    """One timm name (an architecture, its default tag, or ``arch.tag``): preprocessing
    and where its pretrained weights come from."""
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch, tag = split_model_name_tag(name)
    cfg = get_pretrained_cfg(name if tag else arch)
    cfg = cfg.to_dict() if cfg is not None else {}
    classifier = cfg.get("classifier") or "head"
    return {
        "arch": arch,
        "tag": cfg.get("tag") or tag or None,
        "input": list(cfg.get("input_size", (3, 224, 224))),
        "fixed": bool(cfg.get("fixed_input_size", False)),
        "mean": list(cfg.get("mean", (0.485, 0.456, 0.406))),
        "std": list(cfg.get("std", (0.229, 0.224, 0.225))),
        "interpolation": cfg.get("interpolation", "bilinear"),
        "crop_pct": cfg.get("crop_pct", 0.875),
        "hub": cfg.get("hf_hub_id") or None,
        "url": cfg.get("url") or None,
        "classifier": [classifier] if isinstance(classifier, str) else list(classifier),
        "license": cfg.get("license"),
    }


def timm_names() -> list[str]:
    """Every architecture and every pretrained ``arch.tag`` of the installed timm."""
    import timm

    return sorted(set(timm.list_models()) | set(timm.list_models(pretrained=True)))


# --- torchvision -----------------------------------------------------------------------
def _strip_classifier(model: nn.Module, num_classes: int) -> tuple[str, int]:
    """Replace the last layer that gives ``num_classes`` outputs with an identity; returns
    its name and its number of inputs."""
    last = None
    for name, m in model.named_modules():
        if (isinstance(m, nn.Linear) and m.out_features == num_classes) or (
            isinstance(m, nn.Conv2d) and m.out_channels == num_classes
        ):
            last = name
    if last is None:
        raise ValueError(f"no layer with {num_classes} outputs")
    layer = model.get_submodule(last)
    parent, _, child = last.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
    return last, int(getattr(layer, "in_features", getattr(layer, "in_channels", 0)))


def torchvision_model(
    name: str, weights: Any = None, image_size: int | None = None
) -> tuple[nn.Module, str, int]:
    """A torchvision classification model without its classifier, the classifier's name
    and its number of inputs (auxiliary classifiers are left out; inputs are normalised
    as for the pretrained weights). ``image_size``: the side a randomly initialised ViT
    takes (the pretrained ones take their weights')."""
    from torchvision import models

    kwargs: dict[str, Any] = {}
    if name in ("googlenet", "inception_v3") and weights is None:  # as the pretrained ones
        kwargs = {"aux_logits": False, "transform_input": True, "init_weights": True}
    if name.startswith("vit_") and weights is None and image_size is not None:
        kwargs["image_size"] = image_size
    model = models.get_model(name, weights=weights, **kwargs)
    if getattr(model, "AuxLogits", None) is not None:  # Inception v3 keeps it when pretrained
        model.aux_logits, model.AuxLogits = False, None
    classes = len(weights.meta["categories"]) if weights is not None else 1000
    return model, *_strip_classifier(model, classes)


def _torchvision_order(model: nn.Module) -> list[list[str]]:
    """Parameter names by stage: what comes before the model's trunk (the stem), each
    stage or block of the trunk, and the rest with the last. Without a trunk, each
    top-level module that holds modules, leading single layers forming the stem."""
    params = [n for n, _ in model.named_parameters()]
    trunk = next((t for t in _TRUNKS if _get(model, t) is not None), None)
    if trunk is not None:
        units = [f"{trunk}.{n}" for n, m in _get(model, trunk).named_children() if _params(m)]
    else:
        units = [n for n, m in model.named_children() if _params(m) and list(m.children())]
    ordered: list[list[str]] = [[] for _ in units]
    stem: list[str] = []
    for p in params:
        hit = next((i for i, u in enumerate(units) if p.startswith(u + ".")), None)
        if hit is not None:
            ordered[hit].append(p)
        elif not any(ordered):
            stem.append(p)
        else:
            ordered[-1].append(p)
    return [stem, *ordered] if stem else ordered


def _get(model: nn.Module, path: str) -> nn.Module | None:
    try:
        m = model.get_submodule(path)
    except AttributeError:
        return None
    return m if len(list(m.children())) > 1 else None


def _params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def torchvision_arch(name: str) -> dict[str, Any]:
    size = torchvision_weights(name)["input"][1:]
    model, classifier, width = _on_meta(lambda: torchvision_model(name, image_size=size[0]))
    return {
        "features": _features(model, tuple(size), width),
        "groups": groups_from(_torchvision_order(model), model),
        "batchnorm": _has_bn(model),
        "lora": _lora(model),
        "classifier": classifier,
        "module": model.__class__.__module__.rsplit(".", 1)[-1],
    }


def torchvision_weights(name: str) -> dict[str, Any]:
    """``name`` (its default weights) or ``name.ENUM_ENTRY``: preprocessing and file."""
    from torchvision import models

    arch, _, entry = name.partition(".")
    if arch not in models.list_models(module=models):  # detection, video, ...: not offered
        raise KeyError(f"torchvision has no classification model {arch!r}")
    enum = models.get_model_weights(arch)
    weights = enum[entry] if entry else enum.DEFAULT
    t = weights.transforms()
    crop = int(t.crop_size[0])
    return {
        "arch": arch,
        "tag": weights.name,
        "input": [3, crop, crop],
        "resize": int(t.resize_size[0]),
        "mean": [float(v) for v in t.mean],
        "std": [float(v) for v in t.std],
        "interpolation": t.interpolation.value,
        "url": weights.url,
        "min_size": list(weights.meta.get("min_size", (1, 1))),
    }


def torchvision_names() -> list[str]:
    from torchvision import models

    names = []
    for arch in models.list_models(module=models):
        names += [arch, *(f"{arch}.{w.name}" for w in models.get_model_weights(arch))]
    return sorted(names)


# --- the index -----------------------------------------------------------------------
def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def _entries(names: list[str], arch_of, weights_of) -> tuple[dict, dict, list[str]]:
    archs: dict[str, Any] = {}
    models: dict[str, Any] = {}
    failed = []
    for name in names:
        try:
            w = weights_of(name)
            if w["arch"] not in archs:
                archs[w["arch"]] = arch_of(w["arch"])
            models[name] = w
        except Exception as e:  # recorded and reported: the index says what it lacks
            failed.append(f"{name}: {type(e).__name__}: {str(e)[:200]}")
    return archs, models, failed


def write_index(path: Path = INDEX) -> dict[str, Any]:
    timm_archs, timm_models, timm_failed = _entries(timm_names(), timm_arch, timm_weights)
    tv_archs, tv_models, tv_failed = _entries(
        torchvision_names(), torchvision_arch, torchvision_weights
    )
    index = {
        "timm": {"version": _version("timm"), "archs": timm_archs, "models": timm_models},
        "torchvision": {
            "version": _version("torchvision"),
            "archs": tv_archs,
            "models": tv_models,
        },
    }
    path.write_text(json.dumps(index, separators=(",", ":"), sort_keys=True))
    for line in timm_failed + tv_failed:
        print("left out:", line, file=sys.stderr)
    return index


if __name__ == "__main__":
    written = write_index(Path(sys.argv[1]) if len(sys.argv) > 1 else INDEX)
    print(
        f"{len(written['timm']['models'])} timm and {len(written['torchvision']['models'])} "
        "torchvision names"
    )
