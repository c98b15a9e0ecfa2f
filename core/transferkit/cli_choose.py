"""The CLI commands that help choose: ``rank`` (which backbone, how deep), ``find-lr``
(which learning rate) and ``search`` (a hyper-parameter search)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .errors import ConfigError


def lr_value(text: str) -> float | str:
    """``--lr``: a number > 0, or ``auto`` (the learning-rate range test chooses)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def _find_lr(args: argparse.Namespace) -> int:
    from . import freeze as freeze_mod
    from .builder import build
    from .heads import Classifier
    from .lr_finder import find_lr
    from .runconfig import _load_data

    policy = freeze_mod.from_name(args.freeze, **({"n": args.n} if args.n else {}))
    train, _ = _load_data(args.data, args.shots, args.seed)
    shape = tuple(args.input_shape) if args.input_shape else None
    model = build(
        args.backbone, head=Classifier(train.num_classes), input_shape=shape, seed=args.seed
    )
    finder = find_lr(
        model, train, freeze=policy, start=args.start, end=args.end, steps=args.steps,
        batch_size=args.batch_size, seed=args.seed, rule=args.rule,
    )  # fmt: skip
    out: dict[str, Any] = {
        "suggestion": finder.suggestion,
        "rule": finder.rule,
        "suggestions": finder.suggestions,
        "steps": len(finder.lrs),
        "stopped": finder.stopped,
    }
    if args.plot:
        out["plot"] = str(finder.plot(args.plot))
    print(json.dumps(out, indent=2))
    return 0


def _rank(args: argparse.Namespace) -> int:
    from .ranking import rank
    from .runconfig import _load_data

    train, _ = _load_data(args.data, args.shots, args.seed)
    candidates = [c.strip() for c in args.backbones.split(",") if c.strip()]
    if not candidates:
        raise ConfigError("--backbones names no backbone; e.g. --backbones 'torch:*,flax:cnn'")
    ranking = rank(
        candidates, train, metric=args.metric, layers=args.layers, seed=args.seed,
        input_shape=tuple(args.input_shape) if args.input_shape else None,
        verbose=0 if args.json else 1,
    )  # fmt: skip
    if args.out:
        ranking.save(args.out)
    print(ranking.to_json() if args.json else ranking.to_markdown())
    if args.out:
        print(f"results in {args.out}/ (rank.json, rank.md, rank.png)", file=sys.stderr)
    return 0


def _search(args: argparse.Namespace) -> int:
    from .search import search_from_toml

    result = search_from_toml(args.config, storage=args.storage)
    print(result.to_markdown())
    return 0


def add_parsers(sub: Any) -> None:
    """``rank``, ``find-lr`` and ``search`` on the CLI's subparsers."""
    r = sub.add_parser("rank", help="rank backbones by how well their features transfer")
    r.add_argument("--data", required=True, help="labelled data: a path or builtin:digits")
    r.add_argument("--backbones", required=True, help="comma-separated names or globs")
    r.add_argument("--shots", type=int, help="labelled examples per class to sample")
    r.add_argument("--metric", default="logme", help="logme (default), hscore, nleep, knn...")
    r.add_argument("--layers", action="store_true", help="score each layer group too")
    r.add_argument("--input-shape", dest="input_shape", type=int, nargs="+")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", help="directory for rank.json, rank.md and rank.png")
    r.add_argument("--json", action="store_true", help="print JSON instead of a table")
    r.set_defaults(func=_rank)

    f = sub.add_parser("find-lr", help="the learning-rate range test: which lr to fit with")
    f.add_argument("--backbone", required=True)
    f.add_argument("--data", required=True, help="labelled data: a path or builtin:digits")
    f.add_argument("--shots", type=int)
    f.add_argument("--freeze", default="full", help="the policy the fit will use")
    f.add_argument("--n", type=int, help="the policy's n (train_last, unfreeze_at)")
    f.add_argument("--input-shape", dest="input_shape", type=int, nargs="+")
    f.add_argument("--batch-size", dest="batch_size", type=int, default=32)
    f.add_argument("--start", type=float, default=1e-7)
    f.add_argument("--end", type=float, default=10.0)
    f.add_argument("--steps", type=int, default=100)
    f.add_argument("--rule", default="valley", choices=["valley", "steep", "minimum"])
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--plot", help="write the loss-vs-lr plot here (.png)")
    f.set_defaults(func=_find_lr)

    s = sub.add_parser("search", help="hyper-parameter search (Optuna) from a TOML file")
    s.add_argument("--config", required=True, help="the search description (.toml)")
    s.add_argument("--storage", help="an Optuna storage URL: sqlite:///search.db resumes")
    s.set_defaults(func=_search)
