"""Read PyTorch checkpoints (``.pth``) into numpy without torch, safely.

Only a state dict of tensors is accepted: the unpickler rebuilds tensors and ordered
dicts and refuses every other class, which is what ``torch.load(weights_only=True)``
does. transferkit uses this once, to convert a published checkpoint into a canonical
safetensors file; models themselves are only ever loaded from safetensors.
Both the zip format (torch >= 1.6) and the legacy format are read.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import WeightsError

_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_DTYPES[name])


class _Storage:
    """A flat buffer, filled at once (zip format) or after unpickling (legacy format)."""

    def __init__(self, dtype: np.dtype, numel: int, data: np.ndarray | None = None):
        self.dtype, self.numel, self.data = dtype, numel, data


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def array(self) -> np.ndarray:
        flat = self.storage.data
        if not self.size:
            return np.array(flat[self.offset])
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :], shape=self.size, strides=[s * item for s in self.stride]
        )
        return view.copy()


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    return _Tensor(storage, offset, tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict[str, _Storage], read_zip=None):
        super().__init__(file)
        self.storages, self.read_zip = storages, read_zip

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        raise WeightsError(
            f"the checkpoint holds {module}.{name}, which is not a tensor; only state dicts "
            "of tensors are read"
        )

    def persistent_load(self, pid: tuple) -> _Storage:
        if pid[0] != "storage":
            raise WeightsError(f"unsupported persistent object {pid[0]!r} in checkpoint")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], pid[4]
        view = pid[5] if len(pid) > 5 else None
        if view is not None:
            raise WeightsError("storage views in legacy checkpoints are not supported")
        if key not in self.storages:
            data = None
            if self.read_zip is not None:
                data = np.frombuffer(self.read_zip(key), dtype=storage_type.dtype)
            self.storages[key] = _Storage(storage_type.dtype, numel, data)
        return self.storages[key]


def _materialise(obj: Any) -> Any:
    if isinstance(obj, _Tensor):
        return obj.array()
    if isinstance(obj, dict):
        return {k: _materialise(v) for k, v in obj.items()}
    return obj


def read_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """Tensors of a PyTorch state-dict checkpoint, as numpy arrays by key."""
    path = Path(path)
    raw = path.read_bytes()
    storages: dict[str, _Storage] = {}
    try:
        if zipfile.is_zipfile(io.BytesIO(raw)):
            with zipfile.ZipFile(io.BytesIO(raw)) as z:
                pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
                prefix = pkl[: -len("data.pkl")]
                result = _Unpickler(
                    io.BytesIO(z.read(pkl)), storages, lambda key: z.read(f"{prefix}data/{key}")
                ).load()
        else:
            f = io.BytesIO(raw)
            if pickle.load(f) != _LEGACY_MAGIC:
                raise WeightsError(f"{str(path)!r} is not a PyTorch checkpoint")
            pickle.load(f)  # protocol version
            pickle.load(f)  # system info
            result = _Unpickler(f, storages).load()
            for key in pickle.load(f):
                st = storages[str(key)]
                (numel,) = struct.unpack("<q", f.read(8))
                st.data = np.frombuffer(f.read(numel * st.dtype.itemsize), dtype=st.dtype)
    except (pickle.UnpicklingError, EOFError, StopIteration, KeyError, struct.error) as e:
        raise WeightsError(f"{str(path)!r} is not a readable PyTorch checkpoint: {e}") from None
    result = result.get("state_dict", result) if isinstance(result, dict) else result
    if not isinstance(result, dict):
        raise WeightsError(f"{str(path)!r} does not hold a state dict")
    return {k: v for k, v in _materialise(result).items() if isinstance(v, np.ndarray)}
