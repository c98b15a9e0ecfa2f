"""The ``transferkit`` command line."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tomllib
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError, ModelDirError, TransferkitError


def _backbones(args: argparse.Namespace) -> int:
    from .builder import list_backbones
    from .plugins import registry

    specs = list_backbones(args.pattern, args.framework, tuple(args.tag or ()))
    if not specs:
        _no_backbone_matches(args)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": s.name,
                        "arch": s.arch,
                        "input_kind": s.input_kind,
                        "input_shape": list(s.input_shape),
                        "feature_size": s.feature_size,
                        "groups": list(s.group_names),
                        "tags": list(s.tags),
                        "weights": s.weights.description if s.weights else None,
                    }
                    for s in specs
                ],
                indent=2,
            )
        )
        return 0 if specs else 1
    if not specs:
        return 1
    reg = registry()
    print(
        f"{'name':<32} {'input':<14} {'features':>8} {'groups':>6}  {'pretrained weights':<44} "
        "installed"
    )
    for s in specs:
        fw = reg.frameworks.get(s.framework)
        ok = (
            "yes"
            if fw and not fw.missing()
            else f"no: pip install 'transferkit[{fw.extra}]'"
            if fw
            else "no framework"
        )
        shape = "x".join(map(str, s.input_shape))
        weights = s.weights.description if s.weights else "-"
        print(
            f"{s.name:<32} {s.input_kind + ' ' + shape:<14} {s.feature_size:>8} "
            f"{len(s.groups):>6}  {weights[:44]:<44} {ok}"
        )
    return 0


def _no_backbone_matches(args: argparse.Namespace) -> None:
    """Say on stderr why ``transferkit backbones`` lists nothing (it then exits 1, as
    grep does)."""
    from .plugins import registry

    catalog = registry().catalog
    if not len(catalog):
        print(
            "transferkit: no backbone is registered; run `transferkit plugins` to see which "
            "plugins are loaded, failed or disabled",
            file=sys.stderr,
        )
        return
    wanted = [repr(args.pattern)] if args.pattern else []
    if args.framework:
        wanted.append(f"framework {args.framework!r}")
    if args.tag:
        wanted.append(f"tag(s) {', '.join(map(repr, args.tag))}")
    hint = ""
    if args.pattern and not any(c in args.pattern for c in "*?["):
        close = catalog.closest(args.pattern)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
    print(
        f"transferkit: no backbone matches {' and '.join(wanted)}.{hint} Run "
        "`transferkit backbones` to list them all.",
        file=sys.stderr,
    )


def _plugins(args: argparse.Namespace) -> int:
    from .plugins import list_plugins

    infos = list_plugins()
    if args.json:
        print(json.dumps([vars(i) for i in infos], indent=2))
        return 0 if all(i.status != "failed" for i in infos) else 1
    for i in infos:
        print(f"{i.name:<16} {i.status:<9} {i.version or '-':<8} {i.source or '-'}")
        if i.status == "loaded":
            print(f"    hooks: {', '.join(i.hooks)}")
            if i.frameworks:
                print(f"    frameworks: {', '.join(i.frameworks)}")
            print(f"    backbones: {', '.join(i.backbones) or '-'}")
        else:
            print(f"    reason: {i.error}")
        for w in getattr(i, "warnings", ()):
            print(f"    warning: {w}")
    return 0 if all(i.status != "failed" for i in infos) else 1


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    if args.text:
        from .plugins import registry

        hf = registry().frameworks.get("hf")
        if hf is None or hf.missing():
            raise ConfigError("the text demo needs the hf extra: pip install 'transferkit[hf]'")
        demo.run_text(quick=args.quick, seeds=args.seeds, out=args.out)
        return 0
    frameworks = args.frameworks.split(",") if args.frameworks else None
    if not (frameworks or demo.installed_frameworks()):
        raise ConfigError("no framework is installed; pip install 'transferkit[torch]'")
    demo.run(quick=args.quick, frameworks=frameworks, seeds=args.seeds, out=args.out)
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from .pretrain import RECIPES, pretrain

    archs = list(RECIPES) if args.arch == "all" else [args.arch]
    for arch in archs:
        out = args.out if args.out and len(archs) == 1 else None
        path, scores = pretrain(arch, args.framework, out, args.seed)
        print(f"{arch}: held-out accuracy on digits 0-4 {scores['accuracy']:.4f} -> {path}")
    return 0


FIT_DEFAULTS: dict[str, Any] = {
    "head": "classifier",
    "hidden": [],
    "dropout": 0.0,
    "freeze": "full",
    "epochs": 10,
    "lr": 1e-3,
    "batch_size": 32,
    "optimizer": "adam",
    "weight_decay": 0.0,
    "schedule": "cosine",
    "seed": 0,
    "weights": "pretrained",
    "val_split": 0.0,
    "out": "runs/model",
    "freeze_options": {},
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
    "data": ("a data path or builtin:digits|builtin:faces", _is_text, '"builtin:digits"'),
    "val": ("a data path", _is_text, '"val.npz"'),
    "shots": ("an integer >= 1", _int_at_least(1), "5"),
    "input_shape": ("a list of integers >= 1", _ints_at_least_1, "[32, 32, 3]"),
    "head": ('"classifier" or "regressor"', _one_of("classifier", "regressor"), '"classifier"'),
    "hidden": ("a list of layer sizes (integers >= 1)", _ints_at_least_1, "[64]"),
    "dropout": ("a number in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1, "0.2"),
    "freeze": ("a freeze policy name", _is_text, '"train_last"'),
    "epochs": ("an integer >= 1", _int_at_least(1), "10"),
    "lr": ("a number > 0", lambda v: _is_number(v) and v > 0, "0.001"),
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
        loaders = {"digits": datasets.digits_transfer, "faces": datasets.faces}
        if name not in loaders:
            raise ConfigError(
                f"unknown built-in data {spec!r}; use builtin:digits or builtin:faces"
            )
        return loaders[name](shots=shots, seed=seed)
    train = _labelled(data.load(_existing_data_path(spec)), spec)
    return (train.few_shot(shots, seed) if shots else train), None


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
    from .data import load as load_data
    from .heads import Classifier, Regressor
    from .training import fit

    validate_run_description(cfg)
    cfg = {**FIT_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    for key in ("backbone", "data"):
        if not cfg.get(key):
            raise ConfigError(f"`transferkit fit` needs {key} (--{key} or `{key} = ...` in TOML)")
    # Everything that can be checked without data is checked before data is loaded.
    policy = freeze_mod.from_name(cfg["freeze"], **cfg["freeze_options"])
    train, val = _load_data(cfg["data"], cfg.get("shots"), cfg["seed"])
    if cfg.get("val"):
        val = _labelled(load_data(_existing_data_path(cfg["val"], "val")), cfg["val"])
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
    )
    out = model.save(cfg["out"])
    history.to_csv(out / "history.csv")
    result = {"out": str(out), "epochs": len(history)}
    if val is not None:
        result["val"] = model.evaluate(val)
    return result


def _fit(args: argparse.Namespace) -> int:
    cfg: dict[str, Any] = {}
    if args.config:
        try:
            cfg = tomllib.loads(Path(args.config).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(
                f"cannot read run description {args.config!r} ({e}); pass the path of a TOML "
                "file with --config"
            ) from None
    flags = {
        k: v
        for k, v in vars(args).items()
        if k in set(FIT_DEFAULTS) | {"backbone", "data", "val", "shots"} and v is not None
    }
    if flags.get("hidden") == []:
        flags.pop("hidden")
    cfg.update(flags)
    result = run_config(cfg)
    print(json.dumps(result, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .data import load as load_data
    from .saving import load

    if not Path(args.model).is_dir():
        raise ModelDirError(
            f"model directory {args.model!r} does not exist; pass the directory "
            "`transferkit fit --out` saved the model to"
        )
    # the data before the model: a wrong path fails fast
    data = _labelled(load_data(_existing_data_path(args.data)), args.data)
    model = load(args.model, framework=args.framework)
    print(json.dumps(model.evaluate(data), indent=2))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from . import bench

    doc = bench.run(
        args.suite,
        out=args.out,
        quick=args.quick,
        frameworks=args.frameworks.split(",") if args.frameworks else None,
        backbones=args.backbones.split(",") if args.backbones else None,
        timeout_s=args.timeout,
        steps=args.steps,
        command=" ".join(
            ["transferkit bench"]
            + [
                f"--{k} {v}" if v is not True else f"--{k}"
                for k, v in vars(args).items()
                if k not in ("command", "func")
                and v not in (None, False)
                and not (k == "suite" and v == "default")
            ]
        ),
    )
    print(bench.markdown(doc))
    print(f"results in {args.out}/ (bench.json, bench.md, bench_*.png)", file=sys.stderr)
    return 0 if doc["summary"]["status_counts"].get("ok") else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="transferkit",
        description=(
            "Transfer learning through one API on PyTorch, Keras 3, JAX/Flax and Hugging Face."
        ),
    )
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("backbones", help="list registered backbones")
    b.add_argument("pattern", nargs="?", help="glob on framework:name or name, e.g. 'torch:*'")
    b.add_argument("--framework")
    b.add_argument("--tag", action="append")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=_backbones)

    pl = sub.add_parser("plugins", help="list plugins, loaded or failed (with the reason)")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=_plugins)

    d = sub.add_parser("demo", help="does transfer learning solve data scarcity? (offline data)")
    d.add_argument(
        "--quick",
        action="store_true",
        help="one seed instead of three (and 250 test articles with --text)",
    )
    d.add_argument(
        "--text", action="store_true", help="BBC News topics with MiniLM instead of the image tasks"
    )
    d.add_argument("--frameworks", help="comma-separated; default: every installed one")
    d.add_argument("--seeds", type=int)
    d.add_argument("--out", default="demo-out", help="directory for demo.md/.json/.png")
    d.set_defaults(func=_demo)

    f = sub.add_parser("fit", help="fit a backbone + head on data; save model and history")
    f.add_argument("--config", help="TOML run description (flags override it)")
    f.add_argument("--backbone", help="e.g. torch:cnn")
    f.add_argument("--data", help="image folder, .npz (x, y), or builtin:digits|builtin:faces")
    f.add_argument("--val", help="validation data (same forms as --data)")
    f.add_argument("--val-split", dest="val_split", type=float)
    f.add_argument("--shots", type=int, help="labelled examples per class to sample")
    f.add_argument("--head", choices=["classifier", "regressor"])
    f.add_argument("--hidden", type=int, nargs="*")
    f.add_argument("--dropout", type=float)
    f.add_argument(
        "--freeze", help="full | feature_extraction | train_last | unfreeze_at | gradual"
    )
    f.add_argument("--weights", help="pretrained (default), none, or a .safetensors path")
    f.add_argument("--epochs", type=int)
    f.add_argument("--lr", type=float)
    f.add_argument("--batch-size", dest="batch_size", type=int)
    f.add_argument("--optimizer", choices=["adam", "adamw", "sgd"])
    f.add_argument("--weight-decay", dest="weight_decay", type=float)
    f.add_argument("--schedule", choices=["cosine", "constant"])
    f.add_argument("--seed", type=int)
    f.add_argument("--out", help="directory to save the fitted model (default runs/model)")
    f.set_defaults(func=_fit)

    e = sub.add_parser("evaluate", help="evaluate a saved model on labelled data")
    e.add_argument("model")
    e.add_argument("--data", required=True)
    e.add_argument("--framework", help="load it in another framework")
    e.set_defaults(func=_evaluate)

    pt = sub.add_parser("pretrain", help="make the shipped pretrained cnn/mlp weights")
    pt.add_argument("arch", nargs="?", default="all", choices=["all", "cnn", "mlp"])
    pt.add_argument("--framework", default="torch")
    pt.add_argument("--out", help="output file (default: the file shipped in the package)")
    pt.add_argument("--seed", type=int, default=0)
    pt.set_defaults(func=_pretrain)

    bn = sub.add_parser("bench", help="benchmark one transfer task across frameworks")
    bn.add_argument("--suite", default="default", help="suite name or .toml path")
    bn.add_argument("--quick", action="store_true", help="the reduced suite (< 3 min)")
    bn.add_argument("--out", default="bench-out", help="directory for bench.json/.md/.png")
    bn.add_argument("--frameworks", help="keep these (comma-separated globs: torch,keras*)")
    bn.add_argument("--backbones", help="keep these (comma-separated globs: cnn,torch:mlp)")
    bn.add_argument("--timeout", type=float, help="seconds per case part (suite default)")
    bn.add_argument("--steps", type=int, help="timed steps per case (suite default)")
    bn.set_defaults(func=_bench)
    return p


DEBUG_ENV = "TRANSFERKIT_DEBUG"


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").lower() in {"1", "true", "yes", "on"}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _stdout_to_devnull() -> None:
    """After a broken pipe: point stdout at devnull so that the interpreter's last flush
    of what is still buffered does not fail again (the recipe of the Python docs)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is no file (captured, closed)
        pass


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes: 0 ok, 1 nothing found / a failed plugin / an
    unexpected error, 2 a user error (a one-line ``transferkit: error: ...`` on stderr;
    argparse's usage errors too), 130 interrupted, 141 stdout closed early (``| head``)."""
    args = parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        return code
    except BrokenPipeError:
        _stdout_to_devnull()
        return 141  # 128 + SIGPIPE, what a shell reports for `yes | head -1`
    except KeyboardInterrupt:
        print("transferkit: interrupted", file=sys.stderr)
        return 130
    except TransferkitError as e:
        if _debug():
            traceback.print_exc()
        print(f"transferkit: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the last resort: one line, not a traceback
        if _debug():
            raise
        print(
            f"transferkit: error: {type(e).__name__}: {_one_line(str(e))} (unexpected: please "
            f"report it; set {DEBUG_ENV}=1 to see the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
