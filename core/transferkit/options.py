"""Build options: declared once by each framework (``Framework.options``), checked by
core before the framework is imported, so every adapter rejects the same mistakes with
the same message."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

_DEVICE = re.compile(r"^(auto|cpu|mps|(cuda|gpu|tpu)(:\d+)?)$")


@dataclass(frozen=True)
class BuildOption:
    """A keyword that ``tk.build`` passes to a framework's ``build``: declared once by the
    framework (or per backbone, see :meth:`Framework.build_options`) and checked by core
    before the framework is imported, so every adapter rejects the same mistakes with
    the same message.

    ``types``: accepted Python types; ``choices``: accepted values (empty: any of the
    types); ``default``: what the framework uses when the option is not given.
    """

    name: str
    types: tuple[type, ...]
    default: Any
    help: str
    choices: tuple[Any, ...] = ()
    #: how the accepted values read in a message, where ``choices`` cannot list them
    spelling: str = ""

    def describe(self) -> str:
        if self.spelling:
            return f"{self.name}={self.spelling}"
        if self.choices:
            return f"{self.name}=" + "|".join(repr(c) for c in self.choices)
        return f"{self.name}=<{'|'.join(t.__name__ for t in self.types)}> ({self.help})"

    def check(self, backbone: str, value: Any) -> Any:
        ok = isinstance(value, self.types) and not (
            isinstance(value, bool) and bool not in self.types
        )
        if self.choices and value not in self.choices:
            ok = False
        if not ok:
            raise ConfigError(
                f"option {self.name}={value!r:.60} of {backbone!r} is not valid: expected "
                f"{self.describe()}"
            )
        return value


def check_device(device: Any) -> str:
    """A device name in transferkit's neutral spelling: ``"auto"`` (the framework's
    default: a GPU where it sees one), ``"cpu"``, ``"cuda"``/``"gpu"`` (with an optional
    ``":index"``), ``"mps"`` or ``"tpu"``. Each adapter maps it to its own placement."""
    name = str(device) if hasattr(device, "type") else device  # torch.device, say
    if not isinstance(name, str) or not _DEVICE.match(name):
        raise ConfigError(
            f"device={device!r:.60} is not a device name; use 'auto', 'cpu', 'cuda' (or "
            "'gpu'), 'cuda:<index>', 'mps' or 'tpu'"
        )
    return name


#: every framework takes ``device=``
DEVICE = BuildOption(
    "device",
    (str,),
    "auto",
    "where the model runs",
    spelling="'auto'|'cpu'|'cuda'|'cuda:<index>'|'mps'|'tpu'",
)
