"""Data at scale: lazy image sets (identical results to the in-memory path, in every
framework), bad files skipped and named, the on-disk feature cache (reused, rebuilt when
corrupt, errors that name the fix), and the data sets users already have (Hugging Face
``datasets``, data sets of pairs, batches)."""

import warnings

import numpy as np
import pytest
from PIL import Image

import transferkit as tk
from transferkit import errors, feature_store
from transferkit.cli import main
from transferkit.lazy import LazyImages


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes x 8 JPEGs of 20x20, one truncated, one not an image."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["ant", "bee", "cat"]):
        (root / name).mkdir()
        for i in range(8):
            img = np.clip(rng.normal(60 + 70 * c, 40, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.jpg", quality=95)
    cut = (root / "bee" / "0.jpg").read_bytes()
    (root / "bee" / "0.jpg").write_bytes(cut[:-40])  # the header is whole
    (root / "cat" / "notes.png").write_bytes(b"not an image")
    return root


def _load(folder, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = tk.data.image_folder(folder, **kw)
    return data, [str(w.message) for w in caught]


def test_lazy_folder_knows_labels_and_skips_bad_files(folder):
    data, said = _load(folder)
    assert isinstance(data.x, LazyImages) and len(data) == 23 and data.classes[1] == "bee"
    assert np.bincount(data.y).tolist() == [8, 7, 8]
    assert len(said) == 1 and "skipped 2 unreadable" in said[0]
    assert "0.jpg" in said[0] and "the JPEG file is truncated" in said[0] and "notes.png" in said[0]
    with pytest.raises(errors.InputDTypeError, match=r"cannot read 2 image file\(s\)"):
        tk.data.image_folder(folder, strict=True)
    few = data.few_shot(3, seed=1)  # nothing decoded: still lazy, the same images
    assert isinstance(few.x, LazyImages) and len(few) == 9
    memory, _ = _load(folder, lazy=False)
    assert isinstance(memory.x, np.ndarray) and memory.x.shape == (23, 20, 20, 3)
    np.testing.assert_array_equal(few.x[np.arange(9)], memory.few_shot(3, seed=1).x)
    np.testing.assert_array_equal(data.x[data.y == 2], memory.x[memory.y == 2])
    resized, _ = _load(folder, size=(12, 16))
    assert resized.x.shape == (23, 12, 16, 3) and resized.x[:2].shape == (2, 12, 16, 3)


def test_lazy_and_in_memory_fit_identically(folder, framework, tmp_path):
    lazy, _ = _load(folder)
    memory, _ = _load(folder, lazy=False)
    out = []
    for data in (lazy, memory):
        m = tk.build(f"{framework}:cnn", head=tk.Classifier(3), weights=None,
                     input_shape=(16, 16, 3))  # fmt: skip
        h = tk.fit(m, data, freeze=tk.freeze.FullFineTune(), epochs=2, batch_size=8,
                   verbose=0, seed=3)  # fmt: skip
        out.append((h["loss"], m.predict(data.x), m.evaluate(data)))
    assert out[0][0] == out[1][0]
    np.testing.assert_array_equal(out[0][1], out[1][1])
    assert out[0][2] == out[1][2]


def test_frozen_backbone_features_cached_on_disk(folder, tmp_path):
    lazy, _ = _load(folder)
    memory, _ = _load(folder, lazy=False)
    cache = tmp_path / "cache"
    m = tk.build("torch:cnn", head=tk.Classifier(3), input_shape=(16, 16, 3))
    h1 = tk.fit(m, lazy, freeze=tk.freeze.FeatureExtraction(), cache_dir=cache, verbose=0)
    [entry] = feature_store.entries(cache)
    assert entry["complete"] and entry["examples"] == 23 and entry["backbone"] == "torch:cnn"
    assert entry["bytes"] > 23 * 128 * 4
    stamp = (cache / entry["entry"] / "features.npy").stat().st_mtime_ns
    m2 = tk.build("torch:cnn", head=tk.Classifier(3), input_shape=(16, 16, 3))
    h2 = tk.fit(m2, lazy, freeze=tk.freeze.FeatureExtraction(), cache_dir=cache, verbose=0)
    assert (cache / entry["entry"] / "features.npy").stat().st_mtime_ns == stamp  # reused
    assert h1["loss"] == h2["loss"]
    m3 = tk.build("torch:cnn", head=tk.Classifier(3), input_shape=(16, 16, 3))
    h3 = tk.fit(m3, memory, freeze=tk.freeze.FeatureExtraction(), verbose=0)  # in memory
    np.testing.assert_allclose(h3["loss"], h1["loss"], rtol=1e-6)
    # another backbone version (other weights) gets an entry of its own
    m4 = tk.build("torch:cnn", head=tk.Classifier(3), weights=None, input_shape=(16, 16, 3))
    tk.fit(m4, lazy, freeze=tk.freeze.FeatureExtraction(), cache_dir=cache, verbose=0)
    assert len(feature_store.entries(cache)) == 2
    # a corrupt entry is found and rebuilt
    (cache / entry["entry"] / "features.npy").write_bytes(b"garbage")
    m5 = tk.build("torch:cnn", head=tk.Classifier(3), input_shape=(16, 16, 3))
    with pytest.warns(UserWarning, match="incomplete or corrupt; rebuilding"):
        h5 = tk.fit(m5, lazy, freeze=tk.freeze.FeatureExtraction(), cache_dir=cache, verbose=0)
    assert h5["loss"] == h1["loss"]
    assert main(["cache", "--dir", str(cache), "--clear"]) == 0
    assert feature_store.entries(cache) == []


def test_unwritable_cache_names_the_fix(folder, tmp_path):
    lazy, _ = _load(folder)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory would go")
    m = tk.build("torch:cnn", head=tk.Classifier(3), input_shape=(16, 16, 3))
    match = "cannot write the feature cache.*cache_dir="
    with pytest.raises(feature_store.CacheError, match=match):
        tk.fit(m, lazy, freeze=tk.freeze.FeatureExtraction(), cache_dir=blocker / "c", verbose=0)


def test_hugging_face_datasets_images_and_text(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)) for _ in range(9)]
    feats = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y", "z"])}
    )
    ds = datasets.Dataset.from_dict({"img": imgs, "label": [0, 1, 2] * 3}, features=feats)
    data = tk.data.from_hf(ds)
    assert isinstance(data.x, LazyImages) and data.classes == ["x", "y", "z"]
    expected = np.stack([np.asarray(i, np.float32) / 255 for i in imgs])
    np.testing.assert_array_equal(data.x[np.arange(9)], expected)
    m = tk.build("torch:cnn", head=tk.Classifier(3), weights=None, input_shape=(12, 12, 3))
    tk.fit(m, ds, epochs=1, batch_size=4, verbose=0)  # taken directly
    np.testing.assert_array_equal(m.predict(ds), m.predict(expected))
    assert m.evaluate(ds) == m.evaluate((expected, data.y))
    with pytest.raises(errors.DataError, match="no column 'image'.*img, label"):
        tk.data.from_hf(ds, x="image")
    text = datasets.Dataset.from_dict({"sentence": ["good", "bad", "fine"], "labels": [1, 0, 1]})
    t = tk.data.from_hf(text)
    assert t.x == ["good", "bad", "fine"] and t.y.tolist() == [1, 0, 1]
    odd = datasets.Dataset.from_dict({"a": [1], "b": [2]})
    with pytest.raises(errors.DataError, match=r"cannot tell which column.*a, b"):
        tk.data.from_hf(odd)


