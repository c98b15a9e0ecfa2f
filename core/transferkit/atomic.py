"""Atomic directory writes: a kill at any instant leaves a complete directory behind.

A directory (a saved model, a training checkpoint) is written in full beside its
target under a hidden name, its completion marker last, and swapped in with two
renames. A rename of a directory onto another one is impossible on POSIX, so the
swap has an instant where the target is absent; :func:`recover` (called by every
read and write of the target) finishes an interrupted swap from what lies beside
it, preferring the new complete copy to the old one. The old copy loses its
marker before it is deleted, so a half-deleted copy is never taken for a complete
one. Temporaries of processes that died are removed by the next write.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from .errors import ModelDirError, OverwriteError

NEW, OLD = "tk-new", "tk-old"


def _step(name: str) -> None:
    """A named instant of the swap; tests replace this to kill the process there."""


def _temporaries(target: Path, kind: str) -> list[Path]:
    try:
        found = list(target.parent.glob(f".{target.name}.{kind}-*"))
    except OSError:
        return []
    return sorted((p for p in found if p.is_dir()), key=lambda p: p.stat().st_mtime)


def _pid(path: Path) -> int:
    try:
        return int(path.name.rsplit(".", 1)[1].split("-")[2])
    except (IndexError, ValueError):
        return -1


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path, marker: str) -> None:
    """Delete a copy, its marker first, so that no reader ever takes it for complete."""
    with contextlib.suppress(OSError):
        (path / marker).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def recover(target: str | Path, marker: str) -> bool:
    """Finish a swap that was interrupted between its two renames: put the newest
    complete copy (new before old) at ``target``. True if something was recovered."""
    target = Path(target)
    if target.exists() or target.is_symlink():
        return False
    for kind in (NEW, OLD):
        for candidate in reversed(_temporaries(target, kind)):
            if (candidate / marker).is_file() and not _alive_other(candidate):
                try:
                    os.replace(candidate, target)
                except OSError:
                    continue
                _fsync(target.parent)
                return True
    return False


def _alive_other(path: Path) -> bool:
    """A temporary that another live process is still writing or swapping, or one whose
    name transferkit did not make (no pid in it): either way not this process's to take."""
    pid = _pid(path)
    return pid <= 0 or (pid != os.getpid() and _alive(pid))


def clean(target: str | Path, marker: str) -> None:
    """Remove temporaries of ``target`` left by processes that are gone."""
    target = Path(target)
    for kind in (NEW, OLD):
        for p in _temporaries(target, kind):
            if not _alive_other(p):
                _remove(p, marker)


def write_dir(
    target: str | Path,
    fill: Callable[[Path], None],
    marker: str,
    check_target: Callable[[Path], None] | None = None,
    what: str = "directory",
) -> Path:
    """Write a directory atomically: ``fill(tmp)`` writes its files (``marker`` last),
    then it replaces ``target``. ``check_target`` may refuse an existing target (one
    that is not ours). Any ``OSError`` becomes a :class:`ModelDirError` naming the path;
    the previous ``target`` survives every failure."""
    target = Path(target)
    if target.is_symlink():
        raise OverwriteError(
            f"cannot write the {what} {str(target)!r}: it is a symbolic link, and transferkit "
            "does not write through links; choose another path"
        )
    if target.parent.exists() and not target.parent.is_dir():
        raise ModelDirError(
            f"cannot write the {what} {str(target)!r}: {str(target.parent)!r} is a file, not a "
            "directory; choose another path"
        )
    if target.is_file() or (target.exists() and not target.is_dir()):
        raise OverwriteError(
            f"cannot write the {what} {str(target)!r}: a file of that name exists, and "
            "transferkit does not replace it; move it away or choose another path"
        )
    recover(target, marker)
    if check_target is not None:
        check_target(target)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = target.parent / f".{target.name}.{NEW}-{token}"
    old = target.parent / f".{target.name}.{OLD}-{token}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean(target, marker)
        tmp.mkdir()
        _step("writing")
        fill(tmp)
        if not (tmp / marker).is_file():
            raise RuntimeError(f"atomic write of {target}: fill() wrote no {marker}")
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync(f)
        _step("filled")
        if check_target is not None:
            check_target(target)  # nothing of a user's arrived while fill() ran
        if target.exists():
            os.replace(target, old)
            _step("moved-old")
        os.replace(tmp, target)
        _fsync(target.parent)
        _step("moved-new")
        if old.exists():
            (old / marker).unlink(missing_ok=True)
            _step("cleaning")
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        if not target.exists() and old.is_dir():
            os.replace(old, target)  # put the previous copy back
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise ModelDirError(
                f"cannot write the {what} {str(target)!r}: {e.strerror or e}; choose a "
                "writable directory (the previous contents, if any, are unchanged)"
            ) from None
        raise
    return target
