"""tk.regularizers: the specifications, their bad input, and the command line."""

import numpy as np
import pytest

import transferkit as tk
from transferkit import errors
from transferkit import weights as wio
from transferkit.cli import main


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda: tk.regularizers.L2SP(alpha=-1), r"L2SP\(alpha\) must be >= 0"),
        (lambda: tk.regularizers.L2SP(beta=float("nan")), r"L2SP\(beta\) must be finite"),
        (lambda: tk.regularizers.L2SP(alpha="0.1"), "must be a number.*without quotes"),
        (lambda: tk.regularizers.L2SP(anchor=3), "anchor=...\\) is the path"),
        (lambda: tk.regularizers.L2(beta=-0.1), r"L2\(beta\) must be >= 0"),
        (lambda: tk.regularizers.from_name("l1"), "unknown regularizer 'l1'"),
        (lambda: tk.regularizers.from_name("l2", alpha=1), "unexpected keyword"),
    ],
)
def test_bad_regularizers(make, problem):
    with pytest.raises(errors.ConfigError, match=problem):
        make()


def test_penalties_cover_weights_not_statistics():
    w = {
        "backbone.conv.weight": np.ones((2, 2), np.float32),
        "backbone.bn.weight": np.ones(2, np.float32),
        "backbone.bn.running_mean": np.ones(2, np.float32),
        "backbone.bn.running_var": np.ones(2, np.float32),
        "head.out.weight": np.full((3, 2), 2.0, np.float32),
    }
    p = tk.regularizers.L2SP(alpha=0.5, beta=0.25).penalty(w)
    assert p.coefficients == {
        "backbone.conv.weight": 0.5,
        "backbone.bn.weight": 0.5,
        "head.out.weight": 0.25,
    }
    assert set(p.anchors) == {"backbone.conv.weight", "backbone.bn.weight"}
    assert p.value(w) == pytest.approx(0.25 / 2 * 4 * 6)  # the backbone sits on its anchor
    moved = {**w, "backbone.conv.weight": np.full((2, 2), 3.0, np.float32)}
    assert p.value(moved) == pytest.approx(0.5 / 2 * 4 * 4 + 0.25 / 2 * 4 * 6)
    l2 = tk.regularizers.L2(beta=0.1).penalty(w)
    assert not l2.anchors and l2.value(w) == pytest.approx(0.1 / 2 * (4 + 2 + 24))


@pytest.fixture
def digits():
    pytest.importorskip("torch")
    train, _ = tk.datasets.digits_transfer(shots=3, seed=0)
    return train


def test_anchor_files_are_checked_before_training(digits, tmp_path):
    model = tk.build("torch:mlp", head=tk.Classifier(5), weights=None)
    before = model.get_weights()
    with pytest.raises(errors.WeightsError, match="does not exist"):
        reg = tk.regularizers.L2SP(anchor=tmp_path / "nope.safetensors")
        tk.fit(model, digits, epochs=1, verbose=0, regularizer=reg)
    other = tk.build("torch:cnn", head=tk.Classifier(5), weights=None).get_weights()
    wio.save(other, tmp_path / "cnn.safetensors")
    with pytest.raises(errors.WeightsError, match="L2SP anchor.*missing.*fc1.weight"):
        reg = tk.regularizers.L2SP(anchor=tmp_path / "cnn.safetensors")
        tk.fit(model, digits, epochs=1, verbose=0, regularizer=reg)
    after = model.get_weights()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    # a backbone file without the prefix, with a pretrained head beside it, is an anchor
    bare = {k[9:]: v for k, v in before.items() if k.startswith("backbone.")}
    wio.save(bare, tmp_path / "bare.safetensors")
    reg = tk.regularizers.L2SP(anchor=tmp_path / "bare.safetensors")
    h = tk.fit(model, digits, epochs=1, verbose=0, regularizer=reg)
    assert h["reg_loss"][0] > 0
    with pytest.raises(errors.ConfigError, match="regularizer= expects"):
        tk.fit(model, digits, epochs=1, verbose=0, regularizer="l2sp")


def test_a_frozen_backbone_warns_that_only_the_head_term_applies(digits):
    model = tk.build("torch:mlp", head=tk.Classifier(5), weights=None)
    with pytest.warns(UserWarning, match="only the head's term applies"):
        tk.fit(
            model,
            digits,
            epochs=1,
            verbose=0,
            freeze=tk.freeze.FeatureExtraction(),
            regularizer=tk.regularizers.L2SP(),
        )


def test_command_line_regularizer(digits, tmp_path, capsys):
    out = tmp_path / "m"
    code = main(
        ["fit", "--backbone", "torch:mlp", "--data", "builtin:digits", "--shots", "2",
         "--epochs", "2", "--regularizer", "l2sp", "--alpha", "0.1", "--beta", "0.01",
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0 and "reg_loss" in (out / "history.csv").read_text().splitlines()[0]
    (tmp_path / "run.toml").write_text(
        'backbone = "torch:mlp"\ndata = "builtin:digits"\nshots = 2\nepochs = 1\n'
        f'regularizer = "l2"\nbeta = 0.5\nout = "{tmp_path / "m2"}"\n'
    )
    assert main(["fit", "--config", str(tmp_path / "run.toml")]) == 0
    capsys.readouterr()
    assert main(["fit", "--backbone", "torch:mlp", "--data", "builtin:digits", "--alpha", "1"]) == 2
    assert "regularizer = 'none' takes none of them" in capsys.readouterr().err
    code = main(["fit", "--config", str(tmp_path / "run.toml"), "--alpha", "0.1"])
    assert code == 2 and "'l2' takes beta" in capsys.readouterr().err
