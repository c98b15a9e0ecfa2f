"""Argument checks at the public surface, run before any framework work.

Each check names the argument, the value it got and what it expects, so that a
wrong type or range never reaches a framework (where it would surface as a
``TypeError`` deep inside, an allocator failure, or a silently rounded value).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

from .errors import ConfigError


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def integer(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """An ``int`` (not a bool, not a float with a fraction) in ``[minimum, maximum]``."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok:
        raise ConfigError(f"{name} must be an integer, got {type(value).__name__} {_show(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum:,}, got {value:,}")
    return value


def number(
    name: str,
    value: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    exclusive_minimum: bool = False,
) -> float:
    """A finite real number (not a bool, not a string) in the given range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = " (write it without quotes)" if isinstance(value, str) else ""
        raise ConfigError(
            f"{name} must be a number, got {type(value).__name__} {_show(value)}{hint}"
        )
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value}")
    if minimum is not None:
        if exclusive_minimum and value <= minimum:
            raise ConfigError(f"{name} must be > {minimum}, got {value}")
        if not exclusive_minimum and value < minimum:
            raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {value}")
    return value


def choice(name: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(
            f"{name} must be one of {', '.join(map(repr, choices))}; got {_show(value)}"
        )
    return value


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(
            f"{name} must be True or False, got {type(value).__name__} {_show(value)}"
        )
    return value


def string(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"{name} must be a non-empty string, got {type(value).__name__} {_show(value)}"
        )
    return value


def shape(name: str, value: Any, maximum: int = 1 << 16) -> tuple[int, ...]:
    """A tuple of positive integers, e.g. ``input_shape=(64, 64, 3)``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigError(
            f"{name} must be a tuple of positive integers such as (64, 64, 3), got {_show(value)}"
        )
    dims = tuple(value)
    if not dims:
        raise ConfigError(f"{name} must not be empty")
    return tuple(integer(f"{name}[{i}]", d, 1, maximum) for i, d in enumerate(dims))