class Pairs:
    """A torchvision-style data set: (PIL image, label) items and ``targets``."""

    def __init__(self, n):
        rng = np.random.default_rng(1)
        self.images = [rng.integers(0, 255, (10, 10, 3), dtype=np.uint8) for _ in range(n)]
        self.targets = [i % 2 for i in range(n)]
        self.reads = 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.reads += 1
        return Image.fromarray(self.images[i]), self.targets[i]


def test_data_sets_of_pairs_and_batches():
    pairs = Pairs(8)
    data = tk.data.from_pairs(pairs)
    reads = pairs.reads
    assert isinstance(data.x, LazyImages) and data.y.tolist() == [0, 1] * 4
    assert data.x[[2, 5]].shape == (2, 10, 10, 3) and pairs.reads == reads + 2  # on demand
    m = tk.build("torch:cnn", head=tk.Classifier(2), weights=None, input_shape=(10, 10, 3))
    tk.fit(m, pairs, epochs=1, batch_size=4, verbose=0)
    x = np.stack(pairs.images).astype(np.float32) / 255
    np.testing.assert_array_equal(m.predict(pairs), m.predict(x))
    batches = [(x[i : i + 3], np.array(pairs.targets[i : i + 3])) for i in range(0, 8, 3)]
    b = tk.data.from_batches(iter(batches))
    np.testing.assert_array_equal(b.x, x)
    assert b.y.tolist() == pairs.targets
    with pytest.raises(errors.InputDTypeError, match=r"\(x_batch, y_batch\) pairs"):
        tk.data.from_batches([x])


