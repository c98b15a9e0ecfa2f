"""The command line's deployment commands: ``predict`` (a saved model on new inputs)
and ``export`` (a saved model to ONNX, ``torch.export``, SavedModel, LiteRT or
``jax.export``)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import owned
from .errors import ConfigError, EmptyDataError, ModelDirError

OUT_SUFFIXES = (".csv", ".jsonl")


def _model(path: str, framework: str | None):
    from .saving import load

    if not Path(path).is_dir():
        raise ModelDirError(
            f"model directory {path!r} does not exist; pass the directory "
            "`transferkit fit --out` saved the model to"
        )
    return load(path, framework=framework)


def _check_kind(model, kind: str) -> None:
    want = {"image": "image", "text": "text", "array": model.spec.input_kind}[kind]
    if want != model.spec.input_kind:
        raise ConfigError(
            f"{model.spec.name!r} takes {model.spec.input_kind} inputs, but --data holds "
            f"{want}s; pass " + ("an image folder or image files" if model.spec.input_kind ==
            "image" else "a .csv/.jsonl table of texts" if model.spec.input_kind == "text"
            else "an .npz with an array x")
        )  # fmt: skip


def _rows(model, ids: list[str], out: np.ndarray, top_k: int | None) -> list[dict[str, Any]]:
    if model.task != "classification":
        pairs = zip(ids, out, strict=True)
        return [{"input": i, "values": [float(v) for v in row]} for i, row in pairs]
    names = model.classes or [str(c) for c in range(out.shape[1])]
    rows = []
    for i, p in zip(ids, out, strict=True):
        order = np.argsort(-p, kind="stable")
        row: dict[str, Any] = {"input": i, "prediction": names[order[0]]}
        row["probability"] = float(p[order[0]])
        if top_k:
            row["top_k"] = [[names[c], float(p[c])] for c in order[:top_k]]
        else:
            row["probabilities"] = {n: float(v) for n, v in zip(names, p, strict=True)}
        rows.append(row)
    return rows


class _Writer:
    """Rows to CSV (one column per class probability, or per top-k rank) or JSONL."""

    def __init__(self, stream: TextIO, fmt: str):
        self.stream, self.fmt, self.csv = stream, fmt, None

    def _flat(self, row: dict[str, Any]) -> dict[str, Any]:
        flat = {k: v for k, v in row.items() if not isinstance(v, (dict, list))}
        for n, v in row.get("probabilities", {}).items():
            flat[f"p({n})"] = f"{v:.6g}"
        for r, (n, v) in enumerate(row.get("top_k", []), start=1):
            flat[f"top{r}"], flat[f"p{r}"] = n, f"{v:.6g}"
        for j, v in enumerate(row.get("values", [])):
            flat[f"value{j}"] = f"{v:.6g}"
        if "probability" in flat:
            flat["probability"] = f"{flat['probability']:.6g}"
        return flat

    def write(self, row: dict[str, Any]) -> None:
        if self.fmt == ".jsonl":
            self.stream.write(json.dumps(row) + "\n")
            return
        flat = self._flat(row)
        if self.csv is None:
            self.csv = csv.DictWriter(self.stream, fieldnames=list(flat), extrasaction="ignore")
            self.csv.writeheader()
        self.csv.writerow(flat)


def _predict(args: argparse.Namespace) -> int:
    from . import validate
    from .sources import open_source

    batch_size = validate.integer("--batch-size", args.batch_size, 1, 1 << 16)
    top_k = None if args.top_k is None else validate.integer("--top-k", args.top_k, 1, 1 << 16)
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in OUT_SUFFIXES:
        raise ConfigError(f"--out {args.out!r}: write predictions to a .csv or .jsonl file")
    if out is not None and not out.parent.is_dir():
        raise ConfigError(f"--out {args.out!r}: the directory {str(out.parent)!r} does not exist")
    if out is not None:
        owned.check_file(out, "predictions")  # before any work: a user's file is refused
    source = open_source(args.data, args.text_column)  # the data first: fast to fail
    model = _model(args.model, args.framework)
    _check_kind(model, source.kind)
    size = tuple(model.input_shape[:2]) if model.spec.input_kind == "image" else None
    failed: dict[str, str] = {}

    def run(stream: TextIO) -> None:
        done, t0, shown = 0, time.monotonic(), 0.0
        writer = _Writer(stream, out.suffix.lower() if out else ".csv")
        for batch in source.batches(batch_size, size):
            failed.update(batch.failed)
            if batch.ids:
                probs = model.predict(batch.x, batch_size=batch_size)
                for row in _rows(model, batch.ids, probs, top_k):
                    writer.write(row)
            done += len(batch.ids) + len(batch.failed)
            now = time.monotonic()
            if len(source) > batch_size and (now - shown > 0.5 or done == len(source)):
                rate = done / max(now - t0, 1e-9)
                print(f"\rpredict: {done}/{len(source)} ({rate:.0f}/s)", end="", file=sys.stderr)
                shown = now
        if len(source) > batch_size:
            print(file=sys.stderr)
        if failed:
            n = len(source)
            print(f"{len(failed)} of {n} inputs could not be read (skipped):", file=sys.stderr)
            for i, why in failed.items():
                print(f"  {i}: {why}", file=sys.stderr)
        if len(failed) == len(source):
            raise EmptyDataError("no input could be read; nothing was predicted")

    def fill(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as stream:
            run(stream)

    if out is None:
        run(sys.stdout)
        return 0
    # written beside --out and renamed at the end: a failed run leaves any old file whole
    owned.write_file(out, fill, "predictions")
    print(f"{len(source) - len(failed)} predictions in {out}", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    model = _model(args.model, args.framework)
    path = model.export(args.out, format=args.format)
    print((path.parent / f"{path.name}.json").read_text())
    print(f"exported to {path}", file=sys.stderr)
    return 0


def add_parsers(sub: Any) -> None:
    pr = sub.add_parser("predict", help="predict with a saved model on new inputs")
    pr.add_argument("model", help="a saved model directory (transferkit fit --out)")
    pr.add_argument(
        "--data", required=True, nargs="+",
        help="an image folder (recursive), image files, an .npz with x, or a .csv/.jsonl of texts",
    )  # fmt: skip
    pr.add_argument("--out", help="predictions.csv or .jsonl (default: CSV on stdout)")
    pr.add_argument("--framework", help="run it in another framework")
    pr.add_argument("--top-k", type=int, help="the K most probable classes instead of all")
    pr.add_argument("--batch-size", type=int, default=64)
    pr.add_argument("--text-column", default="text", help="the text column of a table")
    pr.set_defaults(func=_predict)

    ex = sub.add_parser("export", help="export a saved model for deployment (checked after)")
    ex.add_argument("model", help="a saved model directory (transferkit fit --out)")
    ex.add_argument("--format", required=True, help="onnx, torch-export, savedmodel, tflite or jax")
    ex.add_argument("--out", required=True, help="the file (or directory for savedmodel)")
    ex.add_argument("--framework", help="load the model in this framework first")
    ex.set_defaults(func=_export)
