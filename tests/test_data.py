import numpy as np
import pytest
from PIL import Image

import transferkit as tk
from transferkit import data, errors
from transferkit.preprocess import prepare_images, resize


def test_few_shot_is_stratified_and_seeded():
    x = np.zeros((30, 4, 4, 1), np.float32)
    y = np.repeat([0, 1, 2], 10)
    d = tk.Dataset(x, y)
    s = d.few_shot(3, seed=1)
    assert np.bincount(s.y).tolist() == [3, 3, 3]
    assert np.array_equal(d.few_shot(3, seed=1).y, s.y)


def test_few_shot_names_the_short_class():
    d = tk.Dataset(np.zeros((7, 2, 2, 1)), np.array([0] * 5 + [1] * 2), classes=["cat", "dog"])
    with pytest.raises(errors.EmptyDataError, match="class 'dog' has 2"):
        d.few_shot(3)


def test_split_keeps_classes_and_is_disjoint():
    d = tk.Dataset(np.arange(40).reshape(40, 1).astype(np.float32), np.repeat([0, 1], 20))
    a, b = d.split(0.25, seed=0)
    assert len(a) == 30 and len(b) == 10 and np.bincount(b.y).tolist() == [5, 5]
    assert not set(a.x[:, 0]) & set(b.x[:, 0])


def test_digits_transfer_is_the_target_task_with_a_fixed_test_split():
    train, test = tk.datasets.digits_transfer(shots=10, seed=0)
    train2, test2 = tk.datasets.digits_transfer(shots=5, seed=3)
    assert train.x.shape == (50, 8, 8, 1) and train.x.dtype == np.float32
    assert train.classes == ["5", "6", "7", "8", "9"] and set(train.y) == set(range(5))
    assert np.array_equal(test.x, test2.x) and len(test) > 400
    assert train.x.min() >= 0.0 and train.x.max() <= 1.0
    src = tk.datasets.digits_source()
    assert set(src.y) == set(range(5)) and len(src) > 850


def test_faces():
    train, test = tk.datasets.faces(shots=5, seed=0)
    assert train.x.shape == (10, 25, 25, 1) and len(test) == 100
    assert train.classes == ["non-face", "face"] and np.bincount(test.y).tolist() == [50, 50]


def test_resize_is_exact_on_constant_images_and_preserves_mean():
    x = np.full((2, 8, 8, 1), 0.25, np.float32)
    assert np.allclose(resize(x, (32, 32)), 0.25)
    r = np.random.default_rng(0).random((1, 64, 64, 3)).astype(np.float32)
    assert resize(r, (16, 16)).shape == (1, 16, 16, 3)
    assert abs(resize(r, (16, 16)).mean() - r.mean()) < 1e-3


def test_prepare_images_channels_size_and_normalisation():
    grey = np.full((3, 8, 8), 1.0, np.float32)
    out = prepare_images(grey, (16, 16, 3), (0.5,), (0.5,))
    assert out.shape == (3, 16, 16, 3) and np.allclose(out, 1.0)
    rgb = np.zeros((1, 4, 4, 3), np.float32)
    assert prepare_images(rgb, (4, 4, 1), (0.5,), (0.5,)).shape == (1, 4, 4, 1)


def test_image_folder(tmp_path):
    for c, colour in (("cat", 0), ("dog", 255)):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.full((10, 12, 3), colour, np.uint8)).save(tmp_path / c / f"{i}.png")
    d = data.image_folder(tmp_path)
    assert d.classes == ["cat", "dog"] and d.x.shape == (6, 10, 12, 3)
    assert d.x[d.y == 1].min() == 1.0 and d.x[d.y == 0].max() == 0.0
    assert data.image_folder(tmp_path, size=(8, 8)).x.shape == (6, 8, 8, 3)
    with pytest.raises(errors.EmptyDataError, match="no class sub-directories"):
        data.image_folder(tmp_path / "cat")


def test_input_checks_name_the_problem():
    shape = (32, 32, 3)
    with pytest.raises(errors.InputShapeError, match=r"\(N, H, W, C\)"):
        data.check_inputs(np.zeros((2, 32, 32, 5)), "image", shape)
    with pytest.raises(errors.InputDTypeError, match="dtype"):
        data.check_inputs(np.array([["a"]]), "image", shape)
    with pytest.raises(errors.EmptyDataError):
        data.check_inputs(np.zeros((0, 8, 8, 1)), "image", shape)
    bad = np.zeros((3, 8, 8, 1), np.float32)
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(errors.NonFiniteInputError, match="1 example"):
        data.check_inputs(bad, "image", shape)


def test_label_checks():
    with pytest.raises(errors.LabelError, match=r"outside \[0, 3\)"):
        data.check_labels(np.array([0, 3]), 2, "classification", 3)
    with pytest.raises(errors.LabelError, match="integer class indices"):
        data.check_labels(np.array([0.5, 1.0]), 2, "classification", 3)
    with pytest.raises(errors.LabelError, match="3 entries for 2 inputs"):
        data.check_labels(np.array([0, 1, 1]), 2, "classification", 3)
    assert data.check_labels(np.array([1.0, 2.0]), 2, "regression", 1).shape == (2, 1)
