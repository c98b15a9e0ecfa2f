"""Models: ``build`` a backbone with a new head, use it, ``save`` and ``load`` it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import atomic, metrics, validate
from . import weights as wio
from .catalog import BackboneSpec, LayerGroup
from .data import Dataset, as_dataset, check_inputs, check_labels, check_stacked
from .errors import (
    ConfigError,
    InputShapeError,
    ModelDirError,
    TransferkitError,
    UnknownBackboneError,
    WeightsError,
)
from .framework import Engine, Framework
from .heads import Classifier, Head
from .plugins import registry
from .preprocess import prepare_images

FORMAT = "transferkit-model"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ASSETS = "assets"
PRETRAINED = "pretrained"


@dataclass(frozen=True)
class Backbone:
    """A built backbone: its metadata, the native object and its layer groups."""

    spec: BackboneSpec
    native: Any
    input_shape: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def framework(self) -> str:
        return self.spec.framework

    @property
    def feature_size(self) -> int:
        return self.spec.feature_size

    @property
    def groups(self) -> tuple[LayerGroup, ...]:
        return self.spec.groups


class Model:
    """A backbone with a head, realised in one framework. Made by :func:`build` or
    :func:`load`; trained by :func:`transferkit.fit`."""

    def __init__(
        self,
        spec: BackboneSpec,
        head: Head,
        framework: Framework,
        engine: Engine,
        input_shape: tuple[int, ...],
        classes: list[str] | None = None,
        weights_origin: str | None = None,
    ):
        self.spec = spec
        self.head = head
        self._framework = framework
        self.engine = engine
        self.input_shape = tuple(input_shape)
        self.classes = classes
        self.weights_origin = weights_origin
        self.history: list[dict[str, Any]] = []
        #: parameter-efficient modules inserted into the backbone (LoRA), or None
        self.peft: dict[str, Any] | None = None

    def add_peft(self, peft: dict[str, Any]) -> None:
        """Insert trainable parameter-efficient modules (LoRA) into the frozen backbone;
        ``tk.freeze.LoRA`` calls this for you."""
        if self.peft is not None:
            if dict(peft) != self.peft:
                raise ConfigError(f"this model already has the LoRA modules {self.peft}")
            return
        self.engine.add_peft(dict(peft))
        self.peft = dict(peft)

    def reset_head(self, seed: int = 0) -> None:
        """Put the head back to its seeded initial weights (the backbone is untouched)."""
        self.engine.set_weights(self.head.initial_weights(self.spec.feature_size, seed))

    def __repr__(self) -> str:
        return (
            f"Model({self.spec.name!r}, head={self.head!r}, input_shape={self.input_shape}, "
            f"weights={self.weights_origin!r})"
        )

    @property
    def framework(self) -> str:
        """The name of the framework the model is realised in (``"torch"``)."""
        return self.spec.framework

    @property
    def backbone(self) -> Backbone:
        return Backbone(self.spec, self.engine.backbone, self.input_shape)

    # --- weights ---------------------------------------------------------------------
    def get_weights(self) -> dict[str, np.ndarray]:
        """Every weight (BatchNorm statistics included) by canonical name, float32 in
        PyTorch's layout: the same names and values in every framework."""
        return self.engine.get_weights()

    def set_weights(self, arrays: dict[str, np.ndarray]) -> None:
        """Load some or all weights by canonical name; names the model lacks and shapes
        that differ are a :class:`~transferkit.errors.WeightsError`."""
        shapes = self.engine.param_shapes()
        expected = {k: shapes[k] for k in arrays if k in shapes}
        self.engine.set_weights(wio.match(arrays, expected, f"model {self.spec.name!r}"))

    @property
    def native(self) -> Any:
        """The framework's own object (backbone + head)."""
        return self.engine.native

    @property
    def task(self) -> str:
        return self.head.task

    # --- inputs ----------------------------------------------------------------------
    def check(self, x: Any, what: str = "x") -> None:
        check_inputs(x, self.spec.input_kind, self.input_shape, what)

    def prepare(self, x: Any) -> Any:
        """User inputs -> what the engine takes (normalised, resized, channels-last)."""
        if self.spec.input_kind == "image":
            return prepare_images(x, self.input_shape, self.spec.mean, self.spec.std)
        if self.spec.input_kind == "vector":
            return np.asarray(x, dtype=np.float32)
        return list(x)

    def prepared_batches(self, x: Any, batch_size: int) -> Iterator[Any]:
        for i in range(0, len(x), batch_size):
            yield self.prepare(x[i : i + batch_size])

    def _run(self, fn, x: Any, batch_size: int) -> np.ndarray:
        batch_size = validate.integer("batch_size", batch_size, 1, 1 << 20)
        if isinstance(x, Dataset):
            x = x.x
        elif isinstance(x, list) and x and not isinstance(x[0], str):
            x = np.asarray(check_stacked(x, "x"))
        self.check(x)
        outs = [np.asarray(fn(b)) for b in self.prepared_batches(x, batch_size)]
        return np.concatenate(outs)

    # --- inference ---------------------------------------------------------------------
    def features(self, x: Any, batch_size: int = 128) -> np.ndarray:
        """The backbone's feature vectors ``(N, feature_size)``."""
        return self._run(self.engine.features, x, batch_size)

    def logits(self, x: Any, batch_size: int = 128) -> np.ndarray:
        """Raw head outputs: logits for a classifier, values for a regressor."""
        return self._run(self.engine.predict, x, batch_size)

    def predict(self, x: Any, batch_size: int = 128) -> np.ndarray:
        """Class probabilities ``(N, num_classes)`` for a classifier (take ``.argmax(1)``
        for labels), predicted values ``(N, outputs)`` for a regressor."""
        out = self.logits(x, batch_size)
        if isinstance(self.head, Classifier):
            return np.exp(metrics.log_softmax(out.astype(np.float64))).astype(np.float32)
        return out

    def evaluate(self, data: Dataset, batch_size: int = 128) -> dict[str, float]:
        """Loss and metrics on labelled data (a ``tk.Dataset`` or an ``(x, y)`` pair):
        accuracy, loss, macro_f1 (classification) or loss, mse, mae (regression)."""
        data = as_dataset(data, "evaluate(data)")
        self.check(data.x)
        y = check_labels(data.y, len(data), self.head.task, self.head.outputs)
        return metrics.compute(self.head.task, self.logits(data.x, batch_size), y)

    # --- persistence -------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": 1,
            "backbone": self.spec.name,
            "arch": self.spec.arch,
            "framework": self.spec.framework,
            "input_kind": self.spec.input_kind,
            "input_shape": list(self.input_shape),
            "feature_size": self.spec.feature_size,
            "head": self.head.to_config(),
            "classes": self.classes,
            "weights_origin": self.weights_origin,
            "groups": [[g.name, list(g.prefixes)] for g in self.spec.groups],
            "options": self.engine.options(),
            "peft": self.peft,
        }

    def save(self, path: str | Path) -> Path:
        """Save backbone + head + config as a directory (safetensors + JSON).

        The directory is written beside the target and swapped in at the end: at every
        instant (a kill included) ``path`` holds the previous model or the new one,
        complete, or :func:`load` recovers it from beside ``path``.
        """
        if not isinstance(path, (str, Path)) or not str(path):
            raise ConfigError(f"save() needs a directory path, got {path!r:.60}")

        def fill(tmp: Path) -> None:
            wio.save(self.engine.get_weights(), tmp / WEIGHTS_FILE, {"format": FORMAT})
            cfg = self.config()
            (tmp / ASSETS).mkdir()
            self.engine.save_assets(tmp / ASSETS)
            if not any((tmp / ASSETS).iterdir()):
                (tmp / ASSETS).rmdir()
            if self.history:
                (tmp / "history.json").write_text(json.dumps(self.history, indent=2))
            (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))  # the marker: last

        return atomic.write_dir(Path(path), fill, CONFIG_FILE, _check_target, "model directory")


