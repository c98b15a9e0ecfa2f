import dataclasses
import json

import numpy as np
import pytest

pytest.importorskip("torch")

import transferkit as tk  # noqa: E402
from transferkit import demo  # noqa: E402
from transferkit.cli import main  # noqa: E402


def test_backbones_and_plugins(capsys):
    assert main(["backbones", "torch:*"]) == 0
    out = capsys.readouterr().out
    assert "torch:efficientnet_lite0" in out and "ImageNet" in out
    assert main(["backbones", "--json", "torch:cnn"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["name"] == "torch:cnn" and listed[0]["groups"][0] == "stage1"
    assert len(listed) == 1
    assert main(["plugins"]) == 0
    assert "torch" in capsys.readouterr().out


def test_fit_from_toml_writes_model_and_history(tmp_path, capsys):
    x = np.random.default_rng(0).random((20, 8, 8, 1)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(20) % 2, classes=np.array(["a", "b"]))
    (tmp_path / "run.toml").write_text(
        f'backbone = "torch:cnn"\ndata = "{tmp_path / "d.npz"}"\nfreeze = "train_last"\n'
        f"freeze_options = {{n = 2}}\nepochs = 2\nhidden = [16]\nval_split = 0.2\n"
        f'out = "{tmp_path / "model"}"\n'
    )
    assert main(["fit", "--config", str(tmp_path / "run.toml"), "--lr", "0.01"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["epochs"] == 2 and 0.0 <= result["val"]["accuracy"] <= 1.0
    assert (tmp_path / "model" / "history.csv").read_text().startswith("epoch,loss,lr")
    model = tk.load(tmp_path / "model")
    assert model.classes == ["a", "b"] and model.head.hidden == (16,)


def test_cli_errors_are_one_clear_line(capsys):
    assert main(["fit", "--backbone", "torch:cnnn", "--data", "builtin:digits"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("transferkit: error: unknown backbone 'torch:cnnn'")
    assert "Traceback" not in err
    assert main(["fit", "--backbone", "torch:cnn"]) == 2
    assert "needs data" in capsys.readouterr().err


def test_demo_prints_the_table_and_writes_the_plot(tmp_path, capsys, monkeypatch):
    for task, load in demo.TASKS.items():  # the first 60 test examples of each task

        def few(shots, seed, load=load):
            train, test = load(shots=shots, seed=seed)
            return train, test.subset(np.arange(60))

        monkeypatch.setitem(demo.TASKS, task, few)
    # every kind of row, once, at 2 epochs: the machinery, not the accuracies (one Lite0
    # fine-tuning variant stands in for the three)
    methods = [
        dataclasses.replace(m, epochs=2) if m.epochs else m
        for m in demo.METHODS
        if not (m.tasks and (m.regularizer or m.interpolate))
    ]
    result = demo.run(frameworks=["torch"], shots=(1, 5), seeds=1, out=tmp_path, methods=methods)
    out = capsys.readouterr().out
    assert "| faces | pixels + logistic regression |" in out
    assert "torch: efficientnet_lite0 (ImageNet) features" in out
    rows = result["rows"]
    assert len(rows) == sum(2 if m.tasks is None else len(m.tasks) for m in methods)
    assert any("cnn (digits 0-4) fine-tuned + L2-SP" in r["method"] for r in rows)
    assert any("interpolated 0.5" in r["method"] for r in rows)
    # which backbone? LogME's choice before fitting, against the measured feature rows
    assert "Which backbone? `tk.rank` (LogME) before fitting" in out
    picks = result["which_backbone"]
    assert {(w["task"], w["shots"]) for w in picks} <= {(t, k) for t in demo.TASKS for k in (1, 5)}
    assert picks and all(w["hit"] == (w["logme_choice"] == w["best_measured"]) for w in picks)
    assert all(w["logme_choice"] in ("cnn", "efficientnet_lite0") for w in picks)
    assert all(0.0 <= r["accuracy"][k] <= 1.0 for r in rows for k in (1, 5))
    assert len(result["verdict"]) == 4
    assert all(("wins" in v or "tie" in v) and "label(s)/class" in v for v in result["verdict"])
    png = (tmp_path / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
