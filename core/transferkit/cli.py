"""The ``transferkit`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from . import cli_data, cli_deploy, launch
from .cli_choose import add_parsers, lr_value
from .errors import ConfigError, ModelDirError, TransferkitError
from .runconfig import FIT_SCHEMA, load_labelled, run_config
from .textfiles import read_toml


def _backbones(args: argparse.Namespace) -> int:
    from .builder import list_backbones
    from .export import formats_for
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
                        "exports": formats_for(s),
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
        f"{'name':<32} {'input':<14} {'features':>8} {'groups':>6} {'BN':>3}  "
        f"{'pretrained weights':<44} installed"
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
            f"{len(s.groups):>6} {'yes' if 'batchnorm' in s.tags else '-':>3}  "
            f"{weights[:44]:<44} {ok}"
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
            shown = ", ".join(i.backbones[:12]) + (  # a model zoo registers thousands
                f", ... ({len(i.backbones)} in all; `transferkit backbones` lists them)"
                if len(i.backbones) > 12
                else ""
            )
            print(f"    backbones: {shown or '-'}")
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
        from .demo_text import run_text

        run_text(quick=args.quick, seeds=args.seeds, out=args.out)
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


def _fit(args: argparse.Namespace) -> int:
    cfg: dict[str, Any] = {}
    if args.config:
        hint = "; pass the path of a TOML file with --config"
        cfg = read_toml(args.config, "run description", hint)
    flags = {k: v for k, v in vars(args).items() if k in set(FIT_SCHEMA) and v is not None}
    if flags.get("hidden") == []:
        flags.pop("hidden")
    cfg.update(flags)
    if launch.wanted(cfg):
        return launch.launch(cfg)
    result = run_config(cfg)
    if result.pop("rank") == 0:  # processes that fit together: rank 0 reports
        print(json.dumps(result, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .saving import load

    if not Path(args.model).is_dir():
        raise ModelDirError(
            f"model directory {args.model!r} does not exist; pass the directory "
            "`transferkit fit --out` saved the model to"
        )
    # the data before the model: a wrong path fails fast
    data = load_labelled(args.data)
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
    f.add_argument("--data", help="image folder, .npz (x, y), or builtin:digits|faces|bbc")
    f.add_argument("--val", help="validation data (same forms as --data)")
    f.add_argument("--val-split", dest="val_split", type=float)
    f.add_argument("--shots", type=int, help="labelled examples per class to sample")
    f.add_argument("--head", choices=["classifier", "regressor"])
    f.add_argument("--hidden", type=int, nargs="*")
    f.add_argument("--dropout", type=float)
    f.add_argument(
        "--freeze", help="full | feature_extraction | train_last | unfreeze_at | gradual | lora"
    )
    f.add_argument("--weights", help="pretrained (default), none, or a .safetensors path")
    f.add_argument("--epochs", type=int)
    f.add_argument("--lr", type=lr_value, help="a number, or auto (the range test chooses)")
    f.add_argument("--batch-size", dest="batch_size", type=int)
    f.add_argument("--optimizer", choices=["adam", "adamw", "sgd"])
    f.add_argument("--weight-decay", dest="weight_decay", type=float)
    f.add_argument("--schedule", choices=["cosine", "constant"])
    f.add_argument(
        "--regularizer",
        choices=["l2sp", "l2", "none"],
        help="l2sp: pull the backbone toward its pretrained weights (see --alpha, --beta)",
    )
    f.add_argument(
        "--batchnorm",
        choices=["recalibrate", "frozen", "train"],
        help="BatchNorm of trained layers: re-estimate its statistics after training "
        "(recalibrate, default), keep it in inference mode (frozen), or train it (train)",
    )
    f.add_argument("--alpha", type=float, help="l2sp: strength toward the starting weights")
    f.add_argument("--beta", type=float, help="l2sp/l2: L2 strength on the head (l2: on all)")
    f.add_argument("--anchor", help="l2sp: a .safetensors file to pull toward instead")
    f.add_argument("--precision", choices=["32", "bf16-mixed", "16-mixed"])
    f.add_argument("--nproc", type=int, help="processes under the framework's launcher (ddp)")
    f.add_argument("--strategy", choices=["ddp"], help="set by --nproc in each process")
    f.add_argument("--timeout", type=float, help="seconds a process waits for the others")
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
    pt.add_argument("--framework", help="default: the one whose layouts are canonical")
    pt.add_argument("--out", help="output file (default: the file shipped in the package)")
    pt.add_argument("--seed", type=int, default=0)
    pt.set_defaults(func=_pretrain)

    add_parsers(sub)  # rank, find-lr, search
    cli_deploy.add_parsers(sub)  # predict, export
    cli_data.add_parsers(sub)  # cache

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