def _check_target(target: Path) -> None:
    if target.is_dir() and not (target / CONFIG_FILE).exists() and any(target.iterdir()):
        raise ModelDirError(
            f"{str(target)!r} exists and is not a transferkit model directory; "
            "refusing to overwrite it"
        )


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
            f"build({name!r}): backbone names are 'framework:name', e.g. 'torch:cnn'; "
            "run `transferkit backbones` to list them"
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


def load(path: str | Path, framework: str | None = None, **options: Any) -> Model:
    """Load a saved model directory, in its own framework or in ``framework``.

    ``framework="flax"`` (say) rebuilds a model saved from PyTorch in Flax through the
    shared reference architecture and canonical weight names.
    """
    if not isinstance(path, (str, Path)):
        raise ConfigError(f"load() needs a model directory path, got {path!r:.60}")
    path = Path(path)
    atomic.recover(path, CONFIG_FILE)  # a save that was killed mid-swap
    cfg_file, w_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not path.is_dir():
        raise ModelDirError(f"model directory {str(path)!r} does not exist")
    for f in (cfg_file, w_file):
        if not f.is_file():
            raise ModelDirError(
                f"{str(path)!r} is not a complete transferkit model: {f.name} is missing"
            )
    try:
        cfg = read_config(cfg_file)
        head = Head.from_config(cfg["head"])
        name = cfg["backbone"]
        shape = tuple(cfg["input_shape"])
    except (ValueError, KeyError, TypeError, TransferkitError) as e:
        raise ModelDirError(f"{str(cfg_file)!r} is corrupt: {e}") from None
    if framework is not None:
        validate.string("load(framework)", framework)
    if framework is not None and framework != cfg.get("framework"):
        name = _realisation(cfg, framework)
    try:
        arrays = wio.read(w_file)
    except WeightsError as e:
        raise ModelDirError(str(e)) from None
    same_framework = framework in (None, cfg.get("framework"))
    if same_framework:
        options = {**cfg.get("options", {}), **options}
        if (path / ASSETS).is_dir():
            options["assets"] = path / ASSETS
    model = build(
        name, head=head, weights=None, input_shape=shape, classes=cfg.get("classes"), **options
    )
    peft = cfg.get("peft", cfg.get("adapter"))  # "adapter": the name in format 1's first files
    if peft:
        model.add_peft(peft)
    checked = wio.match(arrays, model.engine.param_shapes(), f"model {name!r}")
    model.engine.set_weights(checked)
    model.weights_origin = str(path)
    history = path / "history.json"
    if history.is_file():
        try:
            model.history = json.loads(history.read_text())
        except (ValueError, UnicodeDecodeError):
            model.history = []  # a log, not the model: a bad one loses nothing that matters
    return model


