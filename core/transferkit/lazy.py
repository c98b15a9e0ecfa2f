"""Images decoded only when a batch needs them: :class:`LazyImages`.

A lazy image set knows its length and image shape up front and decodes examples on
demand, in a bounded pool of threads (decoding in PIL releases the GIL), into the same
float32 [0, 1] arrays the in-memory loaders make, so both paths give identical results.
It reads image files (``tk.data.image_folder``, ``tk.data.image_files``), a Hugging Face
``datasets.Dataset`` column, or any indexable dataset of ``(image, label)`` pairs
(``tk.data.from_pairs``: a torchvision dataset, say). Indexing with a slice or an index
array returns the decoded batch; :meth:`LazyImages.subset` returns another lazy set, so
``few_shot`` and ``split`` decode nothing.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError


def _workers() -> int:
    raw = os.environ.get("TRANSFERKIT_DECODE_WORKERS", "")
    n = int(raw) if raw.strip().isdigit() else 0
    return n or min(8, os.cpu_count() or 1)


#: threads that decode (a pool shared by every lazy set in the process)
WORKERS = _workers()
_POOL: tuple[int, ThreadPoolExecutor] | None = None
_LOCK = threading.Lock()


def pool() -> ThreadPoolExecutor:
    """The decode pool of this process (made anew in a forked child, whose copy of the
    parent's pool has no threads)."""
    global _POOL
    with _LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            _POOL = (os.getpid(), ThreadPoolExecutor(WORKERS, thread_name_prefix="tk-decode"))
        return _POOL[1]


class LazyImages:
    """``read(i)`` -> one float32 ``(H, W, C)`` image in [0, 1] of the source's ``i``-th
    example; ``shape`` = (H, W, C) of every image; ``identity`` names the source for the
    feature cache (the files' names, sizes and times, or the data set's fingerprint), or
    is None for a source with no stable identity, whose features stay in memory."""

    dtype = np.dtype(np.float32)
    ndim = 4

    def __init__(
        self,
        read: Callable[[int], np.ndarray],
        n: int,
        shape: tuple[int, int, int],
        identity: str | None,
        index: np.ndarray | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        self._read, self._shape, self._identity = read, tuple(shape), identity
        self._index = np.arange(n) if index is None else np.asarray(index, dtype=np.int64)
        self._names = names

    # --- the array-like surface -------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self._shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.take(np.array([key]))[0]
        if isinstance(key, slice):
            return self.take(np.arange(len(self))[key])
        key = np.asarray(key)
        return self.take(np.flatnonzero(key) if key.dtype == bool else key)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.take(np.arange(len(self)))  # every image in memory: what lazy avoids
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"LazyImages({len(self)} images of {'x'.join(map(str, self._shape))})"

    # --- lazy access ------------------------------------------------------------------
    def _one(self, j: int) -> np.ndarray:
        try:
            img = self._read(j)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - a decoder raises many kinds on a bad file
            where = self._names[j] if self._names is not None else f"example {j}"
            raise DataError(
                f"cannot decode {where!r} ({type(e).__name__}: {e}); remove or replace it"
            ) from None
        if img.shape != self._shape:
            where = self._names[j] if self._names is not None else f"example {j}"
            raise DataError(
                f"{where!r} decodes to shape {img.shape}, not {self._shape} like the others; "
                "pass size=(H, W) to resize every image"
            )
        return img

    def take(self, idx: np.ndarray) -> np.ndarray:
        """The examples ``idx`` decoded, in parallel: float32 ``(len(idx), H, W, C)``."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        out = np.empty((len(idx), *self._shape), dtype=np.float32)
        src = self._index[idx]

        def fill(k: int) -> None:
            out[k] = self._one(int(src[k]))

        list(pool().map(fill, range(len(idx))))
        return out

    def subset(self, idx: np.ndarray) -> LazyImages:
        """The examples ``idx`` as another lazy set (nothing is decoded)."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        return LazyImages(self._read, 0, self._shape, self._identity, self._index[idx], self._names)

    def batches(self, size: int) -> Iterator[np.ndarray]:
        """Every example in order, ``size`` at a time; the next batch decodes while the
        caller works on this one."""
        starts = range(0, len(self), size)
        ahead = None
        for s in starts:
            current = ahead.result() if ahead is not None else self[s : s + size]
            nxt = s + size
            ahead = _Later(lambda a=nxt: self[a : a + size]) if nxt < len(self) else None
            yield current

    @property
    def persistent(self) -> bool:
        """Whether the source is the same in another run (files, a Hugging Face data
        set), so that features computed from it may be kept on disk."""
        return self._identity is not None

    def identity(self) -> str:
        """A digest of the source and the examples chosen from it."""
        if self._identity is None:
            raise ValueError("this lazy set has no stable identity")
        h = hashlib.sha256(self._identity.encode())
        h.update(self._index.tobytes())
        h.update(repr(self._shape).encode())
        return h.hexdigest()


class _Later:
    """A call run in a thread of its own (not the decode pool, which it fills)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._result: Any = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._result = fn()
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = e

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


def is_lazy(x: Any) -> bool:
    return isinstance(x, LazyImages)


def take(x: Any, idx: np.ndarray) -> Any:
    """Examples ``idx`` of an array, a lazy set or a list (of texts)."""
    if isinstance(x, (np.ndarray, LazyImages)):
        return x[idx]
    return [x[i] for i in idx]


def files_identity(paths: Sequence[Path], size: tuple[int, int] | None) -> str:
    h = hashlib.sha256(repr(size).encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "files:" + h.hexdigest()
