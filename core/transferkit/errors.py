"""Every error transferkit raises, in one hierarchy.

Errors are raised before any framework code runs wherever the input can be
checked up front, and each message names what was wrong and what to do.
"""

from __future__ import annotations


class TransferkitError(Exception):
    """Base class of every error transferkit raises."""


class UnknownBackboneError(TransferkitError, KeyError):
    """A backbone name that no installed plugin registered."""

    def __init__(self, name: str, suggestions: list[str]):
        self.name = name
        self.suggestions = suggestions
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(
            f"unknown backbone {name!r}.{hint} Run `transferkit backbones` to list them all."
        )

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class UnknownFrameworkError(TransferkitError):
    """A framework name that no installed plugin registered."""


class FrameworkNotInstalledError(TransferkitError, ImportError):
    """The framework a backbone needs is not installed."""


class PluginError(TransferkitError):
    """A plugin failed to load or register (raised in strict mode)."""


class ConfigError(TransferkitError, ValueError):
    """An option, head, policy or run description that is not valid."""


class DataError(TransferkitError, ValueError):
    """Input data that transferkit cannot use."""


class EmptyDataError(DataError):
    """No examples, or a class with fewer examples than asked for."""


class InputShapeError(DataError):
    """Inputs whose shape does not fit the backbone."""


class InputDTypeError(DataError):
    """Inputs or labels of a type that cannot be used."""


class NonFiniteInputError(DataError):
    """Inputs that contain NaN or infinity."""


class LabelError(DataError):
    """Labels outside the head's classes, or of the wrong shape."""


class WeightsError(TransferkitError):
    """Weights that are missing, or whose names or shapes do not match the architecture."""


class ModelDirError(TransferkitError):
    """A saved-model directory that is missing, incomplete or corrupt."""


class OverwriteError(ModelDirError, ConfigError):
    """A path transferkit was asked to write holds something it cannot prove it wrote (a
    user's file or directory, another library's model, a symbolic link): refused, never
    replaced or deleted."""


class ExportError(TransferkitError):
    """An export that could not be written, or whose outputs differ from the model's."""


class CacheError(TransferkitError):
    """A feature cache directory that cannot be used (not writable, disk full)."""


class TrainingError(TransferkitError):
    """Training that cannot go on (for example a loss that became NaN)."""


class TruncationWarning(UserWarning):
    """Inputs were cut to the model's length (texts longer than ``max_length`` tokens):
    filter this category to silence it, not the message text."""


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first caller outside transferkit and its
    plugins, so the warning points at the user's line, not at library internals."""
    import sys
    import warnings

    # the outermost transferkit frame (framework code may sit between ours), then its caller
    level, outermost, frame = 1, 1, sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("transferkit"):
            outermost = level
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=outermost + 2)
