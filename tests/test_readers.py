"""Bounded readers and clear errors: no reader blocks on a FIFO, allocates gigabytes for
a few crafted bytes or recurses without bound, and every malformed file or value found by
fuzzing is a transferkit error naming the file, the field and what to do (or is read
correctly)."""

import contextlib
import json
import os
import struct
import subprocess
import sys
import textwrap
import threading
import zipfile

import numpy as np
import pytest

import transferkit as tk
from transferkit import errors, feature_store
from transferkit import weights as wio
from transferkit.checkpoint import TrainState
from transferkit.cli import main
from transferkit.loaders import image_folder, load_npz, read_table
from transferkit.torchfile import read_checkpoint

DEEP = "[" * 100_000 + "]" * 100_000


def _within(seconds, fn, *args, **kwargs):
    """``fn``'s result, or a failure if it has not returned in ``seconds`` (a hang)."""
    out = {}

    def run():
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn.__name__} blocked for more than {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


def _png(path, value=0.5, size=(8, 8)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), int(value * 255), np.uint8)).save(path)


def _peak_mb(code):
    """Peak resident memory (MiB) of a fresh interpreter running ``code``."""
    script = textwrap.dedent(code) + "\nimport resource\nprint(resource.getrusage(0).ru_maxrss)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1]) / 1024, out.stdout


# --- a hang ------------------------------------------------------------------------------
def test_image_folder_skips_a_fifo_named_like_an_image(tmp_path):
    for c in ("a", "b"):
        _png(tmp_path / c / "1.png")
        _png(tmp_path / c / "2.png", 0.2)
    os.mkfifo(tmp_path / "a" / "3.png")
    with pytest.warns(UserWarning, match=r"3.png \(OSError: .* is a FIFO, device or socket"):
        data = _within(30, image_folder, tmp_path, lazy=False)
    assert len(data) == 4 and data.classes == ["a", "b"]


def test_tables_and_run_descriptions_refuse_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "t.csv")
    with pytest.raises(errors.EmptyDataError, match="not a regular file"):
        _within(30, read_table, tmp_path / "t.csv")
    os.mkfifo(tmp_path / "run.toml")
    assert _within(30, main, ["fit", "--config", str(tmp_path / "run.toml")]) == 2


def test_a_class_whose_images_are_all_unreadable_is_named(tmp_path):
    _png(tmp_path / "cats" / "1.png")
    (tmp_path / "dogs").mkdir()
    (tmp_path / "dogs" / "1.png").write_bytes(b"not a png")
    with pytest.raises(errors.EmptyDataError, match="class.*'dogs'.*no readable image"):
        image_folder(tmp_path)


# --- memory bombs --------------------------------------------------------------------------
def test_a_pickle_memo_index_cannot_allocate_gigabytes(tmp_path):
    # PROTO 2, EMPTY_DICT, LONG_BINPUT 2**27, STOP: the C unpickler would size its memo
    # to 2**28 entries (2 GiB) for these 9 bytes
    bomb = tmp_path / "bomb.pth"
    bomb.write_bytes(b"\x80\x02}r" + struct.pack("<I", 2**27) + b".")
    with pytest.raises(errors.WeightsError, match="memo entry 134217728 in a stream of 9"):
        read_checkpoint(bomb)
    code = f"""
        from transferkit.torchfile import read_checkpoint
        try:
            read_checkpoint({str(bomb)!r})
        except Exception as e:
            print(type(e).__name__)
        """
    baseline, _ = _peak_mb(code.replace("read_checkpoint(", "str("))
    peak, out = _peak_mb(code)
    assert "WeightsError" in out and peak - baseline < 200


def test_expanded_tensors_are_not_copied_out(tmp_path):
    torch = pytest.importorskip("torch")
    t = torch.zeros(4).expand(10**4, 4)  # 40,000 elements on a storage of 4
    torch.save({"w": t}, tmp_path / "x.pth")
    with pytest.raises(errors.WeightsError, match="expanded tensors are not read"):
        read_checkpoint(tmp_path / "x.pth")


def _npz_with_header(path, shape):
    """An .npz whose member's .npy header claims ``shape`` but holds 16 bytes."""
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    h = repr(header).encode()
    h += b" " * (-(len(h) + 11) % 64) + b"\n"
    body = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + b"\0" * 16
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", body)


