"""Loaders for the data users have: image folders, CSV/JSONL tables, ``.npz`` files."""

from __future__ import annotations

import io
import os
import re
import stat
import tokenize
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import Dataset
from .errors import EmptyDataError, InputDTypeError, InputShapeError, LabelError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def _rgb01(im: Any) -> np.ndarray:
    """A PIL image as RGB float32 in [0, 1], 16-bit images scaled by their own range."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        grey = np.asarray(im, dtype=np.float64)
        grey = grey / (65535.0 if grey.max() <= 65535 else 2**31 - 1)  # 16-bit, or 32
        return np.repeat(np.clip(grey, 0.0, 1.0)[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def regular(path: Path) -> None:
    """Refuse anything but a regular file before opening it: a FIFO, a device or a socket
    named like an image would block a reader forever."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO, device or socket"
        raise OSError(f"{str(path)!r} is {kind}, not a regular file")


#: decoded pixels an image may have per byte of its file (deflate expands at most ~1032-fold)
#: and whatever its size (2 Mpx); more is a decompression bomb, refused before decoding
PIXELS_PER_BYTE, MIN_PIXELS = 1100, 1 << 21


def _check_pixels(path: Path, w: int, h: int) -> None:
    size = os.stat(path).st_size
    if w * h > max(MIN_PIXELS, PIXELS_PER_BYTE * size):
        raise OSError(
            f"it declares {w}x{h} pixels in {size:,} bytes, more than any real image of that "
            "size decodes to (a decompression bomb)"
        )


def _open(path: Path) -> Any:
    """A PIL image of ``path`` (pillow comes with matplotlib; imported only here), decoded
    from its bytes in memory: PIL reads some chunks by the length their header declares (a
    PNG's IDAT), which from a file object allocates that length up front, so 300 crafted
    bytes could ask for gigabytes."""
    from PIL import Image

    regular(path)
    im = Image.open(io.BytesIO(path.read_bytes()))
    _check_pixels(path, *im.size)
    return im


def _read_image(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    from .preprocess import resize

    with _open(path) as im:
        arr = _rgb01(im)
    return resize(arr[None], size)[0] if size is not None else arr


def _probe(path: Path) -> tuple[int, int]:
    """An image file's (H, W) from its header, after a cheap check that it is complete:
    a JPEG ends with its end-of-image marker and a PNG with its IEND chunk, so a file cut
    short is found without decoding it."""
    from PIL import Image

    regular(path)
    with Image.open(path) as im:
        w, h = im.size
        fmt = im.format
    _check_pixels(path, w, h)
    if fmt in ("JPEG", "PNG"):
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 1024))
            tail = f.read()
        if (b"\xff\xd9" if fmt == "JPEG" else b"IEND") not in tail:
            # no end marker near the end: cut short, or data appended after the image
            # (camera files do that); decoding it decides
            with _open(path) as im:
                try:
                    im.load()
                except OSError as e:
                    raise OSError(f"the {fmt} file is truncated ({e})") from None
    return h, w


