"""``tk.find_lr`` and ``tk.fit(lr="auto")``; the same in every framework is in the
conformance suite (``transferkit/testing/methods.py``)."""

import json
import math

import numpy as np
import pytest

pytest.importorskip("torch")

import transferkit as tk  # noqa: E402
from transferkit import errors  # noqa: E402
from transferkit.lr_finder import steep, valley  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    return tk.datasets.digits_transfer(shots=10, seed=0)


def cnn():
    return tk.build("torch:cnn", head=tk.Classifier(5), input_shape=(16, 16, 3))


def test_the_range_test_grows_the_lr_and_puts_the_model_back(digits, tmp_path):
    train, _ = digits
    model = cnn()
    before = model.get_weights()
    finder = tk.find_lr(model, train, start=1e-6, end=1.0, steps=30, batch_size=8)
    after = model.get_weights()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # BatchNorm stats too
    assert model.history == [] and model.batchnorm is None
    lrs = np.array(finder.lrs)
    assert lrs[0] == pytest.approx(1e-6)
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], (1.0 / 1e-6) ** (1 / 29), rtol=1e-9)
    assert len(finder.lrs) == len(finder.losses) == len(finder.raw_losses) <= 30
    assert 1e-6 <= finder.suggestion <= 1.0 and finder.rule == "valley"
    assert set(finder.suggestions) == {"valley", "steep", "minimum"}
    assert finder.plot(tmp_path / "lr.png").stat().st_size > 10_000
    assert "suggestion=" in repr(finder)


def test_a_diverging_loss_ends_the_test(digits):
    train, _ = digits
    finder = tk.find_lr(cnn(), train, start=1e-3, end=1e5, steps=40, batch_size=8)
    assert len(finder.lrs) < 40
    if finder.stopped.startswith("the loss diverged at lr"):
        # the step that went past 4x the lowest smoothed loss is the last one recorded
        assert finder.losses[-1] > 4 * min(finder.losses) >= max(finder.losses[:-1])
    else:
        assert finder.stopped.startswith("the loss became")


def test_the_rules_on_a_known_curve():
    lrs = list(np.logspace(-6, 0, 13))
    losses = [2.0, 2.0, 1.9, 1.7, 1.4, 0.8, 0.7, 0.5, 0.45, 0.6, 1.2, 2.5, 5.0]
    # the longest fall is indices 0, 2..8 (length 8, from 0): fastai's point is
    # start + int(8/3) + int(8/3/2) = 3
    assert valley(lrs, losses) == lrs[3]
    assert steep(lrs, losses) == lrs[4]  # (0.8 - 1.7) over two steps: the steepest
    assert valley(lrs[:2], losses[:2]) is None


def test_fit_lr_auto_says_what_it_chose(digits, capsys):
    train, _ = digits
    model = cnn()
    h = tk.fit(model, train, lr="auto", epochs=2, batch_size=8, verbose=2)
    chosen = h.lr_finder.suggestion
    assert f"lr='auto': the learning-rate range test chose lr={chosen:.2e}" in (
        capsys.readouterr().err
    )
    # cosine from the chosen rate: the first epoch ends just below it
    assert 0.5 * chosen < h["lr"][0] <= chosen


def test_a_range_test_that_diverges_at_once_falls_back_with_a_warning(digits):
    train, _ = digits
    model = cnn()
    head = {k: v for k, v in model.get_weights().items() if k.startswith("head.")}
    model.set_weights({k: np.full_like(v, 3e38) for k, v in head.items()})  # inf logits
    with pytest.raises(errors.TrainingError, match="recorded no finite loss"):
        tk.find_lr(model, train, batch_size=8)
    with (
        pytest.warns(UserWarning, match=r"lr='auto': .*using lr=0.001"),
        pytest.raises(errors.TrainingError, match="the training loss became nan"),
    ):
        tk.fit(model, train, lr="auto", epochs=1, batch_size=8, verbose=0)


def test_bad_arguments_are_named(digits):
    train, _ = digits
    model = cnn()
    with pytest.raises(errors.ConfigError, match="end must be"):
        tk.find_lr(model, train, start=1.0, end=0.1)
    with pytest.raises(errors.ConfigError, match="find_lr\\(\\) sets lr itself"):
        tk.find_lr(model, train, lr=0.1)
    with pytest.raises(errors.ConfigError, match="rule must be one of"):
        tk.find_lr(model, train, rule="fastest")
    with pytest.raises(errors.ConfigError, match="steps must be"):
        tk.find_lr(model, train, steps=2)
    with pytest.raises(errors.ConfigError, match="lr must be a number"):
        tk.fit(model, train, lr="automatic")


def test_a_callable_schedule_multiplies_the_lr(digits):
    train, _ = digits
    h = tk.fit(
        cnn(), train, epochs=2, lr=0.01, batch_size=8, verbose=0,
        schedule=lambda step, total: 0.5 if step >= total // 2 else 1.0,
    )  # fmt: skip
    assert h["lr"] == [0.01, 0.005]  # the last step of each epoch: 6 (of 14), then 13
    with pytest.raises(errors.ConfigError, match="schedule function returned nan"):
        tk.fit(cnn(), train, epochs=1, verbose=0, schedule=lambda s, t: math.nan)


def test_cli_find_lr_and_fit_lr_auto(tmp_path, capsys):
    from transferkit.cli import main

    args = ["--backbone", "torch:cnn", "--data", "builtin:digits", "--shots", "4"]
    assert main(["find-lr", *args, "--steps", "20", "--plot", str(tmp_path / "lr.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rule"] == "valley" and out["steps"] <= 20 and (tmp_path / "lr.png").is_file()
    assert 1e-7 <= out["suggestion"] <= 10
    fit = ["fit", *args, "--epochs", "1", "--lr", "auto", "--out", str(tmp_path / "m")]
    assert main(fit) == 0
    assert "lr='auto': the learning-rate range test chose lr=" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["fit", *args, "--lr", "fast"])
    assert stop.value.code == 2
    assert "expected a number or 'auto', got 'fast'" in capsys.readouterr().err