def test_npz_headers_are_checked_against_the_file_size(tmp_path):
    _npz_with_header(tmp_path / "big.npz", (10**6, 10**6))
    with pytest.raises(errors.InputDTypeError, match=r"declares shape \(1000000, 1000000\)"):
        load_npz(tmp_path / "big.npz")
    np.savez_compressed(tmp_path / "ok.npz", x=np.ones((50, 4), np.float32), y=np.arange(50))
    raw = bytearray((tmp_path / "ok.npz").read_bytes())
    raw[60:80] = b"\x00" * 20  # inside the compressed stream
    (tmp_path / "bad.npz").write_bytes(bytes(raw))
    with pytest.raises(errors.InputDTypeError, match="cannot read .*bad.npz"):
        load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "c.npz", x=np.ones((2, 3)), classes=np.array("a"))
    with pytest.raises(errors.InputDTypeError, match="'classes' must be a 1-D array"):
        load_npz(tmp_path / "c.npz")


def test_a_head_too_large_to_allocate_is_refused():
    too_many = r"has at least 1,000,003,000,002 parameters, over the 1,000,000,000"
    with pytest.raises(errors.ConfigError, match=too_many):
        tk.Classifier(2, hidden=(10**6, 10**6))
    pytest.importorskip("torch")
    with pytest.raises(errors.ConfigError, match="on 1280 features has"):
        tk.build("torch:efficientnet_lite0", head=tk.Classifier(2, hidden=(10**6,)), weights=None)


# --- silent wrong data ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, match",
    [
        (np.array([np.nan, 1.0], np.float32), "NaN or infinite"),
        (np.array([1e39, 1.0]), "beyond float32's range"),
        (np.array([1, 2], np.int8), r"must be floating point, but w \(int8\)"),
        (np.array([True, False]), r"w \(bool\)"),
    ],
)
def test_weights_files_are_checked_finite_and_floating(tmp_path, value, match):
    wio.save({"w": value}, tmp_path / "w.safetensors")
    with pytest.raises(errors.WeightsError, match=match):
        wio.match(wio.read(tmp_path / "w.safetensors"), {"w": (2,)}, "a test model")


def test_half_precision_weights_are_converted_with_a_warning(tmp_path):
    wio.save({"w": np.array([1.5, 2.0], np.float16)}, tmp_path / "w.safetensors")
    with pytest.warns(UserWarning, match=r"converted to float32 .*w \(float16\)"):
        out = wio.match(wio.read(tmp_path / "w.safetensors"), {"w": (2,)}, "a test model")
    assert out["w"].dtype == np.float32 and out["w"].tolist() == [1.5, 2.0]


def test_a_saved_model_with_nan_weights_is_refused(tmp_path):
    pytest.importorskip("torch")
    m = tk.build("torch:mlp", head=tk.Classifier(2), weights=None)
    m.save(tmp_path / "m")
    w = wio.read(tmp_path / "m" / "model.safetensors")
    w["head.out.bias"] = np.array([np.nan, 0], np.float32)
    wio.save(w, tmp_path / "m" / "model.safetensors", {"format": "transferkit-model"})
    with pytest.raises(errors.WeightsError, match="NaN or infinite values .*head.out.bias"):
        tk.load(tmp_path / "m")


def test_jsonl_lines_end_at_newlines_only(tmp_path):
    rows = [{"text": "a\u2028b", "label": "x"}, {"text": "c\x85d", "label": "y"}, {"label": 1}]
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"
    (tmp_path / "t.jsonl").write_text(text, encoding="utf-8")
    with pytest.raises(errors.InputDTypeError, match="line 3: 'text' is NoneType"):
        read_table(tmp_path / "t.jsonl")
    (tmp_path / "t.jsonl").write_text(text.rsplit('{"label"', 1)[0], encoding="utf-8")
    data = read_table(tmp_path / "t.jsonl")
    assert data.x == ["a\u2028b", "c\x85d"] and data.classes == ["x", "y"]


def test_csv_fields_longer_than_the_csv_modules_default(tmp_path):
    long = "word " * 40_000  # 200,000 characters: an article
    (tmp_path / "t.csv").write_text(f'text,label\n"{long}",a\nshort,b\n')
    data = read_table(tmp_path / "t.csv")
    assert data.x[0] == long and data.classes == ["a", "b"]


@pytest.mark.parametrize("label", ["--5", "²", "٣", "1e3"])
def test_labels_that_look_numeric_are_class_names(tmp_path, label):
    (tmp_path / "t.csv").write_text(f"text,label\nx,{label}\ny,2\n", encoding="utf-8")
    data = read_table(tmp_path / "t.csv")
    assert sorted(data.classes) == sorted(["2", label])


def test_integer_labels_beyond_64_bits_are_refused(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"text": "a", "label": 100000000000000000000000}\n')
    with pytest.raises(errors.LabelError, match="does not fit a 64-bit integer"):
        read_table(tmp_path / "t.jsonl")


