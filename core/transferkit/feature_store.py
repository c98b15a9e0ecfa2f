"""Frozen-backbone features kept on disk, for data that does not fit in memory.

``tk.fit`` with a backbone frozen for the whole run computes its features once. For a
lazy data set (``tk.data.image_folder``), or whenever ``cache_dir=`` is given, they are
computed in one streaming pass into a memory-mapped ``.npy`` file under the cache
directory (default ``$TRANSFERKIT_HOME/features``), keyed by the backbone, its framework,
a digest of its weights, the input size and normalisation, and the examples (files'
names, sizes and times, or the arrays' bytes). The next run with the same key reads the
file instead of running the backbone. An entry is written beside its place and renamed in
when complete, so a kill leaves no entry that looks complete; an entry whose files do
not match its record is rebuilt. ``transferkit cache`` reports sizes (an interrupted
run's partial entry too) and clears. Sources without a stable identity
(``tk.data.from_pairs``) are not cached on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TransferkitError, warn
from .lazy import is_lazy

VERSION = 1
META = "meta.json"
DATA = "features.npy"


class CacheError(TransferkitError):
    """A feature cache directory that cannot be used (not writable, disk full)."""


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
    return root / f"{k['backbone'].replace(':', '_').replace('/', '_')}-{digest}"


def _read(entry: Path, k: dict[str, Any], n: int) -> np.ndarray | None:
    """The entry's features, or None when it is missing, partial or not this key's."""
    try:
        meta = json.loads((entry / META).read_text())
        feats = np.load(entry / DATA, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if meta.get("key") != k or not meta.get("complete") or feats.shape[0] != n:
        return None
    if feats.shape != tuple(meta.get("shape", ())) or feats.dtype != np.float32:
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
    if entry.exists():
        found = _read(entry, k, len(x))
        if found is not None:
            return found
        warn(f"the feature cache entry {str(entry)!r} is incomplete or corrupt; rebuilding it")
        shutil.rmtree(entry, ignore_errors=True)
    tmp = entry.with_name(f".{entry.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
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
        meta = {"key": k, "complete": True, "shape": list(shape), "created": time.time()}
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


def entries(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every entry under the cache directory: name, backbone, examples, size in bytes."""
    root = Path(cache_dir) if cache_dir is not None else home()
    out = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        try:
            meta = json.loads((d / META).read_text())
        except (OSError, ValueError):
            meta = {}
        out.append(
            {
                "entry": d.name,
                "backbone": meta.get("key", {}).get("backbone"),
                "examples": (meta.get("shape") or [None])[0],
                "complete": bool(meta.get("complete")) and not d.name.startswith("."),
                "bytes": size,
            }
        )
    return out


def clear(cache_dir: str | Path | None = None) -> int:
    """Remove every entry; returns the bytes freed."""
    root = Path(cache_dir) if cache_dir is not None else home()
    freed = sum(e["bytes"] for e in entries(root))
    for d in list(root.iterdir()) if root.is_dir() else []:
        shutil.rmtree(d, ignore_errors=True)
    return freed
