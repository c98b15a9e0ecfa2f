"""``tk.rank``: candidates, metrics, layer scores, reports and bad input. The same in
every framework is in the conformance suite (``transferkit/testing/groups.py``)."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")

import transferkit as tk  # noqa: E402
from transferkit import errors  # noqa: E402
from transferkit.cli import main  # noqa: E402
from transferkit.ranking import source_classifier  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    return tk.datasets.digits_transfer(shots=6, seed=0)[0]


def test_pretrained_features_outrank_a_random_start_and_reports_say_so(digits, tmp_path):
    ranking = tk.rank(
        ["torch:cnn", ("torch:cnn", {"weights": None}), "torch:m?p"], digits, verbose=0
    )
    names = [(r.name, r.weights) for r in ranking.rows]
    assert len(names) == 3 and ranking.rows[0].score >= ranking.rows[-1].score
    scores = {(r.name, r.weights == "random init"): r.score for r in ranking.rows}
    assert scores[("torch:cnn", False)] > scores[("torch:cnn", True)]
    assert ranking.best in ("torch:cnn", "torch:mlp")
    table = ranking.to_markdown()
    assert "| 1 |" in table and "torch:cnn (random init)" in table and "logme" in table
    doc = json.loads(ranking.to_json())
    assert doc["metric"] == "logme" and doc["examples"] == 30 and len(doc["rows"]) == 3
    out = ranking.save(tmp_path / "r")
    written = {"rank.json", "rank.md", "rank.png"}
    assert {p.name for p in out.iterdir()} == written | {".transferkit-written.json"}


def test_layer_scores_suggest_what_to_train(digits):
    ranking = tk.rank(["torch:cnn"], digits, layers=True, verbose=0)
    row = ranking.rows[0]
    assert list(row.layers) == ["stage1", "stage2", "stage3", "stage4"]
    best = max(row.layers, key=row.layers.get)
    n = 3 - ["stage1", "stage2", "stage3", "stage4"].index(best)
    assert row.suggested_freeze == (f"TrainLast({n})" if n else "FeatureExtraction()")
    policy = row.freeze_policy()
    assert isinstance(policy, tk.freeze.TrainLast if n else tk.freeze.FeatureExtraction)
    assert getattr(policy, "n", 0) == n


def test_leep_needs_a_source_classifier(digits):
    assert source_classifier(tk.list_backbones("torch:cnn")[0]) is None
    with pytest.raises(errors.ConfigError, match="needs the source classifier, which torch:cnn"):
        tk.rank(["torch:cnn"], digits, metric="leep")
    lite0 = tk.list_backbones("torch:efficientnet_lite0")[0]
    w, b = source_classifier(lite0)
    assert w.shape == (1000, 1280) and b.shape == (1000,)


def test_bad_candidates_are_named_before_any_work(digits):
    with pytest.raises(errors.UnknownBackboneError, match="torch:cnn"):
        tk.rank(["torch:cnn", "torch:cnnn"], digits)
    with pytest.raises(errors.ConfigError, match="takes text inputs, but the data are image"):
        tk.rank(["hf:all-MiniLM-L6-v2"], digits)
    with pytest.raises(errors.ConfigError, match="no installed image backbone matches"):
        tk.rank(["nothing:*"], digits)
    with pytest.raises(errors.ConfigError, match="metric must be one of"):
        tk.rank(["torch:cnn"], digits, metric="logmee")
    with pytest.raises(errors.ConfigError, match="needs candidates"):
        tk.rank([], digits)
    with pytest.raises(errors.ConfigError, match="'torch:resnet18' has no pretrained weights"):
        tk.rank(["torch:cnn", "torch:resnet18"], digits)


def test_a_pattern_ranks_the_backbones_with_weights(digits):
    ranking = tk.rank(["torch:*"], digits, input_shape=(32, 32, 3), verbose=0)
    names = {r.name for r in ranking.rows}
    assert {"torch:cnn", "torch:efficientnet_lite0"} <= names
    assert "torch:resnet18" not in names  # no pretrained weights ship


def test_cli_rank(tmp_path, capsys):
    args = ["rank", "--data", "builtin:digits", "--shots", "5", "--backbones", "torch:cnn"]
    assert main([*args, "--metric", "knn", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr()
    assert "| 1 | torch:cnn |" in out.out and "rank.json" in out.err
    assert json.loads((tmp_path / "r" / "rank.json").read_text())["metric"] == "knn"
    assert main([*args, "--json", "--layers"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert list(rows[0]["layers"]) == ["stage1", "stage2", "stage3", "stage4"]
    assert main(["rank", "--data", "builtin:digits", "--backbones", " , "]) == 2
    assert "names no backbone" in capsys.readouterr().err


def test_a_scored_model_is_unchanged(digits):
    model = tk.build("torch:cnn", head=tk.Classifier(5))
    before = model.get_weights()
    tk.rank([model], digits, layers=True, verbose=0)
    after = model.get_weights()
    assert all(np.array_equal(before[k], after[k]) for k in before)