def test_two_dimensional_string_labels_are_refused():
    with pytest.raises(errors.LabelError, match=r"one name per input .*shape \(2, 2\)"):
        tk.Dataset(np.zeros((2, 3)), np.array([["a", "b"], ["c", "d"]]))


# --- raw exceptions that are now transferkit errors ---------------------------------------
def test_deeply_nested_json_in_every_record(tmp_path):
    pytest.importorskip("torch")
    m = tk.build("torch:mlp", head=tk.Classifier(2), weights=None)
    m.history = [{"loss": 1.0}]
    m.save(tmp_path / "m")
    (tmp_path / "m" / "history.json").write_text(DEEP)
    assert tk.load(tmp_path / "m").history == []  # a log: dropped, the model loads
    (tmp_path / "m" / "config.json").write_text(DEEP)
    with pytest.raises(errors.ModelDirError, match="nested too deeply"):
        tk.load(tmp_path / "m")
    TrainState(1, 2, m.get_weights(), {}, {}).save(tmp_path / "c")
    (tmp_path / "c" / "state.json").write_text(DEEP)
    with pytest.raises(errors.ModelDirError, match="nested too deeply"):
        TrainState.load(tmp_path / "c")
    (tmp_path / "t.jsonl").write_text(DEEP + "\n")
    with pytest.raises(errors.InputDTypeError, match="line 1 is not valid JSON: nested"):
        read_table(tmp_path / "t.jsonl")
    (tmp_path / "run.toml").write_text("a = " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert main(["fit", "--config", str(tmp_path / "run.toml")]) == 2


def test_non_utf8_run_description(tmp_path, capsys):
    (tmp_path / "run.toml").write_bytes(b'backbone = "torch:cnn\xff"\n')
    assert main(["fit", "--config", str(tmp_path / "run.toml")]) == 2
    assert "is not UTF-8 text (byte 21" in capsys.readouterr().err
    (tmp_path / "s.toml").write_bytes(b"\xfe\xff")
    with pytest.raises(errors.ConfigError, match="search file .* is not UTF-8"):
        tk.search_from_toml(tmp_path / "s.toml")


def test_saved_peft_fields_checked(tmp_path):
    pytest.importorskip("peft")
    m = tk.build("torch:mlp", head=tk.Classifier(2), weights=None)
    m.add_peft(tk.freeze.LoRA(r=2).peft)
    m.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["peft"] = {"kind": "lora", "r": 2, "target": cfg["peft"]["target"]}  # older keys
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    assert tk.load(tmp_path / "m").peft["alpha"] == tk.freeze.LoRA().alpha
    for bad, match in [({"r": 2}, "expected kind 'lora'"), ({"kind": "lora", "r": 0}, "r")]:
        cfg["peft"] = bad
        (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(errors.ModelDirError, match=match):
            tk.load(tmp_path / "m")


def _checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    data = tk.Dataset(rng.random((8, 8, 8, 1), dtype=np.float32), np.arange(8) % 2)
    m = tk.build("torch:mlp", head=tk.Classifier(2), weights=None)
    tk.fit(m, data, epochs=1, verbose=0, checkpoint_dir=tmp_path / "c")
    return data


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda o: {**o, "opt.head.out.weight.bogus": np.zeros(3, np.float32)}, "bogus"),
        (
            lambda o: {k: np.zeros(7, np.float32) if "exp_avg" in k else v for k, v in o.items()},
            "has shape",
        ),
        (lambda o: {**o, "rng.torch": np.zeros(3, np.uint8)}, "rng.torch"),
        (lambda o: {**o, "opt.nowhere.exp_avg": np.zeros(3, np.float32)}, "no parameter"),
    ],
)
def test_a_corrupt_optimizer_state_names_the_checkpoint(tmp_path, mutate, match):
    pytest.importorskip("torch")
    data = _checkpoint(tmp_path)
    opt = wio.read(tmp_path / "c" / "optimizer.safetensors")
    wio.save(mutate(opt), tmp_path / "c" / "optimizer.safetensors")
    m = tk.build("torch:mlp", head=tk.Classifier(2), weights=None)
    with pytest.raises(errors.ModelDirError, match=f"checkpoint .*'{tmp_path / 'c'}'.*{match}"):
        tk.fit(m, data, epochs=2, verbose=0, resume_from=tmp_path / "c")


def _set_state(rng):
    rng["state"] = 3


def _set_huge_state(rng):  # found by the fuzz suite: OverflowError in numpy
    rng["state"]["state"] = 10**80


