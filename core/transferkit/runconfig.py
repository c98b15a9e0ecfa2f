"""``transferkit fit``'s run description: its keys, their types, and running it.

The same keys come from command-line flags and from a TOML file; every value is
checked here before any data is read or any model built.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError

FIT_DEFAULTS: dict[str, Any] = {
    "head": "classifier",
    "hidden": [],
    "dropout": 0.0,
    "freeze": "full",
    "epochs": None,  # None: tk.fit's defaults (a frozen backbone's head is solved)
    "lr": None,
    "batch_size": 32,
    "optimizer": "adam",
    "weight_decay": 0.0,
    "schedule": "cosine",
    "seed": 0,
    "weights": "pretrained",
    "val_split": 0.0,
    "out": "runs/model",
    "freeze_options": {},
    "regularizer": "none",
    "batchnorm": None,  # None: tk.fit's default
    "precision": "32",
    "strategy": None,
    "nproc": 1,
    "timeout": None,  # None: tk.fit's default
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_text(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _int_at_least(lo: int) -> Callable[[Any], bool]:
    return lambda v: _is_int(v) and v >= lo


def _one_of(*choices: str) -> Callable[[Any], bool]:
    return lambda v: v in choices


def _ints_at_least_1(v: Any) -> bool:
    return isinstance(v, list) and all(_is_int(i) and i >= 1 for i in v)


#: what each key of a run description must hold: (what, check, example value)
FIT_SCHEMA: dict[str, tuple[str, Callable[[Any], bool], str]] = {
    "backbone": ("a backbone name", _is_text, '"torch:cnn"'),
    "data": ("a data path or builtin:digits|faces|bbc", _is_text, '"builtin:digits"'),
    "val": ("a data path", _is_text, '"val.npz"'),
    "shots": ("an integer >= 1", _int_at_least(1), "5"),
    "input_shape": ("a list of integers >= 1", _ints_at_least_1, "[32, 32, 3]"),
    "head": ('"classifier" or "regressor"', _one_of("classifier", "regressor"), '"classifier"'),
    "hidden": ("a list of layer sizes (integers >= 1)", _ints_at_least_1, "[64]"),
    "dropout": ("a number in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1, "0.2"),
    "freeze": ("a freeze policy name", _is_text, '"train_last"'),
    "epochs": ("an integer >= 1", _int_at_least(1), "10"),
    "lr": ('a number > 0 or "auto"', lambda v: v == "auto" or _is_number(v) and v > 0, "0.001"),
    "batch_size": ("an integer >= 1", _int_at_least(1), "32"),
    "optimizer": ('"adam", "adamw" or "sgd"', _one_of("adam", "adamw", "sgd"), '"adam"'),
    "weight_decay": ("a number >= 0", lambda v: _is_number(v) and v >= 0, "0.0001"),
    "schedule": ('"cosine" or "constant"', _one_of("cosine", "constant"), '"cosine"'),
    "seed": ("an integer >= 0", _int_at_least(0), "0"),
    "weights": (
        '"pretrained", "none" or a .safetensors path',
        lambda v: isinstance(v, str),
        '"pretrained"',
    ),
    "val_split": ("a number in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1, "0.2"),
    "out": ("a directory path", _is_text, '"runs/model"'),
    "freeze_options": (
        "a table of the freeze policy's options",
        lambda v: isinstance(v, dict),
        "{n = 2}",
    ),
    "regularizer": ('"l2sp", "l2" or "none"', _one_of("l2sp", "l2", "none"), '"l2sp"'),
    "batchnorm": (
        '"recalibrate", "frozen" or "train"',
        _one_of("recalibrate", "frozen", "train"),
        '"frozen"',
    ),
    "precision": (
        '"32", "bf16-mixed" or "16-mixed"',
        _one_of("32", "bf16-mixed", "16-mixed"),
        '"bf16-mixed"',
    ),
    "strategy": ('"ddp"', _one_of("ddp"), '"ddp"'),
    "nproc": ("an integer >= 1 (processes under the launcher)", _int_at_least(1), "2"),
    "timeout": ("a number of seconds > 0", lambda v: _is_number(v) and v > 0, "600"),
    "alpha": ("a number >= 0 (l2sp)", lambda v: _is_number(v) and v >= 0, "0.01"),
    "beta": ("a number >= 0 (l2sp, l2)", lambda v: _is_number(v) and v >= 0, "0.01"),
    "anchor": ("a .safetensors path (l2sp)", _is_text, '"pretrained.safetensors"'),
}

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
_TYPE_NAMES.update({list: "a list", dict: "a table"})


def _toml_value(v: Any) -> str:
    try:
        return json.dumps(v)
    except (TypeError, ValueError):
        return repr(v)


def validate_run_description(cfg: dict[str, Any]) -> None:
    """Check every key and value of a run description before anything is loaded or
    built; a :class:`ConfigError` names the key, the value and what it must be."""
    unknown = set(cfg) - set(FIT_SCHEMA)
    if unknown:
        raise ConfigError(
            f"unknown option(s) in the run description: {', '.join(sorted(unknown))}; "
            f"the options are {', '.join(sorted(FIT_SCHEMA))}"
        )
    for key, value in cfg.items():
        if value is None:
            continue
        what, ok, example = FIT_SCHEMA[key]
        if ok(value):
            continue
        kind = _TYPE_NAMES.get(type(value), type(value).__name__)
        raise ConfigError(
            f"fit option `{key} = {_toml_value(value)}` ({kind}) is not valid: {key} must be "
            f"{what}, e.g. `{key} = {example}`"
        )


def _existing_data_path(spec: str, what: str = "data") -> str:
    if not Path(spec).exists():
        raise DataError(
            f"{what} path {spec!r} does not exist; pass an image folder (root/<class>/*.png), "
            "an .npz file with arrays x and y, a .csv/.jsonl file, or builtin:digits / "
            "builtin:faces"
        )
    return spec


def _load_data(spec: str, shots: int | None, seed: int):
    from . import data, datasets

    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        loaders = {
            "digits": datasets.digits_transfer,
            "faces": datasets.faces,
            "bbc": datasets.bbc_news,
        }
        if name not in loaders:
            raise ConfigError(
                f"unknown built-in data {spec!r}; use builtin:digits, builtin:faces or "
                "builtin:bbc (BBC News, text)"
            )
        return loaders[name](shots=shots, seed=seed)
    train = _labelled(data.load(_existing_data_path(spec)), spec)
    return (train.few_shot(shots, seed) if shots else train), None


def load_labelled(spec: str, what: str = "data") -> Any:
    """Labelled data for evaluation or validation: a path or ``builtin:digits|faces|bbc`` (its
    test part: the held-out examples)."""
    from . import data

    if spec.startswith("builtin:"):
        return _load_data(spec, None, 0)[1]
    return _labelled(data.load(_existing_data_path(spec, what)), spec)


def _check_out(out: str) -> None:
    """The output directory is checked before any data is read or any step is taken."""
    from .saving import check_target

    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"out {out!r} is a file; choose a directory for the fitted model")
    check_target(path)


def _labelled(data: Any, spec: str) -> Any:
    """Training and evaluation data must carry labels; say so rather than fail later."""
    from .errors import LabelError

    if data.y is None:
        raise LabelError(
            f"{spec!r} holds no labels: an .npz needs an array named 'y' beside 'x' "
            "(numpy.savez(path, x=..., y=...)); fit and evaluate need labelled data"
        )
    return data


def run_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run ``transferkit fit`` from a dict of options (flags or TOML)."""
    from . import freeze as freeze_mod
    from .builder import build
    from .heads import Classifier, Regressor
    from .training import fit

    validate_run_description(cfg)
    cfg = {**FIT_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    for key in ("backbone", "data"):
        if not cfg.get(key):
            raise ConfigError(f"`transferkit fit` needs {key} (--{key} or `{key} = ...` in TOML)")
    # Everything that can be checked without data is checked before data is loaded.
    policy = freeze_mod.from_name(cfg["freeze"], **cfg["freeze_options"])
    regularizer = _regularizer(cfg)
    _check_out(cfg["out"])
    train, val = _load_data(cfg["data"], cfg.get("shots"), cfg["seed"])
    if cfg.get("val"):
        val = load_labelled(cfg["val"], "val")
    elif cfg["val_split"]:
        train, val = train.split(cfg["val_split"], seed=cfg["seed"])
    if cfg["head"] == "classifier":
        head = Classifier(train.num_classes, tuple(cfg["hidden"]), cfg["dropout"])
    elif cfg["head"] == "regressor":
        head = Regressor(1, tuple(cfg["hidden"]), cfg["dropout"])
    else:
        raise ConfigError(f"head must be 'classifier' or 'regressor', got {cfg['head']!r}")
    weights = None if cfg["weights"] in ("none", "None", "") else cfg["weights"]
    shape = tuple(cfg["input_shape"]) if cfg.get("input_shape") else None
    model = build(
        cfg["backbone"],
        head=head,
        weights=weights,
        input_shape=shape,
        classes=train.classes,
        seed=cfg["seed"],
    )
    history = fit(
        model,
        train,
        val=val,
        freeze=policy,
        epochs=cfg["epochs"],
        lr=cfg["lr"],
        batch_size=cfg["batch_size"],
        optimizer=cfg["optimizer"],
        weight_decay=cfg["weight_decay"],
        schedule=cfg["schedule"],
        seed=cfg["seed"],
        regularizer=regularizer,
        batchnorm=cfg["batchnorm"],
        precision=cfg["precision"],
        strategy=cfg["strategy"],
        timeout=cfg["timeout"],
    )
    out = model.save(cfg["out"])  # rank 0 writes when processes trained together
    result = {"out": str(out), "epochs": len(history), "rank": model.engine.rank}
    if val is not None:  # in every process: a model spread over them computes together
        result["val"] = model.evaluate(val)
    if model.engine.rank == 0:
        history.to_csv(out / "history.csv")
    return result


def _regularizer(cfg: dict[str, Any]) -> Any:
    """``regularizer`` with its ``alpha``/``beta``/``anchor`` keys; those keys without a
    regularizer that takes them are named rather than ignored."""
    from . import regularizers

    name = cfg["regularizer"]
    given = {k: cfg[k] for k in ("alpha", "beta", "anchor") if cfg.get(k) is not None}
    takes = {"l2sp": {"alpha", "beta", "anchor"}, "l2": {"beta"}, "none": set()}[name]
    extra = sorted(set(given) - takes)
    if extra:
        raise ConfigError(
            f"{', '.join(extra)} given, but regularizer = {name!r} takes "
            f'{", ".join(sorted(takes)) or "none of them"}; set regularizer = "l2sp"'
        )
    return None if name == "none" else regularizers.from_name(name, **given)
