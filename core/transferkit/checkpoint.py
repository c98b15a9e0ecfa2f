"""Training checkpoints: everything an exact resume needs, written atomically."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import atomic, owned
from . import weights as wio
from .errors import ModelDirError, OverwriteError, WeightsError

STATE_FILE = "state.json"
ANCHORS_FILE = "anchors.safetensors"
#: ``state.json``'s proof that transferkit wrote the checkpoint
FORMAT = "transferkit-checkpoint"
#: everything a checkpoint holds
FILES = (STATE_FILE, "weights.safetensors", "optimizer.safetensors", ANCHORS_FILE)


def is_checkpoint(path: Path) -> bool:
    """Proof that transferkit wrote the directory: a regular ``state.json`` with the
    checkpoint's ``format`` field (or, written before that field, all of its own keys)
    beside the weights file."""
    doc = owned.read_json(path / STATE_FILE, 64 << 20)
    if doc is None:
        return False
    legacy = "format" not in doc and {"epoch", "step", "rng", "history"} <= set(doc)
    return (doc.get("format") == FORMAT or legacy) and (path / "weights.safetensors").is_file()


@dataclass
class TrainState:
    """Everything an exact resume needs, in one place."""

    epoch: int  # epochs completed
    step: int
    weights: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    rng: dict[str, Any]  # numpy generator state (shuffling, augmentation)
    history: list[dict[str, Any]] = field(default_factory=list)
    #: a regulariser's anchors (``w⁰`` of L2-SP), so a resumed run pulls toward them
    anchors: dict[str, np.ndarray] = field(default_factory=dict)

    @staticmethod
    def check_target(path: Path) -> None:
        """What a checkpoint may replace: nothing (a new or empty directory), or a
        transferkit checkpoint holding only a checkpoint's files; anything else is refused."""
        if path.is_symlink():
            raise OverwriteError(
                f"checkpoint_dir {str(path)!r} is a symbolic link; transferkit does not write "
                "through links: choose another directory"
            )
        if path.exists() and not path.is_dir():
            raise OverwriteError(
                f"checkpoint_dir {str(path)!r} is a file; choose a directory for the checkpoint"
            )
        if not path.is_dir() or not any(path.iterdir()):
            return
        if not is_checkpoint(path):
            raise OverwriteError(
                f"checkpoint_dir {str(path)!r} exists and is not a training checkpoint that "
                "transferkit wrote (a saved model or a user's directory, say); choose another "
                "directory"
            )
        extra = owned.only(path, FILES)
        if extra:
            raise OverwriteError(
                f"checkpoint_dir {str(path)!r} is a training checkpoint, but it also holds "
                f"{', '.join(map(repr, extra[:5]))}{' ...' if len(extra) > 5 else ''}, which "
                "no checkpoint wrote; writing would lose them: move them out or choose another "
                "directory"
            )

    def save(self, path: str | Path) -> None:
        """Write to a directory atomically (the previous checkpoint survives a crash at
        any instant; see :mod:`transferkit.atomic`)."""

        def fill(tmp: Path) -> None:
            wio.save(self.weights, tmp / "weights.safetensors")
            wio.save(
                self.optimizer or {"_empty": np.zeros(0, np.float32)}, tmp / "optimizer.safetensors"
            )
            if self.anchors:
                wio.save(self.anchors, tmp / ANCHORS_FILE)
            meta = {
                "format": FORMAT,
                "epoch": self.epoch,
                "step": self.step,
                "rng": self.rng,
                "history": self.history,
            }
            (tmp / STATE_FILE).write_text(json.dumps(meta, indent=2))  # the marker: last

        atomic.write_dir(Path(path), fill, STATE_FILE, self.check_target, "training checkpoint")

    @classmethod
    def load(cls, path: str | Path) -> TrainState:
        path = Path(path)
        atomic.recover(path, STATE_FILE)
        if not (path / STATE_FILE).is_file():
            raise ModelDirError(f"{str(path)!r} holds no training checkpoint ({STATE_FILE})")
        try:
            if (path / STATE_FILE).stat().st_size > 64 << 20:
                raise ValueError("it is over 64 MiB")
            meta = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError(f"expected a JSON object, found {type(meta).__name__}")
            epoch, step = meta["epoch"], meta["step"]
            if not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (epoch, step)
            ):
                raise ValueError(f"epoch {epoch!r} and step {step!r} must be counts")
            if not isinstance(meta["rng"], dict) or not isinstance(meta["history"], list):
                raise ValueError("rng must be an object and history a list")
            if not all(isinstance(e, dict) for e in meta["history"]):
                raise ValueError("history must be a list of objects, one per epoch")
        except RecursionError:
            raise ModelDirError(
                f"training checkpoint {str(path / STATE_FILE)!r} is corrupt (its JSON is nested "
                "too deeply); resume from another checkpoint or start again"
            ) from None
        except (ValueError, KeyError, UnicodeDecodeError) as e:
            raise ModelDirError(
                f"training checkpoint {str(path / STATE_FILE)!r} is corrupt ({e}); resume from "
                "another checkpoint or start again"
            ) from None
        try:
            opt = wio.read(path / "optimizer.safetensors")
            weights = wio.read(path / "weights.safetensors")
            anchors = wio.read(path / ANCHORS_FILE) if (path / ANCHORS_FILE).exists() else {}
        except WeightsError as e:
            raise ModelDirError(f"training checkpoint {str(path)!r}: {e}") from None
        opt.pop("_empty", None)
        return cls(epoch, step, weights, opt, meta["rng"], meta["history"], anchors)