@pytest.mark.parametrize("corrupt", [_set_state, _set_huge_state])
def test_a_corrupt_random_state_names_the_checkpoint(tmp_path, corrupt):
    pytest.importorskip("torch")
    data = _checkpoint(tmp_path)
    state = json.loads((tmp_path / "c" / "state.json").read_text())
    corrupt(state["rng"])
    (tmp_path / "c" / "state.json").write_text(json.dumps(state))
    m = tk.build("torch:mlp", head=tk.Classifier(2), weights=None)
    with pytest.raises(errors.ModelDirError, match="its random state is not a numpy"):
        tk.fit(m, data, epochs=2, verbose=0, resume_from=tmp_path / "c")


def test_resume_from_another_architecture_names_the_checkpoint(tmp_path):
    pytest.importorskip("torch")
    data = _checkpoint(tmp_path)
    m = tk.build("torch:mlp", head=tk.Classifier(2, hidden=(3,)), weights=None)
    with pytest.raises(errors.WeightsError, match=f"from the checkpoint '{tmp_path / 'c'}'"):
        tk.fit(m, data, epochs=2, verbose=0, resume_from=tmp_path / "c")


@pytest.mark.parametrize(
    "meta",
    [
        [1, 2],
        {"key": {"version": 1, "backbone": "torch:cnn"}, "complete": True, "shape": 5},
        {"key": "x"},
    ],
)
def test_a_malformed_cache_record_is_rebuilt(tmp_path, meta):
    pytest.importorskip("torch")
    m = tk.build("torch:cnn", head=tk.Classifier(2), weights=None)
    x = np.random.default_rng(0).random((3, 8, 8, 1), dtype=np.float32)
    good = np.array(feature_store.features(m, x, tmp_path))
    [entry] = feature_store.entries(tmp_path)
    (tmp_path / entry["entry"] / "meta.json").write_text(json.dumps(meta))
    assert main(["cache", "--dir", str(tmp_path)]) == 0  # listed as not an entry
    with pytest.raises(errors.CacheError, match="not a cache entry transferkit wrote"):
        feature_store.features(m, x, tmp_path)  # no longer provably ours: left alone
    np.save(tmp_path / entry["entry"] / "features.npy", np.float32(1))  # 0-d
    k = feature_store.key(m, x)
    record = {"key": k, "complete": True, "shape": [3, 32], "sha256": "0"}
    (tmp_path / entry["entry"] / "meta.json").write_text(json.dumps(record))
    with pytest.warns(UserWarning, match="incomplete or corrupt; rebuilding"):
        np.testing.assert_array_equal(feature_store.features(m, x, tmp_path), good)


def test_one_example_fits_without_batchnorm(tmp_path):
    pytest.importorskip("torch")
    one = (np.ones((1, 8, 8, 1), np.float32), np.array([1]))
    m = tk.build("torch:mlp", head=tk.Classifier(2), weights=None)
    assert len(tk.fit(m, one, epochs=1, verbose=0)["loss"]) == 1
    cnn = tk.build("torch:cnn", head=tk.Classifier(2), weights=None)  # it has BatchNorm
    with pytest.raises(errors.ConfigError, match="needs at least 2 examples"):
        tk.fit(cnn, one, epochs=1, verbose=0)


def test_a_bare_backbone_name_suggests_qualified_ones():
    pytest.importorskip("torch")
    with pytest.raises(errors.ConfigError, match=r"did you mean .*torch:cnn"):
        tk.build("cnn")


def test_hugging_face_directories_without_a_model(tmp_path, tiny_bert):
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.ConfigError, match="a directory without a config.json"):
        tk.build(f"hf:{tmp_path / 'empty'}", head=tk.Classifier(2))
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text('{"hidden_size": 4}')
    with pytest.raises(errors.ConfigError, match="names no model_type"):
        tk.build(f"hf:{tmp_path / 'cfg'}", head=tk.Classifier(2))
    m = tk.build(f"hf:{tiny_bert}", head=tk.Classifier(2), weights=None)
    m.save(tmp_path / "m")
    tok = next((tmp_path / "m" / "assets").glob("tokenizer.json"))
    tok.write_text("{not json")
    with pytest.raises(errors.TransferkitError, match="corrupt or incomplete"):
        tk.load(tmp_path / "m")


