"""``tk.build``: a registered backbone with a new head, checked before any framework work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import validate
from . import weights as wio
from .catalog import BackboneSpec
from .errors import ConfigError, InputShapeError, UnknownBackboneError, WeightsError
from .heads import Classifier, Head
from .model import PRETRAINED, Model
from .plugins import registry


def _resolve_weights(
    spec: BackboneSpec, weights: Any
) -> tuple[dict[str, np.ndarray] | None, str | None]:
    if weights is None or weights is False:
        return None, None
    if weights is True or weights == PRETRAINED:
        if spec.weights is None:
            raise WeightsError(
                f"backbone {spec.name!r} has no pretrained weights; pass weights=None to "
                "train from scratch or weights='path/to/file.safetensors'"
            )
        path = spec.weights.path()
        return wio.read(path), spec.weights.description
    if isinstance(weights, (str, Path)):
        return wio.read(weights), str(weights)
    raise ConfigError(
        f"weights={weights!r}: expected 'pretrained', None, or the path of a safetensors file"
    )


def build(
    name: str,
    head: Head | None = None,
    weights: Any = PRETRAINED,
    input_shape: tuple[int, ...] | None = None,
    classes: list[str] | None = None,
    seed: int = 0,
    **options: Any,
) -> Model:
    """Build a registered backbone with a new head.

    Args:
        name: ``"framework:name"``; see :func:`list_backbones`.
        head: the new task head, e.g. ``tk.Classifier(num_classes=5)``.
        weights: ``"pretrained"`` (default), None (random initialisation, i.e. from
            scratch) or the path of a safetensors file with canonical names.
        input_shape: feed images of another size to a fully convolutional backbone,
            e.g. ``(64, 64, 3)``.
        seed: seed of the random initialisation of the head (and of the backbone when
            ``weights=None``).
        options: framework options, documented by each adapter (for example
            ``data_parallel=True`` for flax).

    Example::

        model = tk.build("torch:cnn", head=tk.Classifier(num_classes=5))
    """
    validate.string("build(name)", name)
    if ":" not in name:
        raise ConfigError(
            f"build({name!r}): backbone names are 'framework:name'"
            + _unqualified_hint(name)
            + "; run `transferkit backbones` to list them"
        )
    assets = options.pop("assets", None)  # internal: what a saved model wrote (load)
    spec = _spec(name, assets)
    if not isinstance(head, Head):
        raise ConfigError(
            f"build({name!r}) needs head=, e.g. tk.Classifier(num_classes=5) or tk.Regressor(1); "
            f"got {head!r:.80}"
        )
    seed = validate.integer("seed", seed, 0, 2**32 - 1)
    classes = _classes(classes, head)
    if not (weights is None or isinstance(weights, (bool, str, Path))):
        raise ConfigError(
            f"weights={weights!r:.60}: expected 'pretrained', None, or the path of a "
            "safetensors file"
        )
    shape = _input_shape(spec, input_shape)
    framework = registry().framework(spec.framework)
    options = framework.check_options(spec, options)
    framework.ensure_installed()
    spec = framework.specialise(spec, shape)
    if assets is not None:
        options["assets"] = assets
    if spec.loads_pretrained:  # the framework's own loading code reads the checkpoint
        options["pretrained"] = weights is True or weights == PRETRAINED
        if options["pretrained"]:
            weights = None
    arrays, origin = _resolve_weights(spec, weights)  # read before any framework import
    if spec.loads_pretrained and options["pretrained"]:
        origin = spec.weights.description if spec.weights else spec.short_name
    engine = framework.build(spec, head, shape, seed, **options)
    # The head starts from the same numbers in every framework, so that runs compare
    # frameworks, not initialisations.
    engine.set_weights(head.initial_weights(spec.feature_size, seed))
    model = Model(spec, head, framework, engine, shape, classes, origin)
    if arrays is not None:
        if any(k.startswith("backbone.") for k in arrays):
            arrays = {k[9:]: v for k, v in arrays.items() if k.startswith("backbone.")}
        expected = {k[9:]: s for k, s in engine.param_shapes().items() if k.startswith("backbone.")}
        checked = wio.match(arrays, expected, f"backbone {spec.name!r}", spec.ignore_keys)
        engine.set_weights({f"backbone.{k}": v for k, v in checked.items()})
    return model


def _spec(name: str, assets: Any = None) -> BackboneSpec:
    """A registered backbone, or one its framework resolves from the name (any Hugging
    Face model id, say)."""
    reg = registry()
    try:
        return reg.catalog.get(name)
    except UnknownBackboneError:
        fw_name, _, short = name.partition(":")
        fw = reg.frameworks.get(fw_name)
        if fw is not None and short:
            spec = fw.resolve(short, assets)
            if spec is not None:
                return spec
        raise


def _input_shape(spec: BackboneSpec, input_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    if input_shape is None:
        return spec.input_shape
    try:
        shape = validate.shape("input_shape", input_shape)
    except ConfigError as e:
        raise InputShapeError(f"backbone {spec.name!r}: {e}") from None
    if spec.input_kind == "text":
        limit = spec.max_length or 4096
        if len(shape) != 1 or shape[0] > limit:
            raise InputShapeError(
                f"backbone {spec.name!r} takes text; input_shape=(max_length,) sets the "
                f"truncation length (default {spec.input_shape[0]}, at most {limit}, the "
                f"model's position limit), got {shape}"
            )
        return shape
    if spec.input_kind != "image" or len(shape) != 3:
        if shape != spec.input_shape:
            raise InputShapeError(
                f"backbone {spec.name!r} takes input_shape {spec.input_shape}, got {shape}"
            )
        return shape
    if shape[-1] != spec.input_shape[-1]:
        raise InputShapeError(
            f"backbone {spec.name!r} takes {spec.input_shape[-1]} channels, got input_shape "
            f"{shape}; the pipeline converts grey/RGB images for you, keep C = "
            f"{spec.input_shape[-1]}"
        )
    if shape != spec.input_shape and not spec.resizable:
        raise InputShapeError(
            f"backbone {spec.name!r} only takes input_shape {spec.input_shape} (not {shape})"
        )
    if min(shape[:2]) < spec.min_input_size:
        raise InputShapeError(
            f"backbone {spec.name!r} takes images of at least {spec.min_input_size}x"
            f"{spec.min_input_size} pixels, got input_shape {shape}; the pipeline resizes "
            f"smaller images up for you, so ask for input_shape=({spec.min_input_size}, "
            f"{spec.min_input_size}, {shape[-1]}) or more"
        )
    return shape


def _classes(classes: Any, head: Head) -> list[str] | None:
    if classes is None:
        return None
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
        raise ConfigError(f"classes must be a list of class names, got {classes!r:.60}")
    names = [str(c) for c in classes]
    if isinstance(head, Classifier) and len(names) != head.num_classes:
        raise ConfigError(
            f"classes names {len(names)} classes but the head has {head.num_classes}; give "
            "one name per class"
        )
    return names


def list_backbones(
    pattern: str | None = None, framework: str | None = None, tags: tuple[str, ...] = ()
) -> list[BackboneSpec]:
    """Registered backbones from every installed plugin, filtered by a glob ``pattern``
    (on ``framework:name`` or the bare name), framework and tags. Imports no framework."""
    if pattern is not None:
        validate.string("list_backbones(pattern)", pattern)
    if framework is not None:
        validate.string("list_backbones(framework)", framework)
    if isinstance(tags, str):
        tags = (tags,)
    return registry().catalog.filter(pattern, framework, tags)


def _unqualified_hint(name: str) -> str:
    """The registered names a bare ``name`` could mean (``cnn``: ``torch:cnn``, ...)."""
    import difflib

    names = [s.name for s in registry().catalog.filter()]
    shorts = {n.partition(":")[2] for n in names}
    close = [name] if name in shorts else difflib.get_close_matches(name, shorts, n=2)
    same = [n for c in close for n in sorted(names) if n.partition(":")[2] == c]
    return f" (did you mean {', '.join(same[:6])}?)" if same else ", e.g. 'torch:cnn'"
