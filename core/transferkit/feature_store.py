"""Frozen-backbone features kept on disk, for data that does not fit in memory.

``tk.fit`` with a backbone frozen for the whole run computes its features once. For a
lazy data set (``tk.data.image_folder``), or whenever ``cache_dir=`` is given, they are
computed in one streaming pass into a memory-mapped ``.npy`` file under the cache
directory (default ``$TRANSFERKIT_HOME/features``), keyed by the backbone, its framework,
a digest of its weights, the input size and normalisation, and the examples (files'
names, sizes and times, or the arrays' bytes). The next run with the same key reads the
file instead of running the backbone. An entry is written beside its place and renamed in
when complete, so a kill leaves no entry that looks complete; an entry whose files do
not match its record (its shape, or the SHA-256 of its features, checked on every read)
is rebuilt with a warning. ``transferkit cache`` reports sizes (an interrupted run's
partial entry too) and clears; it removes only entries that transferkit provably wrote
(:func:`is_entry`) and leaves anything else in the directory alone. Sources without a
stable identity (``tk.data.from_pairs``) are not cached on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from . import owned
from .errors import CacheError, warn
from .lazy import is_lazy
from .loaders import npy_header_fits

#: 2: entries carry the SHA-256 of their features (entries of 1 are listed and cleared,
#: never read)
VERSION = 2
META = "meta.json"
DATA = "features.npy"


def home() -> Path:
    base = os.environ.get("TRANSFERKIT_HOME") or Path.home() / ".cache" / "transferkit"
    return Path(base) / "features"


def _weights_digest(model: Any) -> str:
    h = hashlib.sha256()
    for name, arr in sorted(model.get_weights().items()):
        if name.startswith("backbone."):
            a = np.ascontiguousarray(arr)
            h.update(f"{name}{a.shape}{a.dtype}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _data_digest(x: Any) -> str:
    if is_lazy(x):
        return x.identity()
    h = hashlib.sha256()
    if isinstance(x, np.ndarray):
        a = np.ascontiguousarray(x)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    else:
        for t in x:
            h.update(str(t).encode() + b"\0")
    return h.hexdigest()


def key(model: Any, x: Any) -> dict[str, Any]:
    """What identifies a cache entry (everything that changes the features)."""
    return {
        "version": VERSION,
        "backbone": model.spec.name,
        "framework": model.framework,
        "weights": _weights_digest(model),
        "input_shape": list(model.input_shape),
        "mean": list(model.spec.mean),
        "std": list(model.spec.std),
        "options": model.engine.options(),
        "data": _data_digest(x),
    }


def _entry_dir(root: Path, k: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(k, sort_keys=True).encode()).hexdigest()[:32]
    return root / f"{str(k['backbone']).replace(':', '_').replace('/', '_')}-{digest}"


def _checksum(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _meta(entry: Path) -> dict[str, Any] | None:
    """An entry's record, or None when it is missing or not a record of ours."""
    meta = owned.read_json(entry / META)
    if meta is None or not isinstance(meta.get("key"), dict):
        return None
    k = meta["key"]
    if not isinstance(k.get("backbone"), str) or k.get("version") not in (1, VERSION):
        return None
    return meta


def is_entry(entry: Path) -> bool:
    """Proof that transferkit wrote ``entry``: a real directory holding only an entry's
    files, whose ``meta.json`` key hashes to the entry's own name (a partial entry: the
    name of the entry it was becoming)."""
    if entry.is_symlink() or not entry.is_dir():
        return False
    meta = _meta(entry)
    if meta is None:
        return False
    try:
        if any(p.name not in (META, DATA) for p in entry.iterdir()):
            return False
        name = _entry_dir(entry.parent, meta["key"]).name
    except (OSError, TypeError, ValueError):
        return False
    return entry.name == name or entry.name.startswith(f".{name}.partial-")


def _read(entry: Path, k: dict[str, Any], n: int) -> np.ndarray | None:
    """The entry's features, or None when it is missing, partial, corrupt (its content
    no longer hashes to the recorded checksum) or not this key's."""
    meta = _meta(entry)
    if meta is None or meta.get("key") != k or meta.get("complete") is not True:
        return None
    if not npy_header_fits(entry / DATA):
        return None
    try:
        feats = np.load(entry / DATA, mmap_mode="r", allow_pickle=False)
        shape = tuple(meta.get("shape", ()))
    except Exception:  # noqa: BLE001 - numpy's header parser raises many kinds; all: corrupt
        return None
    if feats.ndim < 1 or feats.shape[0] != n or feats.shape != shape:
        return None
    if feats.dtype != np.float32 or meta.get("sha256") != _checksum(entry / DATA):
        return None
    return feats


