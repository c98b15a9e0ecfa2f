"""Saved models: a directory of safetensors weights and a checked JSON config, written
atomically (``atomic.py``) and loaded into the framework it was saved from, or another."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import atomic, owned, validate
from . import weights as wio
from .builder import build
from .errors import ConfigError, ModelDirError, OverwriteError, TransferkitError, WeightsError
from .heads import Head
from .model import ASSETS, CONFIG_FILE, FORMAT, WEIGHTS_FILE, Model
from .plugins import registry


def save(model: Model, path: str | Path) -> Path:
    """Write ``model`` to the directory ``path`` (see :meth:`Model.save`)."""
    if not isinstance(path, (str, Path)) or not str(path):
        raise ConfigError(f"save() needs a directory path, got {path!r:.60}")
    if model.engine.rank != 0:  # processes that trained together: rank 0 writes
        return Path(path)

    def fill(tmp: Path) -> None:
        wio.save(model.get_weights(), tmp / WEIGHTS_FILE, {"format": FORMAT})
        cfg = model.config()
        (tmp / ASSETS).mkdir()
        model.engine.save_assets(tmp / ASSETS)
        if not any((tmp / ASSETS).iterdir()):
            (tmp / ASSETS).rmdir()
        if model.history:
            (tmp / "history.json").write_text(json.dumps(model.history, indent=2))
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))  # the marker: last

    return atomic.write_dir(Path(path), fill, CONFIG_FILE, check_target, "model directory")


#: everything :func:`save` writes in a model directory, and ``transferkit fit``'s
#: ``history.csv`` beside it (with the record that proves it transferkit's)
SAVED = (CONFIG_FILE, WEIGHTS_FILE, ASSETS, "history.json", "history.csv", owned.RECORD)


def is_model_dir(path: Path) -> bool:
    """Proof that transferkit wrote the directory: its ``config.json`` is a regular file
    holding transferkit's ``format`` field (a Hugging Face or Keras ``config.json`` has
    none)."""
    doc = owned.read_json(path / CONFIG_FILE)
    return doc is not None and doc.get("format") == FORMAT


def check_target(target: Path) -> None:
    """What :func:`save` may replace: nothing (a new or empty directory), or a transferkit
    model directory that holds only what a save writes. Anything else — a user's files,
    another library's model, a symbolic link, a model directory the user added files
    to — is refused before any work, naming the path."""
    if target.is_symlink():
        raise OverwriteError(
            f"{str(target)!r} is a symbolic link; transferkit does not save through links: "
            "choose another path"
        )
    if target.exists() and not target.is_dir():
        raise OverwriteError(f"{str(target)!r} is a file; choose a directory path for the model")
    if not target.is_dir() or not any(target.iterdir()):
        return
    if not is_model_dir(target):
        raise OverwriteError(
            f"{str(target)!r} exists and is not a transferkit model directory (its "
            f"{CONFIG_FILE}, if any, is not transferkit's); refusing to replace it: choose "
            "another path or move it away"
        )
    extra = owned.only(target, SAVED)
    if extra:
        raise OverwriteError(
            f"{str(target)!r} is a transferkit model directory, but it also holds "
            f"{', '.join(map(repr, extra[:5]))}{' ...' if len(extra) > 5 else ''}, which "
            "save did not write; saving would lose them: move them out or choose another path"
        )


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
        name = realisation(cfg, framework)
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
        model.add_peft(_peft(peft, cfg_file))
    checked = wio.match(arrays, model.engine.param_shapes(), f"model {name!r}")
    model.engine.set_weights(checked)
    model.weights_origin = str(path)
    model.batchnorm = cfg.get("batchnorm")
    history = path / "history.json"
    if history.is_file():
        found = owned.read_json(history, 64 << 20, list)
        # a log, not the model: a bad one loses nothing that matters
        ok = isinstance(found, list) and all(isinstance(e, dict) for e in found)
        model.history = found if ok else []
    return model


def _peft(peft: dict[str, Any], where: Path) -> dict[str, Any]:
    """A saved model's parameter-efficient modules, checked as ``tk.freeze.LoRA`` checks
    them (its defaults for keys an older file lacks)."""
    from .freeze import LoRA

    fields = {"r", "alpha", "target", "dropout"}
    extra = sorted(set(peft) - fields - {"kind"})
    if peft.get("kind") != "lora" or extra:
        raise ModelDirError(
            f"{str(where)!r} is corrupt: field 'peft' is {peft!r:.80}; expected kind 'lora' "
            "with r, alpha, target and dropout"
        )
    try:
        return LoRA(**{k: v for k, v in peft.items() if k in fields}).peft
    except (ConfigError, TypeError) as e:
        raise ModelDirError(f"{str(where)!r} is corrupt: field 'peft': {e}") from None


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
    "batchnorm": ((str, type(None)), False),
    "adapter": ((dict, type(None)), False),
    "weights_origin": ((str, type(None)), False),
}


def read_config(path: Path) -> dict[str, Any]:
    """A saved model's ``config.json``, checked field by field (``ValueError`` names the
    first field that is wrong)."""
    try:
        if path.stat().st_size > 16 << 20:
            raise ValueError("it is over 16 MiB, far more than a model's description")
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"it cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text ({e})") from None
    except RecursionError:
        raise ValueError("its JSON is nested too deeply") from None
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


def realisation(cfg: dict[str, Any], framework: str) -> str:
    arch = cfg.get("arch")
    reg = registry()
    reg.framework(framework)
    if not arch:
        raise ConfigError(
            f"the saved backbone {cfg['backbone']!r} realises no reference architecture, so it "
            f"loads only in its own framework ({cfg.get('framework')!r}); leave framework= out"
        )
    for spec in reg.catalog.filter(framework=framework):
        if arch and spec.arch == arch:
            return spec.name
    raise ConfigError(
        f"the saved backbone {cfg['backbone']!r} (architecture {arch!r}) has no realisation in "
        f"framework {framework!r}; realisations of {arch!r}: "
        f"{', '.join(s.name for s in reg.catalog.filter() if s.arch == arch) or 'none'}"
    )
