"""Weights files: safetensors with canonical names. Pickle is never used."""

from __future__ import annotations

import fnmatch
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import WeightsError


def save(
    arrays: Mapping[str, np.ndarray], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Write arrays to a safetensors file atomically (a crash never leaves half a file)."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(
            {k: np.ascontiguousarray(v).reshape(np.shape(v)) for k, v in arrays.items()},
            tmp,
            metadata=metadata,
        )
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read(path: str | Path) -> dict[str, np.ndarray]:
    """Read a safetensors file; a missing or corrupt file is a :class:`WeightsError`."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        why = "is not a regular file" if path.exists() else "does not exist"
        raise WeightsError(f"weights file {str(path)!r} {why}")
    if path.suffix in {".pt", ".pth", ".bin", ".pkl", ".ckpt"}:
        raise WeightsError(
            f"{str(path)!r} looks like a pickle checkpoint; transferkit loads only safetensors. "
            "Convert it with safetensors.torch.save_file(torch.load(p, weights_only=True), out)"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(
            f"weights file {str(path)!r} is corrupt or not safetensors: {e}"
        ) from None


def match(
    arrays: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple[int, ...]],
    what: str,
    ignore: tuple[str, ...] = (),
    warn_cast: bool = True,
) -> dict[str, np.ndarray]:
    """Check names, shapes, dtypes and values against an architecture; returns float32
    arrays.

    Raises :class:`WeightsError` listing missing names, unexpected names and shape
    mismatches (a few of each), so the user sees exactly what does not fit. ``ignore``:
    prefixes (``"fc"``: ``fc.weight``, ...) or glob patterns (``"*.num_batches_tracked"``)
    of names the file may hold that the architecture has no use for.
    """
    ignored = lambda k: any(
        fnmatch.fnmatchcase(k, p) if "*" in p else k == p or k.startswith(p + ".") for p in ignore
    )
    given = {k: v for k, v in arrays.items() if not ignored(k)}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(
        f"{k}: file {tuple(given[k].shape)} vs model {tuple(expected[k])}"
        for k in set(given) & set(expected)
        if tuple(given[k].shape) != tuple(expected[k])
    )
    if missing or unexpected or wrong:
        parts = []
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", wrong),
        ):
            if items:
                more = f" (+{len(items) - 4} more)" if len(items) > 4 else ""
                parts.append(f"{label} ({len(items)}): {', '.join(items[:4])}{more}")
        raise WeightsError(f"weights do not match {what}: " + "; ".join(parts))
    return _checked(given, what, warn_cast)


def _checked(given: Mapping[str, np.ndarray], what: str, warn_cast: bool) -> dict[str, np.ndarray]:
    """float32 copies of real-valued weights. Integer, boolean or complex tensors are
    refused (coercing quantised or mask tensors would load nonsense silently); other
    float widths are converted, with a warning naming them when ``warn_cast``; NaN or
    infinity — in the file, or from a float64 value beyond float32's range — is refused."""
    out, cast, odd, bad = {}, [], [], []
    for k, v in given.items():
        v = np.asarray(v)
        if v.dtype.kind != "f":
            odd.append(f"{k} ({v.dtype})")
            continue
        if v.dtype != np.float32:
            cast.append(f"{k} ({v.dtype})")
        with np.errstate(over="ignore", invalid="ignore"):
            a = v.astype(np.float32)
        if not np.isfinite(a).all():
            bad.append(k)
        out[k] = a
    if odd:
        raise WeightsError(
            f"weights for {what} must be floating point, but {', '.join(odd[:4])}"
            f"{f' (+{len(odd) - 4} more)' if len(odd) > 4 else ''} are not; convert them to "
            "float32 (quantised weights are not read)"
        )
    if bad:
        raise WeightsError(
            f"weights for {what} hold NaN or infinite values (or float64 values beyond "
            f"float32's range) in {', '.join(bad[:4])}"
            f"{f' (+{len(bad) - 4} more)' if len(bad) > 4 else ''}; the file is corrupt, or "
            "the run that wrote it diverged"
        )
    if cast and warn_cast:
        from .errors import warn

        warn(
            f"weights for {what}: converted to float32 from another float type: "
            f"{', '.join(cast[:4])}{f' (+{len(cast) - 4} more)' if len(cast) > 4 else ''}"
        )
    return out
