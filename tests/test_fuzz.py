"""The fuzz suite: every reader and writer fed mutated inputs (hypothesis), judged by one
oracle: a correct result or a :class:`~transferkit.errors.TransferkitError` — never another
exception, a hang (a per-input timeout), memory beyond a bound of the input's size, a file
outside the input's directory touched, or code executed (pickles whose ``__reduce__``
would write a marker file).

Profiles: ``fast`` (the default, a few dozen inputs per reader, deterministic) runs in the
test suite; ``TRANSFERKIT_FUZZ=long`` (``benchmarks/fuzz.py``) runs 10,000 per reader.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import pickle
import shutil
import signal
import struct
import tracemalloc
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import transferkit as tk  # noqa: E402
from transferkit import errors, feature_store, loaders  # noqa: E402
from transferkit import weights as wio  # noqa: E402
from transferkit.checkpoint import TrainState  # noqa: E402

PROFILE = os.environ.get("TRANSFERKIT_FUZZ", "fast")
EXAMPLES = int(os.environ.get("TRANSFERKIT_FUZZ_EXAMPLES", {"fast": 30, "long": 10_000}[PROFILE]))
#: inputs tried per reader in this process (benchmarks/fuzz.py reports them)
COUNTS: collections.Counter[str] = collections.Counter()
#: seconds one input may take before it counts as a hang
TIMEOUT = 20
#: memory one input may allocate (traced by tracemalloc): a fixed allowance plus a
#: multiple of the input's size (a compressed array may inflate ~1000-fold)
ALLOWANCE, PER_BYTE = 64 << 20, 1200
#: an image may decode to 1,100 pixels per byte (loaders.PIXELS_PER_BYTE), 15 bytes each
#: (RGB as uint8 and as float32)
IMAGE_PER_BYTE = 1100 * 15


def fuzz(examples: int = EXAMPLES):
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


class Hang(Exception):
    pass


class Oracle:
    """Runs one input and judges it (see the module docstring)."""

    def __init__(self, base: Path):
        self.base = base
        self.outside = base / "outside"
        self.outside.mkdir(exist_ok=True)
        (self.outside / "keep.txt").write_text("a user's file next to the inputs")
        self.marker = base / "EXECUTED"

    def workdir(self) -> Path:
        d = self.base / f"in-{uuid.uuid4().hex[:10]}"
        d.mkdir()
        return d

    def _outside(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in self.outside.iterdir()}

    def __call__(self, reader: str, fn, *args, size: int = 0, per_byte: int = PER_BYTE, **kwargs):
        COUNTS[reader] += 1
        before, cwd = self._outside(), sorted(os.listdir("."))

        def alarm(signum, frame):
            raise Hang(f"{reader}: no answer in {TIMEOUT} s")

        old = signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, TIMEOUT)
        tracemalloc.start()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = fn(*args, **kwargs)
        except errors.TransferkitError:
            result = None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak <= ALLOWANCE + per_byte * size, f"{reader}: {peak / 2**20:.0f} MiB traced"
        assert self._outside() == before, f"{reader} touched a file outside its input"
        assert sorted(os.listdir(".")) == cwd, f"{reader} wrote into the working directory"
        assert not self.marker.exists(), f"{reader} executed code from its input"
        return result


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    return Oracle(tmp_path_factory.mktemp("fuzz"))


# --- mutations ---------------------------------------------------------------------------
TOKENS = [
    b"\x00" * 8,
    b"\xff" * 8,
    b"9" * 40,
    b"-1",
    b"[" * 64,
    b'"',
    b"{",
    b"\n",
    b"\r\n",
    b"\xe2\x80\xa8",
    b"\xc2\x85",
    b"NaN",
    b"1e999",
    b"\x80\x02",
    b"PK\x03\x04",
]


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    """``seed`` with a few byte-level mutations: flips, overwrites, insertions of
    troublesome tokens, deletions, truncation, duplicated chunks."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup"]))
        if not data:
            data += draw(st.binary(min_size=1, max_size=8))
            continue
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0, 0x7F, 0x80, 0xFF, 0x22, 0x5B, 0x7B, 0x0A]))
        elif op == "insert":
            data[i:i] = draw(st.sampled_from(TOKENS) | st.binary(max_size=16))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[i:]
        else:
            chunk = data[i : i + draw(st.integers(1, 64))]
            data[i:i] = chunk * draw(st.integers(1, 8))
    return bytes(data)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def json_mutated(draw, doc: dict) -> bytes:
    """A JSON document with fields replaced (by any JSON value, or a deeply nested one),
    removed or added; or its bytes mutated."""
    if draw(st.booleans()):
        return draw(mutated(json.dumps(doc).encode()))
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        keys = sorted(doc)
        op = draw(st.sampled_from(["replace", "remove", "add", "deep"]))
        key = draw(st.sampled_from(keys)) if keys else "x"
        if op == "remove":
            doc.pop(key, None)
        elif op == "add":
            doc[draw(st.text(max_size=6))] = draw(JSON_VALUES)
        elif op == "deep":
            doc[key] = "DEEP"
        else:
            doc[key] = draw(JSON_VALUES)
    text = json.dumps(doc)
    return text.replace('"DEEP"', "[" * 50_000 + "]" * 50_000).encode()