# --- found by the fuzz suite ---------------------------------------------------------------
def _png_bytes(w=8, h=8):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_a_png_chunk_length_cannot_allocate_its_claim(tmp_path):
    raw = bytearray(_png_bytes())
    i = raw.index(b"IDAT") - 4
    raw[i : i + 4] = (128 << 20).to_bytes(4, "big")  # the IDAT claims 128 MiB
    (tmp_path / "x.png").write_bytes(bytes(raw))
    import tracemalloc

    from transferkit.loaders import _read_image

    tracemalloc.start()
    with contextlib.suppress(OSError):  # a truncated image: PIL's own word
        _read_image(tmp_path / "x.png", None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20


def test_an_image_declaring_more_pixels_than_its_bytes_can_hold(tmp_path):
    raw = bytearray(_png_bytes())
    i = raw.index(b"IHDR") + 4
    raw[i : i + 8] = (8_000).to_bytes(4, "big") * 2  # 64 Mpx declared in ~100 bytes
    import zlib

    raw[i + 13 : i + 17] = zlib.crc32(bytes(raw[i - 4 : i + 13])).to_bytes(4, "big")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(bytes(raw))
    (tmp_path / "a" / "y.png").write_bytes(_png_bytes())
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.png").write_bytes(_png_bytes())
    with pytest.warns(UserWarning, match="declares 8000x8000 pixels in .* decompression bomb"):
        data = image_folder(tmp_path, lazy=False)
    assert len(data) == 2


def test_a_cached_npy_header_length_cannot_allocate_its_claim(tmp_path):
    pytest.importorskip("torch")
    m = tk.build("torch:cnn", head=tk.Classifier(2), weights=None)
    x = np.random.default_rng(0).random((3, 8, 8, 1), dtype=np.float32)
    good = np.array(feature_store.features(m, x, tmp_path))
    [entry] = feature_store.entries(tmp_path)
    data = tmp_path / entry["entry"] / "features.npy"
    raw = bytearray(data.read_bytes())
    raw[6:12] = b"\x03\x00" + (600 << 20).to_bytes(4, "little")  # a 600 MiB header
    data.write_bytes(bytes(raw))
    import tracemalloc

    tracemalloc.start()
    with pytest.warns(UserWarning, match="incomplete or corrupt; rebuilding"):
        again = np.array(feature_store.features(m, x, tmp_path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(again, good)
    assert peak < 64 << 20


def test_string_labels_keep_their_names_through_fit_save_and_load(tmp_path):
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.random((12, 8, 8, 1), dtype=np.float32)
    names = np.array(["dog", "cat", "emu"] * 4)
    m = tk.build("torch:mlp", head=tk.Classifier(3), weights=None)
    tk.fit(m, tk.Dataset(x, names), epochs=1, verbose=0)
    assert m.classes == ["cat", "dog", "emu"]  # sorted, as scikit-learn's LabelEncoder
    labels = m.predict(x, output="labels")
    assert set(labels) <= {"cat", "dog", "emu"}
    m.save(tmp_path / "m")
    assert list(tk.load(tmp_path / "m").predict(x, output="labels")) == list(labels)
    with pytest.raises(errors.LabelError, match=r"has 3 classes .* head has 2 outputs"):
        tk.fit(tk.build("torch:mlp", head=tk.Classifier(2), weights=None), tk.Dataset(x, names))


def test_an_optimizer_state_missing_a_slot_names_the_checkpoint(tmp_path):
    pytest.importorskip("torch")
    data = _checkpoint(tmp_path)
    opt = wio.read(tmp_path / "c" / "optimizer.safetensors")
    [key] = [k for k in opt if k.endswith("head.out.weight.exp_avg")]
    opt[key.replace("exp_avg", "exp_avx")] = opt.pop(key)
    wio.save(opt, tmp_path / "c" / "optimizer.safetensors")
    m = tk.build("torch:mlp", head=tk.Classifier(2), weights=None)
    with pytest.raises(errors.ModelDirError, match="holds .*'exp_avx'.* this optimizer keeps"):
        tk.fit(m, data, epochs=2, verbose=0, resume_from=tmp_path / "c")


def test_npz_sizes_past_the_end_of_the_file_are_refused(tmp_path):
    import tracemalloc

    np.savez(tmp_path / "ok.npz", x=np.zeros(4, np.float32))
    raw = bytearray((tmp_path / "ok.npz").read_bytes())
    cd = raw.rindex(b"PK\x01\x02")  # the central directory's entry: sizes at +20 and +24
    raw[cd + 20 : cd + 28] = (0xFFFF0000).to_bytes(4, "little") * 2
    (tmp_path / "big.npz").write_bytes(bytes(raw))
    tracemalloc.start()
    with pytest.raises(errors.InputDTypeError, match="past the end of the"):
        load_npz(tmp_path / "big.npz")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20
