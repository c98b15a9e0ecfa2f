"""Using a fitted model: ``predict(output=...)``, ``transferkit predict`` on folders, files,
.npz and tables (bad files named and skipped), and the export seam's checks (unknown
formats, unsupported models, missing packages, an export that differs is not kept)."""

import json

import numpy as np
import pytest

import transferkit as tk
from transferkit import export as tk_export
from transferkit.cli import main
from transferkit.errors import ConfigError, FrameworkNotInstalledError

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A torch cnn fitted on 3 classes with names, saved."""
    rng = np.random.default_rng(0)
    x = rng.random((24, 8, 8, 1), dtype=np.float32)
    y = np.arange(24) % 3
    model = tk.build("torch:cnn", head=tk.Classifier(3), weights=None, classes=["a", "b", "c"])
    tk.fit(model, (x, y), epochs=1, batch_size=8, verbose=0)
    path = tmp_path_factory.mktemp("deploy") / "model"
    model.save(path)
    return model, path, x


def test_predict_outputs(saved):
    model, _, x = saved
    p = model.predict(x)
    idx = model.predict(x, output="indices")
    labels = model.predict(x, output="labels")
    np.testing.assert_array_equal(idx, p.argmax(1))
    assert list(labels) == [["a", "b", "c"][i] for i in idx]
    with pytest.raises(ConfigError, match=r"predict\(output\) must be one of .*got .names."):
        model.predict(x, output="names")
    reg = tk.build("torch:cnn", head=tk.Regressor(2), weights=None)
    with pytest.raises(ConfigError, match="needs a classifier"):
        reg.predict(x, output="labels")


def _images(root, x, names):
    from PIL import Image

    paths = []
    for i, name in enumerate(names):
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((x[i, ..., 0] * 255).round().astype(np.uint8)).save(p)
        paths.append(p)
    return paths


def test_predict_cli_folder_with_a_bad_file(saved, tmp_path, capsys):
    model, path, x = saved
    names = ["a/0.png", "b/sub/1.png", "2.png", "3.png"]
    _images(tmp_path / "imgs", x, names)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "p.csv"
    assert main(["predict", str(path), "--data", str(tmp_path / "imgs"), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "1 of 5 inputs could not be read" in err and "broken.jpg" in err
    rows = out.read_text().splitlines()
    assert rows[0] == "input,prediction,probability,p(a),p(b),p(c)"
    assert len(rows) == 5  # header + the 4 readable images, found recursively
    # the same probabilities as the model on the same (8-bit) images
    q = np.round(x[:4] * 255) / 255
    expected = model.predict(q)
    by_name = {r.split(",")[0]: r.split(",") for r in rows[1:]}
    for i, name in enumerate(names):
        cells = by_name[str(tmp_path / "imgs" / name)]
        np.testing.assert_allclose([float(c) for c in cells[3:]], expected[i], atol=1e-5)
        assert cells[1] == "abc"[expected[i].argmax()]


def test_predict_cli_files_npz_top_k_jsonl(saved, tmp_path, capsys):
    model, path, x = saved
    files = _images(tmp_path, x, ["0.png", "1.png"])
    assert main(["predict", str(path), "--data", *map(str, files), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "input,prediction,probability,top1,p1,top2,p2" and len(lines) == 3
    np.savez(tmp_path / "x.npz", x=x[:5])
    out = tmp_path / "p.jsonl"
    assert main(["predict", str(path), "--data", str(tmp_path / "x.npz"), "--out", str(out)]) == 0
    rows = [json.loads(s) for s in out.read_text().splitlines()]
    assert [r["input"] for r in rows] == ["0", "1", "2", "3", "4"]
    p = model.predict(x[:5])
    np.testing.assert_allclose([list(r["probabilities"].values()) for r in rows], p, atol=1e-6)


def test_predict_cli_errors(saved, tmp_path, capsys):
    _, path, _ = saved
    (tmp_path / "t.csv").write_text("text\nhello\n")
    assert main(["predict", str(path), "--data", str(tmp_path / "t.csv")]) != 0
    assert "takes image inputs" in capsys.readouterr().err
    assert main(["predict", str(path), "--data", str(tmp_path / "nope")]) != 0
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"junk")
    assert main(["predict", str(path), "--data", str(tmp_path / "bad")]) != 0
    assert "no input could be read" in capsys.readouterr().err
    assert main(["predict", str(path), "--data", str(tmp_path / "t.csv"), "--out", "p.txt"]) != 0
    assert ".csv or .jsonl" in capsys.readouterr().err


def test_export_refuses_what_it_cannot_do(saved, tmp_path, monkeypatch):
    model, _, _ = saved
    with pytest.raises(ConfigError, match="unknown export format 'onnxx'.*onnx"):
        model.export(tmp_path / "m", format="onnxx")
    if "torch-export" not in tk_export.formats():
        pytest.skip("no torch-export format registered")
    owner, fmt = tk_export.formats()["torch-export"]
    import dataclasses

    from transferkit.plugins import registry

    fw = registry().framework(owner)
    fake = dataclasses.replace(fmt, requires=("not_a_module_xyz",))
    monkeypatch.setattr(type(fw), "exports", (fake,) + tuple(
        f for f in fw.exports if f.name != "torch-export"
    ))  # fmt: skip
    match = r"not_a_module_xyz.*transferkit\[export\]"
    with pytest.raises(FrameworkNotInstalledError, match=match):
        model.export(tmp_path / "m", format="torch-export")


def test_an_export_that_differs_is_not_kept(saved, tmp_path, monkeypatch):
    model, _, x = saved
    if "torch-export" not in tk_export.formats():
        pytest.skip("no torch-export format registered")
    owner, _ = tk_export.formats()["torch-export"]
    from transferkit.plugins import registry

    fw = type(registry().framework(owner))
    real = fw.run_exported
    target = tmp_path / "m.pt2"
    model.export(target, format="torch-export")  # an older export, replaced only if good
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["m.pt2", "m.pt2.json"]
    monkeypatch.setattr(
        fw, "run_exported", lambda self, p, f, x, s=None: real(self, p, f, x, s) + 0.01
    )
    with pytest.raises(tk_export.ExportError, match="differ .* by up to 0.01"):
        model.export(target, format="torch-export")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    monkeypatch.setattr(fw, "run_exported", real)
    path = model.export(tmp_path / "m", format="torch-export")  # the suffix is added
    assert path == target
    meta = json.loads((tmp_path / "m.pt2.json").read_text())
    assert meta["classes"] == ["a", "b", "c"] and meta["output"] == "probabilities"
    assert meta["input"]["shape"] == ["batch", *model.input_shape]
    assert meta["check"]["max_abs_diff"] <= meta["check"]["tolerance"]


def test_export_refuses_lora_and_text(tmp_path):
    pytest.importorskip("transformers")
    model = tk.build("torch:cnn", head=tk.Classifier(3), weights=None)
    model.peft = {"kind": "lora", "r": 2}
    with pytest.raises(ConfigError, match="'lora' modules cannot be exported"):
        model.export(tmp_path / "m.onnx", format="onnx")


def test_backbones_json_lists_export_formats(capsys):
    formats = set(tk_export.formats())
    assert main(["backbones", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows["torch:cnn"]["exports"]) == formats
    if "flax:resnet18" in rows:
        assert set(rows["flax:resnet18"]["exports"]) == formats  # through torch and keras
    if "keras:resnet50" in rows:
        assert set(rows["keras:resnet50"]["exports"]) == formats & {"savedmodel", "tflite"}
    if "hf:all-MiniLM-L6-v2" in rows:  # written by the hf framework itself, from token ids
        assert set(rows["hf:all-MiniLM-L6-v2"]["exports"]) == {"onnx", "torch-export"}


@pytest.mark.parametrize(
    ("fitted_in", "fmt"), [("keras", "torch-export"), ("flax", "savedmodel"), ("keras", "jax")]
)
def test_fitted_in_one_framework_exported_through_another(fitted_in, fmt, tmp_path):
    """Each owner of a format takes a model fitted elsewhere: the realisation carries the
    fitted weights (BatchNorm statistics included), so the export computes what the
    fitted model does."""
    pytest.importorskip(fitted_in)
    if fmt not in tk_export.formats():
        pytest.skip(f"no {fmt} format registered")
    rng = np.random.default_rng(1)
    x = rng.random((16, 16, 16, 3), dtype=np.float32)
    y = np.arange(16) % 2
    m = tk.build(f"{fitted_in}:cnn", head=tk.Classifier(2), weights=None, input_shape=(16, 16, 3))
    tk.fit(m, (x, y), epochs=1, batch_size=8, verbose=0)
    path = m.export(tmp_path / "m", format=fmt)
    meta = json.loads((tmp_path / f"{path.name}.json").read_text())
    owner, _ = tk_export.formats()[fmt]
    assert (meta["fitted_in"], meta["exported_by"]) == (fitted_in, owner) != (owner, owner)
    from transferkit.plugins import registry

    got = registry().framework(owner).run_exported(path, fmt, x[:5])
    np.testing.assert_allclose(got, m.predict(x[:5]), atol=1e-4)
