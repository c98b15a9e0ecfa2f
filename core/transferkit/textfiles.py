"""The small text files users hand over — TOML run descriptions and search files — read
the one way: a regular file only (a FIFO would block), UTF-8, a bounded size, and
nesting that cannot exhaust the interpreter's stack; every failure a
:class:`~transferkit.errors.ConfigError` that names the file and says what to do."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

from .errors import ConfigError

#: a run description is a few dozen lines; one far larger is not one
MAX_BYTES = 16 << 20


def read_text(path: str | Path, what: str, hint: str = "") -> str:
    path = Path(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{what} {str(path)!r} is not a regular file{hint}")
        if st.st_size > MAX_BYTES:
            raise ConfigError(
                f"{what} {str(path)!r} is {st.st_size:,} bytes, more than a {what} can be "
                f"({MAX_BYTES:,}){hint}"
            )
        return path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read {what} {str(path)!r} ({e.strerror or e}){hint}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{what} {str(path)!r} is not UTF-8 text (byte {e.start}: {e.reason}); save it as "
            f"UTF-8{hint}"
        ) from None


def read_toml(path: str | Path, what: str, hint: str = "") -> dict[str, Any]:
    """A TOML file as a dict (see the module docstring); ``hint`` ends every message."""
    text = read_text(path, what, hint)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"cannot read {what} {str(path)!r} ({e}){hint}") from None
    except RecursionError:
        raise ConfigError(
            f"cannot read {what} {str(path)!r}: its tables or arrays are nested too deeply{hint}"
        ) from None
