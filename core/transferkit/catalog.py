"""The backbone catalog: cheap metadata for every registered backbone.

Backbones are named ``framework:name``. A registration holds what a user needs
to choose a backbone (input kind and shape, feature size, layer groups, tags,
where its pretrained weights come from) and the factory that builds it, which
runs only on build.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, UnknownBackboneError, WeightsError

INPUT_KINDS = ("image", "vector", "text")


@dataclass(frozen=True)
class LayerGroup:
    """A named group of parameters, selected by canonical-name prefixes."""

    name: str
    prefixes: tuple[str, ...]

    def owns(self, key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in self.prefixes)


@dataclass(frozen=True)
class WeightSource:
    """Where a backbone's pretrained weights come from.

    ``resolve`` is a callable (or ``"module:attr"`` path) that returns the path of a
    canonical safetensors file, or raises :class:`WeightsError` saying which file is
    missing and how to supply it.
    """

    description: str
    resolve: Callable[[], Path] | str

    def path(self) -> Path:
        return Path(_load_callable(self.resolve)())


#: the tag every backbone of an input kind carries
MODALITY_TAG = {"image": "vision", "text": "text"}


@dataclass(frozen=True)
class BackboneSpec:
    """Metadata and factory of one backbone.

    Args:
        name: ``"framework:name"``.
        input_kind: ``"image"``, ``"vector"`` or ``"text"``.
        input_shape: one example's shape; images are channels-last ``(H, W, C)``.
        feature_size: length of the feature vector the backbone returns.
        groups: ordered layer groups, input to output, as ``LayerGroup`` or
            ``(name, prefixes)`` pairs.
        factory: callable or ``"module:attr"`` returning the native backbone; it
            receives the keyword arguments the framework adapter documents.
        arch: reference-architecture id shared by every framework that realises the
            same network with the same canonical weight names (``"resnet18"``); a
            saved model moves between frameworks through it.
        weights: pretrained weight source, or None when the backbone has none.
        mean, std: per-channel normalisation applied to inputs in [0, 1].
        tags: free-form labels for filtering; ``"vision"`` (images) or ``"text"`` is added.
        resizable: whether images of other sizes may be fed (fully convolutional).
        ignore_keys: prefixes (or glob patterns, ``"*.num_batches_tracked"``) of keys a
            weights file may hold that are not part of the backbone (a pretrained
            classifier, for example).
        loads_pretrained: the framework's own loading code reads the pretrained weights
            (a model hub's cache, say) instead of transferkit reading ``weights``; the
            factory then receives ``pretrained=True|False``.
        options: metadata the registering adapter keeps for itself (core never reads it).
        min_input_size: images: the smallest height and width the backbone takes
            (``build(input_shape=...)`` below it is an error; the pipeline resizes inputs).
        max_length: text: the longest ``input_shape=(max_length,)`` the model's position
            embeddings allow (None: no limit known).
        lora_target: the modules ``tk.freeze.LoRA()`` adapts when it names none (peft's
            ``target_modules``: a name matches a module whose name ends with it).
    """

    name: str
    input_kind: str
    input_shape: tuple[int, ...]
    feature_size: int
    groups: tuple[Any, ...]
    factory: Callable[..., Any] | str
    arch: str | None = None
    weights: WeightSource | None = None
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    tags: tuple[str, ...] = ()
    description: str = ""
    resizable: bool = True
    ignore_keys: tuple[str, ...] = ()
    loads_pretrained: bool = False
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    min_input_size: int = 1
    max_length: int | None = None
    lora_target: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.name.count(":") != 1 or not all(self.name.split(":")):
            raise ConfigError(
                f"backbone name {self.name!r} must be 'framework:name', e.g. 'torch:resnet18'"
            )
        if self.input_kind not in INPUT_KINDS:
            raise ConfigError(
                f"backbone {self.name!r}: input_kind {self.input_kind!r} is not one of "
                f"{INPUT_KINDS}"
            )
        groups = tuple(
            g if isinstance(g, LayerGroup) else LayerGroup(g[0], tuple(g[1])) for g in self.groups
        )
        if not groups:
            raise ConfigError(f"backbone {self.name!r} declares no layer groups")
        if "head" in (g.name for g in groups):
            raise ConfigError(
                f"backbone {self.name!r}: 'head' is the task head's name and cannot name a "
                "backbone layer group; call it something else ('conv_head', say)"
            )
        object.__setattr__(self, "groups", groups)
        modality = MODALITY_TAG.get(self.input_kind)  # `transferkit backbones --tag vision`
        if modality and modality not in self.tags:
            object.__setattr__(self, "tags", (modality, *self.tags))
        try:
            shape = tuple(int(s) for s in self.input_shape)
            if not shape or min(shape) < 1 or int(self.feature_size) < 1:
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError(
                f"backbone {self.name!r}: input_shape {self.input_shape!r} and feature_size "
                f"{self.feature_size!r} must be positive integers"
            ) from None
        object.__setattr__(self, "input_shape", shape)
        object.__setattr__(self, "tags", tuple(self.tags))

    @property
    def framework(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def short_name(self) -> str:
        return self.name.split(":", 1)[1]

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    @property
    def pretrained(self) -> bool:
        return self.weights is not None or self.loads_pretrained

    def create(self, expect: type | None = None, **kwargs: Any) -> Any:
        """Call the factory (this is where the framework gets imported) with the keyword
        arguments its framework documents; ``expect``: the type the framework needs back
        (an adapter passes it, so that a plugin's mistake is named, not a crash later)."""
        try:
            factory = _load_callable(self.factory)
        except (ImportError, AttributeError) as e:
            raise ConfigError(
                f"the factory {self.factory!r} of backbone {self.name!r} cannot be imported "
                f"({type(e).__name__}: {e}); is its plugin installed completely?"
            ) from None
        obj = factory(**kwargs)
        if expect is not None and not isinstance(obj, expect):
            raise ConfigError(
                f"the factory of backbone {self.name!r} returned {type(obj).__name__}, not a "
                f"{expect.__module__}.{expect.__qualname__}; see what a factory returns in "
                "transferkit.hookspecs (the plugin author's manual)"
            )
        return obj

    def group_of(self, key: str) -> str:
        """The layer group that owns canonical parameter name ``key``."""
        for g in self.groups:
            if g.owns(key):
                return g.name
        raise WeightsError(
            f"backbone {self.name!r}: parameter {key!r} belongs to no layer group "
            f"({', '.join(self.group_names)}); the plugin must cover every parameter"
        )


def _load_callable(obj: Callable[..., Any] | str) -> Callable[..., Any]:
    if callable(obj):
        return obj
    module, _, attr = obj.partition(":")
    if not attr:
        raise ConfigError(f"{obj!r} is not a 'module:attr' path")
    target: Any = importlib.import_module(module)
    for part in attr.split("."):
        target = getattr(target, part)
    return target


class Catalog:
    """Registered backbones by name."""

    def __init__(self) -> None:
        self._specs: dict[str, BackboneSpec] = {}
        self.origin: dict[str, str] = {}

    def add(self, spec: BackboneSpec, plugin: str) -> None:
        if spec.name in self._specs and self.origin[spec.name] != plugin:
            raise ConfigError(
                f"backbone {spec.name!r} from plugin {plugin!r} is already registered by "
                f"plugin {self.origin[spec.name]!r}"
            )
        self._specs[spec.name] = spec
        self.origin[spec.name] = plugin

    def get(self, name: str) -> BackboneSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownBackboneError(name, self.closest(name)) from None

    def closest(self, name: str, n: int = 3) -> list[str]:
        names = list(self._specs)
        hits = difflib.get_close_matches(name, names, n=n, cutoff=0.5)
        if not hits and ":" in name:
            # 'torch:resnet' -> any framework's resnet*: match the short name too.
            short = name.split(":", 1)[1]
            by_short = {s.split(":", 1)[1]: s for s in names}
            hits = [by_short[h] for h in difflib.get_close_matches(short, list(by_short), n=n)]
        return hits

    def filter(
        self,
        pattern: str | None = None,
        framework: str | None = None,
        tags: Iterable[str] = (),
    ) -> list[BackboneSpec]:
        wanted = set(tags)
        out = []
        for name in sorted(self._specs):
            spec = self._specs[name]
            if pattern and not (
                fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(spec.short_name, pattern)
            ):
                continue
            if framework and spec.framework != framework:
                continue
            if not wanted <= set(spec.tags):
                continue
            out.append(spec)
        return out

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def __len__(self) -> int:
        return len(self._specs)