def test_rank_takes_a_data_set_of_pairs():
    pairs = Pairs(12)
    x = np.stack(pairs.images).astype(np.float32) / 255
    a = tk.rank(["torch:cnn"], pairs, metric="knn")
    b = tk.rank(["torch:cnn"], (x, np.array(pairs.targets)), metric="knn")
    assert a.table[0]["score"] == b.table[0]["score"]


def test_sources_without_identity_stay_in_memory_and_values_are_checked(tmp_path):
    pairs = Pairs(8)
    m = tk.build("torch:cnn", head=tk.Classifier(2), input_shape=(10, 10, 3))
    cache = tmp_path / "cache"
    tk.fit(m, pairs, freeze=tk.freeze.FeatureExtraction(), cache_dir=cache, verbose=0)
    assert feature_store.entries(cache) == []  # no key that would hold in another run
    normalised = [((np.full((4, 4, 3), -1.5, np.float32)), 0), (np.zeros((4, 4, 3)), 1)]
    with pytest.raises(errors.InputDTypeError, match="outside \\[0, 1\\].*Normalize"):
        tk.data.from_pairs(normalised)
    rgba = [(np.zeros((4, 4, 4), np.uint8), 0)]
    with pytest.raises(errors.InputShapeError, match="alpha"):
        tk.data.from_pairs(rgba)


def test_a_jpeg_with_data_after_its_end_is_kept(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a" / "x.jpg")
    with open(tmp_path / "a" / "x.jpg", "ab") as f:
        f.write(b"\0" * 4096)  # as some cameras append
    data = tk.data.image_folder(tmp_path, strict=True)
    assert len(data) == 1 and data.x[0].shape == (8, 8, 3)


def test_predict_skips_bad_table_rows(tmp_path, capsys):
    pytest.importorskip("transformers")
    m = tk.build("hf:all-MiniLM-L6-v2", head=tk.Classifier(2), input_shape=(16,))
    m.save(tmp_path / "model")
    rows = ['{"text": "good news"}', "not json", '{"other": 1}', '{"text": ""}', '{"text": "ok"}']
    (tmp_path / "t.jsonl").write_text("\n".join(rows) + "\n")
    assert main(["predict", str(tmp_path / "model"), "--data", str(tmp_path / "t.jsonl")]) == 0
    out, err = capsys.readouterr()
    assert [r.split(",")[0] for r in out.splitlines()[1:]] == ["line 1", "line 5"]
    assert "3 of 5 inputs could not be read" in err
    assert "line 2: not valid JSON" in err and "line 3: no 'text' field" in err
    assert "line 4: empty text" in err