def features(
    model: Any, x: Any, cache_dir: str | Path | None = None, batch_size: int = 128
) -> np.ndarray:
    """The backbone's features of ``x``, from the cache or computed into it (memory
    mapped, read-only)."""
    root = Path(cache_dir) if cache_dir is not None else home()
    k = key(model, x)
    entry = _entry_dir(root, k)
    if entry.exists() or entry.is_symlink():
        found = _read(entry, k, len(x))
        if found is not None:
            return found
        if not is_entry(entry):
            raise CacheError(
                f"{str(entry)!r} is in the feature cache's place for these features but is not "
                "a cache entry transferkit wrote; it was left alone: move it away, or pass "
                "cache_dir= another directory"
            )
        warn(f"the feature cache entry {str(entry)!r} is incomplete or corrupt; rebuilding it")
        shutil.rmtree(entry, ignore_errors=True)
    tmp = entry.with_name(f".{entry.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True)
        # the record first, so that a partial entry is provably transferkit's (--clear)
        (tmp / META).write_text(json.dumps({"key": k, "complete": False}, indent=1))
        out = None
        done = 0
        for batch in model.prepared_batches(x, batch_size):
            f = np.asarray(model.engine.features(batch), dtype=np.float32)
            if out is None:
                shape = (len(x), *f.shape[1:])
                out = np.lib.format.open_memmap(tmp / DATA, "w+", np.float32, shape)
            out[done : done + len(f)] = f
            done += len(f)
        if out is None:
            raise CacheError("no examples to compute features of")
        out.flush()
        del out
        meta = {
            "key": k,
            "complete": True,
            "shape": list(shape),
            "sha256": _checksum(tmp / DATA),
            "created": time.time(),
        }
        (tmp / META).write_text(json.dumps(meta, indent=1))
        try:
            tmp.rename(entry)
        except OSError:
            if _read(entry, k, len(x)) is None:  # not another run's complete entry
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another run finished it first
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CacheError(
            f"cannot write the feature cache in {str(root)!r} ({e.strerror or e}); pass "
            "cache_dir= a writable directory with room for it, or cache_features=False"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return np.load(entry / DATA, mmap_mode="r")


def _size(d: Path) -> int:
    try:
        return sum(f.stat().st_size for f in d.iterdir() if f.is_file())
    except OSError:
        return 0


def _listing(root: Path) -> list[Path]:
    if not root.is_dir():  # the root may be a link (to a larger disk): entries may not
        return []
    try:
        return sorted(root.iterdir())
    except OSError as e:
        raise CacheError(
            f"cannot read the feature cache {str(root)!r}: {e.strerror or e}"
        ) from None


def entries(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every entry under the cache directory: name, backbone, examples, size in bytes.
    Only what transferkit wrote (:func:`is_entry`) is an entry; see :func:`foreign`."""
    root = Path(cache_dir) if cache_dir is not None else home()
    out = []
    for d in _listing(root):
        if not is_entry(d):
            continue
        meta = _meta(d) or {}
        shape = meta.get("shape")
        out.append(
            {
                "entry": d.name,
                "backbone": meta["key"]["backbone"],
                "examples": shape[0] if isinstance(shape, list) and shape else None,
                "complete": meta.get("complete") is True and not d.name.startswith("."),
                "bytes": _size(d),
            }
        )
    return out


def foreign(cache_dir: str | Path | None = None) -> list[str]:
    """Names under the cache directory that are not cache entries (left alone)."""
    root = Path(cache_dir) if cache_dir is not None else home()
    return [d.name for d in _listing(root) if not is_entry(d)]


def clear(cache_dir: str | Path | None = None) -> int:
    """Remove every entry (nothing else: :func:`foreign`); returns the bytes freed."""
    root = Path(cache_dir) if cache_dir is not None else home()
    freed = 0
    for d in _listing(root):
        if is_entry(d):
            freed += _size(d)
            with contextlib.suppress(OSError):
                (d / META).unlink()  # no longer an entry, even if the rest fails
            shutil.rmtree(d, ignore_errors=True)
    return freed