# --- seeds -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    pytest.importorskip("torch")
    import torch
    from PIL import Image

    root = tmp_path_factory.mktemp("seeds")
    rng = np.random.default_rng(0)
    model = tk.build("torch:mlp", head=tk.Classifier(2), weights=None)
    model.history = [{"loss": 1.0}]
    model.save(root / "model")
    x = rng.random((6, 8, 8, 1), dtype=np.float32)
    tk.fit(model, (x, np.arange(6) % 2), epochs=1, verbose=0, checkpoint_dir=root / "ckpt")
    feature_store.features(model, x, root / "cache")
    torch.save({"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3)}, root / "zip.pth")
    torch.save({"w": torch.ones(2)}, root / "legacy.pth", _use_new_zipfile_serialization=False)
    img = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8))
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        img.save(buf, fmt)
        (root / f"img.{fmt.lower()}").write_bytes(buf.getvalue())
    (root / "t.csv").write_text('text,label\n"a, b",x\nc,y\n"line\nbreak",1\n')
    rows = [{"text": "a\u2028b", "label": "x"}, {"text": "c", "label": 2}]
    (root / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    np.savez(root / "plain.npz", x=x, y=np.arange(6) % 2, classes=np.array(["a", "b"]))
    np.savez_compressed(root / "packed.npz", x=x, y=np.arange(6) % 2)
    (root / "run.toml").write_text(
        'backbone = "torch:cnn"\ndata = "builtin:digits"\nepochs = 2\nlr = 0.01\n'
        'freeze = "train_last"\n[freeze_options]\nn = 1\n'
    )
    (root / "search.toml").write_text(
        'data = "builtin:digits"\nn_trials = 2\n[fixed]\nbackbone = "torch:cnn"\n'
        '[space]\nlr = {low = 1e-4, high = 1e-1, log = true}\nfreeze = ["features", "full"]\n'
    )
    return {"root": root, "model": model, "x": x}


def _copy(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy(src, dst)
    return dst


# --- the readers -------------------------------------------------------------------------
MODEL_FILES = ["config.json", "model.safetensors", "history.json"]


@fuzz()
@given(data=st.data())
def test_saved_models(oracle, seeds, data):
    d = _copy(seeds["root"] / "model", oracle.workdir() / "m")
    name = data.draw(st.sampled_from(MODEL_FILES))
    seed = (d / name).read_bytes()
    if name.endswith(".json") and name != "history.json":
        raw = data.draw(json_mutated(json.loads(seed)))
    else:
        raw = data.draw(mutated(seed))
    (d / name).write_bytes(raw)
    model = oracle("saved model", tk.load, d, size=len(raw))
    if model is not None:
        assert np.isfinite(model.predict(seeds["x"][:2])).all()


@fuzz()
@given(data=st.data())
def test_weights_files(oracle, seeds, data):
    seed = (seeds["root"] / "model" / "model.safetensors").read_bytes()
    raw = data.draw(mutated(seed))
    p = oracle.workdir() / "w.safetensors"
    p.write_bytes(raw)
    shapes = seeds["model"].engine.param_shapes()

    def read_and_match():
        return wio.match(wio.read(p), shapes, "the fuzzed model")

    out = oracle("weights file", read_and_match, size=len(raw))
    if out is not None:
        assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in out.values())


class _Executes:
    """A pickled object whose unpickling would create the oracle's marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@fuzz()
@given(data=st.data())
def test_pth_checkpoints(oracle, seeds, data):
    from transferkit.torchfile import read_checkpoint

    kind = data.draw(st.sampled_from(["zip", "legacy", "executes", "memo"]))
    if kind in ("zip", "legacy"):
        raw = data.draw(mutated((seeds["root"] / f"{kind}.pth").read_bytes()))
    elif kind == "executes":
        raw = pickle.dumps({"w": _Executes(oracle.marker)}, protocol=data.draw(st.integers(0, 5)))
    else:
        index = data.draw(st.integers(0, 2**32 - 1))
        raw = b"\x80\x02}r" + struct.pack("<I", index) + data.draw(st.binary(max_size=8)) + b"."
    p = oracle.workdir() / "x.pth"
    p.write_bytes(raw)
    out = oracle(".pth", read_checkpoint, p, size=len(raw))
    if out is not None:
        assert all(isinstance(v, np.ndarray) for v in out.values())


CHECKPOINT_FILES = ["state.json", "optimizer.safetensors", "weights.safetensors"]


def _mutated_checkpoint(oracle, seeds, data) -> tuple[Path, int]:
    """A copy of the seed checkpoint with one of its files mutated, and that file's size."""
    d = _copy(seeds["root"] / "ckpt", oracle.workdir() / "c")
    name = data.draw(st.sampled_from(CHECKPOINT_FILES))
    seed = (d / name).read_bytes()
    doc = json.loads(seed) if name.endswith(".json") else None
    raw = data.draw(json_mutated(doc) if doc is not None else mutated(seed))
    (d / name).write_bytes(raw)
    return d, len(raw)


@fuzz()
@given(data=st.data())
def test_training_checkpoints(oracle, seeds, data):
    d, size = _mutated_checkpoint(oracle, seeds, data)
    oracle("checkpoint", TrainState.load, d, size=size)


@fuzz()
@given(data=st.data())
def test_training_checkpoints_resumed(oracle, seeds, data):
    d, _ = _mutated_checkpoint(oracle, seeds, data)
    model = tk.build("torch:mlp", head=tk.Classifier(2), weights=None)
    train = (seeds["x"], np.arange(6) % 2)
    oracle("checkpoint (resumed)", tk.fit, model, train, epochs=2, verbose=0, resume_from=d)


@fuzz()
@given(data=st.data())
def test_feature_cache_entries(oracle, seeds, data):
    root = _copy(seeds["root"] / "cache", oracle.workdir() / "cache")
    [entry] = [p for p in root.iterdir()]
    name = data.draw(st.sampled_from([feature_store.META, feature_store.DATA]))
    seed = (entry / name).read_bytes()
    raw = data.draw(json_mutated(json.loads(seed)) if name.endswith(".json") else mutated(seed))
    (entry / name).write_bytes(raw)
    oracle("feature cache", feature_store.entries, root, size=len(raw))
    out = oracle(
        "feature cache", feature_store.features, seeds["model"], seeds["x"], root, size=len(raw)
    )
    if out is not None:
        expected = seeds["model"].features(seeds["x"])
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@fuzz()
@given(data=st.data())
def test_image_folders(oracle, seeds, data):
    root = oracle.workdir()
    for c in ("a", "b"):
        (root / c).mkdir()
        for i in range(2):
            _copy(seeds["root"] / "img.png", root / c / f"{i}.png")
    kind = data.draw(st.sampled_from(["png", "jpeg", "png", "jpeg", "fifo", "dir", "device"]))
    target = root / "a" / f"x.{'jpg' if kind == 'jpeg' else 'png'}"
    size = 0
    if kind in ("png", "jpeg"):
        raw = data.draw(mutated((seeds["root"] / f"img.{kind}").read_bytes()))
        target.write_bytes(raw)
        size = len(raw)
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "dir":
        target.mkdir()
    else:
        target.symlink_to("/dev/zero")
    out = oracle(
        "image folder", loaders.image_folder, root, lazy=False, size=size, per_byte=IMAGE_PER_BYTE
    )
    if out is not None:
        assert out.x.shape[1:] == (8, 8, 3) and np.isfinite(out.x).all()
        assert out.classes == ["a", "b"]


@fuzz()
@given(data=st.data())
def test_tables(oracle, seeds, data):
    suffix = data.draw(st.sampled_from([".csv", ".jsonl"]))
    raw = data.draw(mutated((seeds["root"] / f"t{suffix}").read_bytes()))
    p = oracle.workdir() / f"t{suffix}"
    p.write_bytes(raw)
    out = oracle("table", loaders.read_table, p, size=len(raw))
    if out is not None:
        assert len(out.x) == len(out.y) and out.y.dtype == np.int64


@fuzz()
@given(data=st.data())
def test_npz_files(oracle, seeds, data):
    name = data.draw(st.sampled_from(["plain.npz", "packed.npz"]))
    raw = data.draw(mutated((seeds["root"] / name).read_bytes()))
    p = oracle.workdir() / "d.npz"
    p.write_bytes(raw)
    out = oracle("npz", loaders.load_npz, p, size=len(raw))
    if out is not None:
        assert len(out) == len(out.x)


@fuzz()
@given(data=st.data())
def test_run_descriptions(oracle, seeds, data):
    from transferkit.runconfig import validate_run_description
    from transferkit.textfiles import read_toml

    raw = data.draw(mutated((seeds["root"] / "run.toml").read_bytes()))
    p = oracle.workdir() / "run.toml"
    p.write_bytes(raw)

    def read():
        validate_run_description(read_toml(p, "run description"))

    oracle("run description", read, size=len(raw))


@fuzz()
@given(data=st.data())
def test_search_files(oracle, seeds, data):
    pytest.importorskip("optuna")
    from transferkit.search import read_search_file

    raw = data.draw(mutated((seeds["root"] / "search.toml").read_bytes()))
    p = oracle.workdir() / "search.toml"
    p.write_bytes(raw)
    oracle("search file", read_search_file, p, size=len(raw))


@fuzz()
@given(data=st.data())
def test_export_sidecars(oracle, seeds, data):
    from transferkit import export, owned
    from transferkit.formats import ExportFormat

    d = oracle.workdir()
    (d / "m.onnx").write_bytes(b"an export")
    doc = {"format": "onnx", "file": "m.onnx", "sha256": owned.digest(d / "m.onnx")}
    raw = data.draw(json_mutated(doc))
    (d / "m.onnx.json").write_bytes(raw)
    fmt = ExportFormat("onnx", ".onnx")
    oracle("export sidecar", export.check_target, d / "m.onnx", fmt, size=len(raw))


CLI_WORDS = [
    "predict",
    "export",
    "cache",
    "backbones",
    "plugins",
    "fit",
    "rank",
    "--data",
    "--out",
    "--format",
    "--top-k",
    "--batch-size",
    "--dir",
    "--clear",
    "--json",
    "--framework",
    "--config",
    "--tag",
    "-1",
    "0",
    "1e9",
    "nan",
    "x.csv",
    "",
    "torch:cnn",
    "*",
    "onnx",
    "--help",
]


@fuzz()
@given(data=st.data())
def test_cli_arguments(oracle, seeds, data):
    from transferkit.cli import main

    words = CLI_WORDS + [str(seeds["root"] / "model"), str(seeds["root"] / "t.csv")]
    argv = data.draw(st.lists(st.sampled_from(words) | st.text(max_size=8), max_size=6))
    if "fit" in argv or "rank" in argv:  # these would train; their inputs are fuzzed above
        argv = [a for a in argv if a not in ("fit", "rank")]
    d = oracle.workdir()
    argv = [a if a != "x.csv" else str(d / "x.csv") for a in argv]
    if "--out" in argv and argv.index("--out") + 1 < len(argv):
        argv[argv.index("--out") + 1] = str(d / "out.csv")

    def run():
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse's usage errors and --help
                code = e.code
        assert code in (0, 1, 2), (argv, code, err.getvalue()[-300:])
        return code

    # an unexpected error raises (and fails the test) instead of printing one line
    os.environ["TRANSFERKIT_DEBUG"] = "1"
    try:
        oracle("CLI arguments", run)
    finally:
        os.environ.pop("TRANSFERKIT_DEBUG")
