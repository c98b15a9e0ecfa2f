"""Writers own what they write: the proof that transferkit wrote a path, checked before
anything at that path is replaced or deleted.

Directories carry their own proof (a saved model's ``config.json`` with its ``format``
field, a checkpoint's ``state.json``, a feature-cache entry's ``meta.json`` whose key
hashes to the entry's name). Single files — predictions, reports, plots, export sidecars —
cannot carry one without changing what they are, so each directory that transferkit writes
such a file into keeps a record of them: :data:`RECORD` (``.transferkit-written.json``)
maps each file's name to the SHA-256 of the bytes transferkit wrote. A file is
transferkit's to replace when its bytes still hash to the recorded digest; a file that a
user wrote, or edited since, is refused with :class:`~transferkit.errors.OverwriteError`.
A symlink is never written through, and nothing outside the named path is touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import ModelDirError, OverwriteError

RECORD = ".transferkit-written.json"
#: the largest proof read: a record or a model's config.json (a million class names)
_RECORD_MAX = 16 << 20


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: Path, max_bytes: int = _RECORD_MAX, kind: type = dict) -> Any:
    """A small JSON document that transferkit may have written (a proof of authorship, a
    log), or None when ``path`` is no regular file, is larger than ``max_bytes``, or holds
    anything but readable JSON of type ``kind``: the caller then proves nothing and
    replaces nothing."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > max_bytes:
            return None
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, kind) else None


def _record(directory: Path) -> dict[str, str] | None:
    """The record's files and digests: {} when there is none, None when one is there but
    unreadable (then it is left as it is: rewriting it would drop every file's proof)."""
    path = directory / RECORD
    if not path.exists() and not path.is_symlink():
        return {}
    doc = read_json(path)
    files = doc.get("files") if doc is not None else None
    if not isinstance(files, dict):
        return None
    return {k: v for k, v in files.items() if isinstance(k, str) and isinstance(v, str)}


def _write_record(directory: Path, files: dict[str, str]) -> None:
    path = directory / RECORD
    if path.is_symlink() or (path.exists() and not path.is_file()):
        return  # not ours to replace: the files simply stay unproven
    live = {k: v for k, v in files.items() if (directory / k).is_file()}
    tmp = directory / f".{RECORD}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
    doc = {"written_by": "transferkit", "files": dict(sorted(live.items()))}
    try:
        tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def wrote(path: str | Path) -> bool:
    """True if ``path`` is a regular file whose bytes are what transferkit recorded
    writing there."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    want = (_record(path.parent) or {}).get(path.name)
    try:
        return want is not None and digest(path) == want
    except OSError:
        return False


def check_file(path: str | Path, what: str) -> Path:
    """Refuse ``path`` as a place to write ``what`` unless it is free, or a file that
    transferkit wrote (:func:`wrote`). Called before any work, so a refusal costs none."""
    path = Path(path)
    if path.is_symlink():
        raise OverwriteError(
            f"{str(path)!r} is a symbolic link; transferkit does not write the {what} "
            "through links: choose another path"
        )
    if path.is_dir():
        raise OverwriteError(
            f"{str(path)!r} is a directory; the {what} is a file: choose a file path"
        )
    if path.exists() and not wrote(path):
        raise OverwriteError(
            f"{str(path)!r} exists and transferkit did not write it (or it was changed since); "
            f"refusing to replace it with the {what}: move it away or choose another path"
        )
    return path


def write_file(path: str | Path, fill: Callable[[Path], None], what: str) -> Path:
    """Write one file the way every transferkit writer does: ``path`` checked
    (:func:`check_file`), ``fill(tmp)`` writes a temporary beside it, which is renamed
    onto ``path`` when complete and recorded as transferkit's. A failure leaves any
    previous file whole."""
    path = check_file(path, what)
    if path.parent.exists() and not path.parent.is_dir():
        raise OverwriteError(f"cannot write the {what} {str(path)!r}: its parent is a file")
    tmp = path.with_name(f".{path.name}.tk-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fill(tmp)
        check_file(path, what)  # nothing appeared there while we wrote
        os.replace(tmp, path)
    except OSError as e:
        raise ModelDirError(
            f"cannot write the {what} {str(path)!r}: {e.strerror or e}; choose a writable "
            "directory (a previous file, if any, is unchanged)"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    with contextlib.suppress(OSError):  # written either way; unrecorded, it stays unproven
        record(path)
    return path


def write_text(path: str | Path, text: str, what: str) -> Path:
    """:func:`write_file` for text (UTF-8)."""
    return write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), what)


def record(*paths: Path) -> None:
    """Note ``paths`` (files transferkit just wrote, in one directory) as transferkit's.
    The record is read, changed and replaced under a lock on its directory, so writers in
    one directory (two benchmark scripts, say) keep each other's entries."""
    by_dir: dict[Path, list[Path]] = {}
    for p in paths:
        by_dir.setdefault(p.parent, []).append(p)
    for directory, files in by_dir.items():
        with _locked(directory):
            known = _record(directory)
            if known is None:
                continue
            known.update({p.name: digest(p) for p in files})
            _write_record(directory, known)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    import fcntl

    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def only(directory: Path, allowed: Iterable[str]) -> list[str]:
    """The names in ``directory`` outside ``allowed`` (sorted): a user's additions."""
    allowed = set(allowed)
    try:
        return sorted(p.name for p in directory.iterdir() if p.name not in allowed)
    except OSError:
        return []


def save_figure(fig: object, path: str | Path, what: str, **savefig: object) -> Path:
    """:func:`write_file` for a matplotlib figure (the format from the suffix)."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    return write_file(path, lambda tmp: fig.savefig(tmp, format=fmt, **savefig), what)
