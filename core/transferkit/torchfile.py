"""Read PyTorch checkpoints (``.pth``) into numpy without torch, safely.

Only a state dict of tensors is accepted: the unpickler rebuilds tensors and ordered
dicts and refuses every other class, which is what ``torch.load(weights_only=True)``
does. transferkit uses this once, to convert a published checkpoint into a canonical
safetensors file; models themselves are only ever loaded from safetensors.
Both the zip format (torch >= 1.6) and the legacy format are read.

A checkpoint is untrusted input, so nothing in it is believed before it is checked:
every pickle stream, including the small header streams of the legacy format, goes
through a restricted unpickler (unpickling with plain ``pickle`` runs code chosen by
the file), and every tensor's offset, sizes and strides are bound-checked against its
storage before numpy is given a strided view (``as_strided`` does no checks of its own
and would read arbitrary memory). Any failure is a :class:`WeightsError` naming the file.
"""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
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
_LEGACY_PROTOCOL = 1001  # torch.serialization.PROTOCOL_VERSION; torch refuses any other


class _Corrupt(Exception):
    """A checkpoint that breaks the format's rules: read_checkpoint turns it into a
    WeightsError that names the file."""


class _Sealed:
    """Refuses pickle's BUILD opcode. Without this a crafted stream could overwrite an
    object's attributes (a tensor's offset, a storage's buffer) after it was checked, or
    set attributes on objects shared between loads."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise _Corrupt(f"the pickle sets the state of a {type(self).__name__.strip('_')}")


class _StorageType(_Sealed):
    __slots__ = ("dtype",)

    def __init__(self, name: str):
        self.dtype = np.dtype(_DTYPES[name])


class _Storage(_Sealed):
    """A flat buffer, filled at once (zip format) or after unpickling (legacy format)."""

    __slots__ = ("dtype", "numel", "data")

    def __init__(self, dtype: np.dtype, numel: int, data: np.ndarray | None = None):
        self.dtype, self.numel, self.data = dtype, numel, data


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and value >= 0


class _Tensor(_Sealed):
    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def array(self) -> np.ndarray:
        """A copy of the tensor's elements. The checks come first because as_strided
        trusts its arguments: an offset, size or stride from the file that reaches past
        the storage would read (and copy out) whatever memory lies beyond it."""
        flat, offset, size, stride = self.storage.data, self.offset, self.size, self.stride
        if not isinstance(flat, np.ndarray) or flat.ndim != 1:
            raise _Corrupt("a tensor's storage has no data")
        if not (_is_index(offset) and all(map(_is_index, size + stride))):
            raise _Corrupt("a tensor's offset, sizes and strides are not non-negative integers")
        if len(size) != len(stride):
            raise _Corrupt(f"a tensor has {len(size)} sizes but {len(stride)} strides")
        if 0 in size:  # no element is read, so no offset or stride can reach too far
            return np.zeros(size, flat.dtype)
        count = 1
        for n in size:
            count *= n
        if count > len(flat):  # strides of 0 would copy out far more than the file holds
            raise _Corrupt(
                f"a tensor of {count} elements is built on a storage of {len(flat)}: expanded "
                "tensors are not read (save tensor.contiguous() instead)"
            )
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= len(flat):
            raise _Corrupt(f"a tensor reaches element {last} of a storage of {len(flat)} elements")
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=size, strides=[s * item for s in stride]
        )
        return view.copy()


class _RebuildTensor(_Sealed):
    """Stands in for ``torch._utils._rebuild_tensor_v2``; an instance per load, so that
    nothing a pickle does to it outlives that load."""

    __slots__ = ()

    def __call__(self, storage, offset, size, stride, *_ignored) -> _Tensor:
        if not isinstance(storage, _Storage):
            raise _Corrupt("a tensor is built on something that is not a storage")
        if not (isinstance(size, tuple | list) and isinstance(stride, tuple | list)):
            raise _Corrupt("a tensor's sizes or strides are not sequences")
        return _Tensor(storage, offset, tuple(size), tuple(stride))


_MEMO_OPS = ("PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET")


def _scan(f: io.BytesIO) -> None:
    """Walk the pickle at ``f``'s position opcode by opcode (pure Python, reading only the
    bytes there are) before the C unpickler sees it, and put ``f`` back. The C unpickler
    sizes its memo from the largest index a PUT names and allocates a string's declared
    length before reading it, so a few crafted bytes could ask for gigabytes; a stream
    whose memo indices exceed its own length (each memo entry needs an opcode of its own)
    or whose data is shorter than declared is refused here."""
    start = f.tell()
    size = len(f.getbuffer()) - start
    try:
        for op, arg, _pos in pickletools.genops(f):
            if op.name in _MEMO_OPS and not (isinstance(arg, int) and 0 <= arg < size):
                raise _Corrupt(f"the pickle names memo entry {arg} in a stream of {size} bytes")
    except ValueError as e:  # genops on data that ends early or breaks the format
        raise _Corrupt(f"the pickle is malformed ({e})") from None
    f.seek(start)


def _load(unpickler: pickle.Unpickler, f: io.BytesIO) -> Any:
    """The next pickle of ``f``, scanned (:func:`_scan`) before it is unpickled."""
    _scan(f)
    return unpickler.load()


class _DataUnpickler(pickle.Unpickler):
    """For the legacy format's header streams (magic number, protocol version, system
    info, storage keys), which hold plain data only: every global and every persistent
    id is refused, so such a stream can build nothing but numbers, strings and
    containers."""

    def find_class(self, module: str, name: str) -> Any:
        raise _Corrupt(f"a header of the checkpoint refers to {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _Corrupt("a header of the checkpoint refers to a storage")


class _Unpickler(pickle.Unpickler):
    """For the stream that holds the state dict: tensors, storages and ordered dicts."""

    def __init__(self, file, storages: dict[str, _Storage], read_zip=None):
        super().__init__(file)
        self.storages, self.read_zip = storages, read_zip
        self.rebuild = _RebuildTensor()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self.rebuild
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        raise WeightsError(
            f"the checkpoint holds {module}.{name}, which is not a tensor; only state dicts "
            "of tensors are read"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise _Corrupt(f"unsupported persistent object {str(pid)[:80]!r}")
        if len(pid) not in (5, 6):
            raise _Corrupt(f"a storage reference has {len(pid)} fields instead of 5 or 6")
        storage_type, key, _location, numel = pid[1:5]
        if len(pid) > 5 and pid[5] is not None:
            raise WeightsError("storage views in legacy checkpoints are not supported")
        if not isinstance(storage_type, _StorageType):
            raise _Corrupt("a storage reference has no storage type")
        if not isinstance(key, str | int) or not _is_index(numel):
            raise _Corrupt("a storage reference has a bad key or element count")
        key = str(key)
        if key not in self.storages:
            data = None
            if self.read_zip is not None:
                data = self.read_zip(key, storage_type.dtype, numel)
            self.storages[key] = _Storage(storage_type.dtype, numel, data)
        return self.storages[key]


def _materialise(obj: Any) -> Any:
    if isinstance(obj, _Tensor):
        return obj.array()
    if isinstance(obj, dict):
        return {k: _materialise(v) for k, v in obj.items()}
    return obj


def _read_zip(raw: bytes) -> Any:
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        pkl = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
        if pkl is None:
            raise _Corrupt("the archive has no data.pkl")
        prefix = pkl[: -len("data.pkl")]
        info = z.getinfo(pkl)
        if info.file_size > info.compress_size * (1 if info.compress_type == 0 else 1100) + 4096:
            raise _Corrupt(f"data.pkl claims {info.file_size} bytes from {info.compress_size}")

        def storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
            try:
                info = z.getinfo(f"{prefix}data/{key}")
            except KeyError:
                raise _Corrupt(f"the archive has no data for storage {key}") from None
            bound = info.compress_size * (1 if info.compress_type == 0 else 1100) + 4096
            if info.file_size > bound or numel * dtype.itemsize > info.file_size:
                raise _Corrupt(
                    f"storage {key} declares {numel} elements of {dtype}, but its member holds "
                    f"{info.file_size} bytes ({info.compress_size} compressed)"
                )
            buf = z.read(info)
            if len(buf) % dtype.itemsize or len(buf) // dtype.itemsize < numel:
                raise _Corrupt(
                    f"storage {key} has {len(buf)} bytes, not {numel} elements of {dtype}"
                )
            return np.frombuffer(buf, dtype=dtype)

        storages: dict[str, _Storage] = {}
        stream = io.BytesIO(z.read(info))
        return _load(_Unpickler(stream, storages, storage), stream)


def _read_legacy(raw: bytes) -> Any:
    """torch's pre-zip format: four pickles (magic number, protocol version, system
    info, the state dict), a pickled list of storage keys, then for each key its element
    count as a little-endian int64 followed by the raw elements."""
    f = io.BytesIO(raw)
    magic = _load(_DataUnpickler(f), f)
    if not isinstance(magic, int) or magic != _LEGACY_MAGIC:
        raise _Corrupt("it does not start with PyTorch's magic number")
    protocol = _load(_DataUnpickler(f), f)
    if not isinstance(protocol, int) or protocol != _LEGACY_PROTOCOL:
        raise _Corrupt(f"unknown legacy protocol version {str(protocol)[:40]}")
    _load(_DataUnpickler(f), f)  # system info, which torch does not use either
    storages: dict[str, _Storage] = {}
    result = _load(_Unpickler(f, storages), f)
    keys = _load(_DataUnpickler(f), f)
    if not isinstance(keys, list) or not all(isinstance(k, str | int) for k in keys):
        raise _Corrupt("the storage key list is not a list of keys")
    for key in map(str, keys):
        st = storages.get(key)
        if st is None or st.data is not None:
            raise _Corrupt(f"storage {key!r} is listed but unused, or listed twice")
        head = f.read(8)
        if len(head) != 8:
            raise _Corrupt(f"the file ends before storage {key!r}")
        (numel,) = struct.unpack("<q", head)
        if numel != st.numel:
            raise _Corrupt(f"storage {key!r} holds {numel} elements, not {st.numel}")
        nbytes = numel * st.dtype.itemsize
        buf = f.read(nbytes)
        if len(buf) != nbytes:
            raise _Corrupt(f"the file ends inside storage {key!r}")
        st.data = np.frombuffer(buf, dtype=st.dtype)
    return result


def read_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """Tensors of a PyTorch state-dict checkpoint, as numpy arrays by key."""
    path = Path(path)
    where = repr(str(path))
    if not path.is_file():
        raise WeightsError(
            f"{where} " + ("is not a regular file" if path.exists() else "does not exist")
        )
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise WeightsError(f"cannot read {where} ({e.strerror or e})") from None
    try:
        result = _read_zip(raw) if zipfile.is_zipfile(io.BytesIO(raw)) else _read_legacy(raw)
        result = result.get("state_dict", result) if isinstance(result, dict) else result
        arrays = _materialise(result) if isinstance(result, dict) else None
    except WeightsError as e:
        raise WeightsError(f"{where}: {e}") from None
    except _Corrupt as e:
        raise WeightsError(
            f"{where} is not a readable PyTorch checkpoint; it is corrupt or crafted: {e}"
        ) from None
    except Exception as e:
        # The bytes reach pickle, zipfile, its decompressors and numpy, each with its own
        # errors (UnpicklingError, EOFError, ValueError, struct.error, BadZipFile, zlib
        # errors, MemoryError, RecursionError, ...); any of them means the same thing.
        raise WeightsError(
            f"{where} is not a readable PyTorch checkpoint; it is corrupt or crafted "
            f"({type(e).__name__}: {e})"
        ) from e
    if arrays is None:
        raise WeightsError(f"{where} does not hold a state dict")
    return {k: v for k, v in arrays.items() if isinstance(v, np.ndarray)}