def image_files(
    paths: Sequence[str | Path],
    labels: Sequence[Any] | None = None,
    classes: Sequence[str] | None = None,
    size: tuple[int, int] | None = None,
    strict: bool = False,
    lazy: bool = True,
    name: str = "",
) -> Dataset:
    """Images from a list of files (labels optional), decoded when a batch needs them
    (``lazy=False``: all now, in memory) as RGB float32 in [0, 1], resized to ``size``
    (H, W) when given, else all must share one size.

    Every file's header is read up front (in parallel): a file that cannot be read, or
    a JPEG/PNG cut short, is named in a warning and skipped (``strict=True``: an error).
    """
    from .errors import warn
    from .lazy import LazyImages, files_identity, pool

    paths = [Path(p) for p in paths]
    if not paths:
        raise EmptyDataError("no image files given")
    if labels is not None and len(labels) != len(paths):
        raise LabelError(f"{len(paths)} image files but {len(labels)} labels")

    def probe(p: Path) -> tuple[int, int] | str:
        try:
            return _probe(p)
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds on a bad file
            return f"{type(e).__name__}: {e}"

    found = list(pool().map(probe, paths))
    bad = {str(p): r for p, r in zip(paths, found, strict=True) if isinstance(r, str)}
    if bad:
        listed = "; ".join(f"{p} ({r})" for p, r in list(bad.items())[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        if strict or len(bad) == len(paths):
            raise InputDTypeError(
                f"cannot read {len(bad)} image file(s): {listed}{more}; remove or replace them"
            )
        warn(f"skipped {len(bad)} unreadable image file(s): {listed}{more}")
    keep = [i for i, r in enumerate(found) if not isinstance(r, str)]
    if labels is not None and classes is not None and bad:
        left = {str(labels[i]) for i in keep}
        emptied = [c for j, c in enumerate(classes) if str(j) not in left and str(c) not in left]
        if emptied:
            raise EmptyDataError(
                f"class(es) {', '.join(map(repr, emptied[:5]))} of {name or 'the list'!r} have "
                f"no readable image: every file of theirs was skipped ({listed}{more}); "
                "replace the files or remove the class folder"
            )
    paths = [paths[i] for i in keep]
    y = None if labels is None else np.asarray([labels[i] for i in keep])
    sizes = {found[i] for i in keep}
    if size is None and len(sizes) > 1:
        raise InputShapeError(
            f"images in {name or 'the list'!r} have different sizes "
            f"{sorted(sizes)[:3]}...; pass size=(H, W) to resize them"
        )
    h, w = tuple(size) if size is not None else sizes.pop()
    x = LazyImages(
        lambda j: _read_image(paths[j], size),
        len(paths),
        (h, w, 3),
        files_identity(paths, size),
        names=[str(p) for p in paths],
    )
    data = Dataset(x, y, list(classes) if classes is not None else None, name=name)
    if not lazy:
        data.x = np.asarray(x)
    return data


def image_folder(
    root: str | Path,
    size: tuple[int, int] | None = None,
    strict: bool = False,
    lazy: bool = True,
) -> Dataset:
    """Load ``root/<class>/*.png|jpg`` as RGB float32 images in [0, 1], decoded when a
    batch needs them (``lazy=False``: all now, in memory).

    Classes are the sub-directory names in sorted order. Images are resized to
    ``size`` (H, W) when given, else all must share one size. Unreadable or truncated
    files are named in a warning and skipped (``strict=True``: an error).
    """
    root = Path(root)
    if not root.is_dir():
        raise EmptyDataError(
            f"image folder {str(root)!r} "
            + ("is a file, not a folder" if root.exists() else "does not exist")
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise EmptyDataError(
            f"image folder {str(root)!r} has no class sub-directories; expected root/<class>/*.png"
        )
    files, ys = [], []
    for c, name in enumerate(classes):
        found = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise EmptyDataError(f"class folder {str(root / name)!r} holds no images")
        files += found
        ys += [c] * len(found)
    return image_files(files, ys, classes, size, strict, lazy, name=root.name)


def read_table(
    path: str | Path,
    text: str = "text",
    label: str = "label",
    classes: Sequence[str] | None = None,
    encoding: str = "utf-8",
) -> Dataset:
    """Texts and labels from a CSV or JSONL file (one object per line), read as UTF-8
    (a byte-order mark is skipped) unless ``encoding`` says otherwise.

    Labels may be class names (mapped to indices in sorted order, or in the order of
    ``classes``) or integers. Every row must have a text and a label.
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise EmptyDataError(
            f"{str(path)!r} " + ("is not a regular file" if path.exists() else "does not exist")
        )
    try:
        content = path.read_bytes().decode("utf-8-sig" if encoding == "utf-8" else encoding)
    except UnicodeDecodeError as e:
        raise InputDTypeError(
            f"{str(path)!r} is not {encoding} text (byte {e.start}: {e.reason}); save it as "
            "UTF-8, or pass encoding='latin-1' (say) to read_table"
        ) from None
    except LookupError:
        raise InputDTypeError(f"unknown encoding {encoding!r}") from None
    rows: list[Any]
    if path.suffix.lower() in {".jsonl", ".ndjson"}:
        rows = []
        for n, line in json_lines(content):
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as e:
                why = "nested too deeply" if isinstance(e, RecursionError) else e
                raise InputDTypeError(f"{str(path)!r} line {n} is not valid JSON: {why}") from None
            if not isinstance(row, dict):
                raise InputDTypeError(
                    f"{str(path)!r} line {n} is a JSON {type(row).__name__}, not an object "
                    f'like {{"{text}": "...", "{label}": "..."}}'
                )
            rows.append((n, row))
    else:
        rows = [(n, r) for n, r in enumerate(csv_rows(content, path), start=2)]
    if not rows:
        raise EmptyDataError(f"{str(path)!r} holds no rows")
    for col in (text, label):
        if col not in rows[0][1]:
            raise LabelError(
                f"{str(path)!r} has no column {col!r} (columns: "
                f"{', '.join(map(str, rows[0][1]))}); pass text=... and label=... to name them"
            )
    texts, raw = [], []
    for n, r in rows:
        t, v = r.get(text), r.get(label)
        if v is None or (isinstance(v, str) and not v.strip()):
            raise LabelError(f"{str(path)!r} line {n} has no {label!r}: every row needs a label")
        if not isinstance(t, str):
            raise InputDTypeError(
                f"{str(path)!r} line {n}: {text!r} is {type(t).__name__} {t!r:.40}, not text"
            )
        if isinstance(v, (dict, list, float, bool)):
            raise LabelError(
                f"{str(path)!r} line {n}: label {v!r:.40} is not a class name or an integer"
            )
        texts.append(t)
        raw.append(v)
    if all(isinstance(v, int) or _INTEGER.match(v.strip()) for v in raw) and classes is None:
        values = [int(v) for v in raw]
        big = next((v for v in values if not -(2**63) <= v < 2**63), None)
        if big is not None:
            raise LabelError(
                f"{str(path)!r}: label {big} does not fit a 64-bit integer; labels are class "
                "indices 0..C-1 or class names"
            )
        y = np.array(values, dtype=np.int64)
        names = None
    else:
        names = list(classes) if classes is not None else sorted({str(v) for v in raw})
        unknown = sorted({str(v) for v in raw} - set(names))
        if unknown:
            raise LabelError(f"labels {unknown[:5]} are not in classes {names}")
        index = {c: i for i, c in enumerate(names)}
        y = np.array([index[str(v)] for v in raw], dtype=np.int64)
    return Dataset(texts, y, names, name=path.stem)


#: an integer label as text: ASCII digits with an optional minus (not "²", "--5" or "1e3")
_INTEGER = re.compile(r"-?[0-9]+\Z")


def json_lines(content: str) -> list[tuple[int, str]]:
    """The non-blank lines of JSONL text with their numbers. Lines end at ``\n`` (and
    ``\r\n``) only: U+2028, U+0085 and the other separators ``str.splitlines`` knows
    may stand inside a JSON string."""
    out = []
    for n, line in enumerate(content.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            out.append((n, line))
    return out


def csv_rows(content: str, path: Path) -> list[dict[str, Any]]:
    """A CSV table's rows as dicts. A field may be as long as the file (a whole article);
    a malformed file is an :class:`InputDTypeError` naming it."""
    import csv

    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(content) + 1))
    try:
        return list(csv.DictReader(io.StringIO(content, newline="")))
    except csv.Error as e:
        raise InputDTypeError(f"{str(path)!r} is not a valid CSV table: {e}") from None
    finally:
        csv.field_size_limit(limit)


#: deflate expands at most ~1032-fold: a member that claims more is not a real one
_INFLATE = 1100


def _npy_header(f: Any) -> tuple[tuple[int, ...], np.dtype]:
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):  # 3.0: 2.0's layout with a UTF-8 header
        shape, _, dtype = fmt.read_array_header_2_0(f)
    else:
        raise ValueError(f"unknown .npy format version {version}")
    return shape, dtype


def npy_header_fits(path: Path) -> bool:
    """Whether an ``.npy`` file's declared header length fits in the file. numpy reads a
    header by the length it declares, allocating it before checking it, so a flipped
    byte there could ask for gigabytes."""
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    if len(head) < 10 or head[:6] != b"\x93NUMPY":
        return False
    if head[6] == 1:
        return int.from_bytes(head[8:10], "little") <= size - 10
    return len(head) == 12 and int.from_bytes(head[8:12], "little") <= size - 12


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, each checked before it is read: no object arrays,
    and a declared shape that fits the bytes the file holds (a header that claims a huge
    shape is refused, not allocated). Raises ``ValueError`` naming what is wrong."""
    import zipfile
    import zlib

    path = Path(path)
    regular(path)
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            single = f.read(6) == b"\x93NUMPY"
        raise ValueError(
            "it holds a single array, not named arrays x and y"
            if single
            else "it is not an .npz (zip) archive"
        )
    out: dict[str, np.ndarray] = {}
    total = os.stat(path).st_size
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.is_dir():
                    continue
                if info.header_offset + info.compress_size > total:
                    raise ValueError(
                        f"member {info.filename!r} claims {info.compress_size} bytes past the "
                        f"end of the {total}-byte file: the archive is corrupt"
                    )
                name = info.filename.removesuffix(".npy")
                stored = info.compress_type == zipfile.ZIP_STORED
                bound = info.compress_size if stored else _INFLATE * info.compress_size + 4096
                if info.file_size > bound:
                    raise ValueError(
                        f"member {name!r} claims {info.file_size} bytes from "
                        f"{info.compress_size} compressed: the archive is corrupt"
                    )
                with z.open(info) as f:
                    try:
                        shape, dtype = _npy_header(f)
                    except (ValueError, SyntaxError, TypeError, tokenize.TokenError) as e:
                        msg = f"array {name!r} has a malformed .npy header ({e})"
                        raise ValueError(msg) from None
                    header = f.tell()
                if dtype.hasobject:
                    raise ValueError(f"array {name!r} holds Python objects, which are not read")
                n = 1
                for d in shape:
                    n *= int(d)
                if n * dtype.itemsize > info.file_size - header:
                    raise ValueError(
                        f"array {name!r} declares shape {shape} ({n * dtype.itemsize} bytes) "
                        f"but the file holds {info.file_size - header}: it is corrupt"
                    )
                with z.open(info) as f:
                    out[name] = np.lib.format.read_array(f, allow_pickle=False)
                if out[name].size != n:
                    raise ValueError(f"array {name!r} is shorter than its header says")
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
        raise ValueError(f"the archive is corrupt ({type(e).__name__}: {e})") from None
    return out


def load_npz(path: str | Path) -> Dataset:
    """Load ``x``, ``y`` (and optional ``classes``) arrays from an ``.npz`` file."""
    try:
        f = read_npz(path)
    except (OSError, ValueError) as e:
        raise InputDTypeError(
            f"cannot read {str(path)!r} as an .npz of arrays x and y ({e}); write it with "
            "numpy.savez(path, x=..., y=...) (object arrays are not read)"
        ) from None
    if "x" not in f:
        raise EmptyDataError(f"{str(path)!r} has no array named 'x' (found {list(f)})")
    classes = None
    if "classes" in f:
        c = f["classes"]
        if c.ndim != 1 or c.dtype.kind not in "USiu":
            raise InputDTypeError(
                f"{str(path)!r}: 'classes' must be a 1-D array of class names, got shape "
                f"{c.shape} of {c.dtype}"
            )
        classes = [str(v) for v in c.tolist()]
    return Dataset(f["x"], f.get("y"), classes, name=Path(path).stem)


def load(path: str | Path, size: tuple[int, int] | None = None) -> Dataset:
    """Load a data set from an image folder or an ``.npz`` file."""
    if not isinstance(path, (str, Path)):
        raise EmptyDataError(f"tk.data.load() needs a path, got {type(path).__name__}")
    p = Path(path)
    if p.is_dir():
        return image_folder(p, size=size)
    if p.suffix == ".npz" and p.is_file():
        return load_npz(p)
    if p.suffix.lower() in {".csv", ".jsonl", ".ndjson"} and p.is_file():
        return read_table(p)
    raise EmptyDataError(
        f"cannot load data from {str(p)!r}: expected an image folder (root/<class>/*.png), "
        "an .npz file with arrays x and y, or a .csv/.jsonl file with text and label columns"
    )
