"""Unlabelled inputs for ``transferkit predict``, read a batch at a time.

A source is an image folder (searched recursively; class sub-folders are allowed and
ignored), image files, an ``.npz`` file (its ``x``), or a CSV/JSONL table of texts. Each
input has an id (its path, or its row or index) and is decoded only when its batch is
predicted, so memory stays bounded by the batch. An input that cannot be read is
reported with its id and skipped; the others go on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, EmptyDataError, InputDTypeError
from .loaders import IMAGE_SUFFIXES, _read_image, csv_rows, json_lines, load_npz, regular

TABLE_SUFFIXES = (".csv", ".jsonl", ".ndjson")


@dataclass
class Batch:
    """Inputs that were read (``x``, with their ``ids``) and those that were not
    (``failed``: id -> reason)."""

    ids: list[str]
    x: Any
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class Source:
    kind: str  # "image", "text" or "array"
    ids: list[str]
    items: Sequence[Any]  # paths, texts or array rows, aligned with ids

    def __len__(self) -> int:
        return len(self.ids)

    def batches(self, size: int, image_size: tuple[int, int] | None = None) -> Iterator[Batch]:
        for i in range(0, len(self.ids), size):
            ids, items = self.ids[i : i + size], self.items[i : i + size]
            if self.kind == "image":
                yield _read_images(ids, items, image_size)
            elif self.kind == "text":
                good = [(i, t) for i, t in zip(ids, items, strict=True) if _text_ok(t)]
                failed = {i: _why(t) for i, t in zip(ids, items, strict=True) if not _text_ok(t)}
                yield Batch([i for i, _ in good], [t for _, t in good], failed)
            else:
                yield Batch(list(ids), np.asarray(items))


def _text_ok(t: Any) -> bool:
    return isinstance(t, str) and bool(t.strip())


def _why(t: Any) -> str:
    if isinstance(t, _Bad):
        return t.reason
    return "empty text" if isinstance(t, str) or t is None else f"not text: {t!r:.40}"


class _Bad:
    """A table row that could not be read, with the reason."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _read_images(ids: list[str], paths: Sequence[Path], size: tuple[int, int] | None) -> Batch:
    good, xs, failed = [], [], {}
    for i, p in zip(ids, paths, strict=True):
        try:
            xs.append(_read_image(p, size))  # as the loaders decode and resize
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds on a bad file
            failed[i] = f"{type(e).__name__}: {e}"
            continue
        good.append(i)
    return Batch(good, np.stack(xs) if xs else np.zeros((0, 1, 1, 3), np.float32), failed)


def _images(paths: list[Path]) -> Source:
    return Source("image", [str(p) for p in paths], paths)


def _table(path: Path, column: str) -> Source:
    try:
        regular(path)
    except OSError as e:
        raise InputDTypeError(str(e)) from None
    try:
        content = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputDTypeError(
            f"{str(path)!r} is not UTF-8 text ({e.reason}); save it as UTF-8"
        ) from None
    rows: list[tuple[str, Any]] = []
    if path.suffix.lower() == ".csv":
        table = csv_rows(content, path)
        fields = list(table[0]) if table else []
        if column not in fields:
            raise InputDTypeError(
                f"{str(path)!r} has no column {column!r} (columns: "
                f"{', '.join(map(str, fields)) or 'none'}); pass --text-column"
            )
        rows = [(f"row {n}", r[column]) for n, r in enumerate(table, start=1)]
    else:
        for n, line in json_lines(content):
            if line.strip():
                try:
                    obj = json.loads(line)
                except (json.JSONDecodeError, RecursionError) as e:
                    why = "nested too deeply" if isinstance(e, RecursionError) else e
                    rows.append((f"line {n}", _Bad(f"not valid JSON: {why}")))
                    continue
                if not isinstance(obj, dict) or column not in obj:
                    rows.append((f"line {n}", _Bad(f"no {column!r} field")))
                    continue
                rows.append((f"line {n}", obj[column]))
    return Source("text", [r[0] for r in rows], [r[1] for r in rows])


def _npz(path: Path) -> Source:
    x = load_npz(path).x
    return Source("array", [str(i) for i in range(len(x))], x)


def open_source(data: Sequence[str | Path], text_column: str = "text") -> Source:
    """The inputs named by ``data``: one folder, ``.npz`` or table, or image files."""
    paths = [Path(d) for d in data]
    if not paths:
        raise ConfigError("predict needs --data: an image folder, image files, .npz or table")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise EmptyDataError(f"{', '.join(map(repr, missing[:3]))} does not exist")
    if len(paths) == 1 and paths[0].is_dir():
        files = sorted(
            p for p in paths[0].rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()
        )
        if not files:
            raise EmptyDataError(
                f"image folder {str(paths[0])!r} holds no images ({', '.join(IMAGE_SUFFIXES)})"
            )
        return _images(files)
    if len(paths) == 1 and paths[0].suffix.lower() == ".npz":
        return _npz(paths[0])
    if len(paths) == 1 and paths[0].suffix.lower() in TABLE_SUFFIXES:
        return _table(paths[0], text_column)
    odd = [str(p) for p in paths if p.is_dir() or p.suffix.lower() not in IMAGE_SUFFIXES]
    if odd:
        raise ConfigError(
            f"{', '.join(map(repr, odd[:3]))}: pass one folder, one .npz, one .csv/.jsonl "
            f"table, or image files ({', '.join(IMAGE_SUFFIXES)})"
        )
    return _images(paths)