#: config.json fields: name -> (accepted types, required)
_CONFIG_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "backbone": ((str,), True),
    "head": ((dict,), True),
    "input_shape": ((list,), True),
    "framework": ((str,), False),
    "arch": ((str, type(None)), False),
    "classes": ((list, type(None)), False),
    "options": ((dict,), False),
    "peft": ((dict, type(None)), False),
    "adapter": ((dict, type(None)), False),
    "weights_origin": ((str, type(None)), False),
}


def read_config(path: Path) -> dict[str, Any]:
    """A saved model's ``config.json``, checked field by field (``ValueError`` names the
    first field that is wrong)."""
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"expected a JSON object, found {type(cfg).__name__}")
    if cfg.get("format") != FORMAT:
        raise ValueError(f"format is {cfg.get('format')!r}, not {FORMAT!r}")
    for key, (types, required) in _CONFIG_FIELDS.items():
        if key not in cfg:
            if required:
                raise ValueError(f"field {key!r} is missing")
            continue
        if not isinstance(cfg[key], types):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ValueError(f"field {key!r} is {cfg[key]!r:.40}, expected {expected}")
    if not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in cfg["input_shape"]
    ):
        raise ValueError(
            f"field 'input_shape' is {cfg['input_shape']!r:.40}, expected positive integers"
        )
    if cfg.get("classes") is not None and not all(isinstance(c, str) for c in cfg["classes"]):
        raise ValueError("field 'classes' must be a list of strings")
    return cfg


def _realisation(cfg: dict[str, Any], framework: str) -> str:
    arch = cfg.get("arch")
    reg = registry()
    reg.framework(framework)
    for spec in reg.catalog.filter(framework=framework):
        if arch and spec.arch == arch:
            return spec.name
    raise ConfigError(
        f"the saved backbone {cfg['backbone']!r} (architecture {arch!r}) has no realisation in "
        f"framework {framework!r}; realisations of {arch!r}: "
        f"{', '.join(s.name for s in reg.catalog.filter() if s.arch == arch) or 'none'}"
    )


def list_backbones(
    pattern: str | None = None, framework: str | None = None, tags: tuple[str, ...] = ()
) -> list[BackboneSpec]:
    """Registered backbones from every installed plugin, filtered by a glob ``pattern``
    (on ``framework:name`` or the bare name), framework and tags. Imports no framework."""
    return registry().catalog.filter(pattern, framework, tags)
