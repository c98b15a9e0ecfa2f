"""The benchmark suite: a tiny run end to end (fields and sane values, never timings),
and what happens with bad suites, missing frameworks, crashing and hanging cases."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from transferkit import bench
from transferkit.errors import ConfigError

HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_FLAX = all(importlib.util.find_spec(m) for m in ("jax", "flax", "optax"))
HAVE_KERAS_JAX = all(importlib.util.find_spec(m) for m in ("keras", "jax"))


def tiny(frameworks, **task) -> dict:
    return {
        "name": "tiny",
        "steps": 3,
        "warmup": 1,
        "rounds": 2,
        "timeout_s": 120,
        "matmul_n": 128,
        "task": [
            {
                "name": "digits",
                "data": "digits",
                "backbones": ["mlp"],
                "frameworks": frameworks,
                "batch_sizes": [16],
                "shots": [2, 5],
                "epochs": 1,
                "test_size": 50,
                "target_accuracy": 0.2,
                **task,
            }
        ],
    }


CASE_FIELDS = (
    "id",
    "task",
    "backbone",
    "arch",
    "framework",
    "batch",
    "status",
    "device",
    "weights",
    "input_shape",
    "import_s",
    "build_s",
    "first_step_s",
    "step_ms",
    "samples_per_s",
    "flops_per_step",
    "gflops_per_s",
    "fraction_of_matmul_peak",
    "peak_rss_mb",
    "accuracy",
    "baselines",
    "wall_s",
)


@pytest.mark.skipif(not (HAVE_TORCH and HAVE_FLAX), reason="needs torch and jax/flax")
def test_tiny_suite_end_to_end(tmp_path):
    fws = ["torch", "flax"]
    suite = tiny(fws)
    # A second task whose case cannot build (cnn takes 3 channels): reported, not raised.
    suite["task"].append(
        {**suite["task"][0], "name": "broken", "backbones": ["cnn"], "frameworks": ["torch"]}
    )
    suite["task"][1]["input_shape"] = {"cnn": [32, 32, 1]}
    doc = bench.run(suite, out=tmp_path, verbose=False)

    on_disk = json.loads((tmp_path / "bench.json").read_text())
    assert on_disk["complete"] is True and len(on_disk["cases"]) == len(fws) + 1
    assert (tmp_path / "bench.md").read_text().startswith("# transferkit bench")
    assert (tmp_path / "bench_ms_per_step.png").stat().st_size > 1000
    assert (tmp_path / "bench_accuracy.png").stat().st_size > 1000

    m = doc["machine"]
    assert m["cpu"] and m["cores_available"] >= 1
    assert m["libraries"]["numpy"] and m["libraries"]["torch"]
    assert m["matmul"]["best_gflops"] > 0 and m["matmul_peak_gflops"] > 0
    assert "x3 for a training step" in doc["flops_method"]

    ok = [c for c in doc["cases"] if c["status"] == "ok"]
    assert [c["framework"] for c in ok] == fws
    for c in ok:
        assert set(CASE_FIELDS) <= set(c), set(CASE_FIELDS) - set(c)
        assert c["input_shape"] == [8, 8, 1] and c["batch"] == 16
        assert c["device"].startswith("cpu") or "gpu" in c["device"] or "cuda" in c["device"]
        st = c["step_ms"]
        assert st["n"] == 3 and 0 < st["q1"] <= st["median"] <= st["q3"]
        assert c["samples_per_s"] == pytest.approx(16 / st["median"] * 1e3)
        # mlp on 8x8x1, linear head to 5 classes: (64*128 + 128*64 + 64*5) MACs x 6 x 16
        assert c["flops_per_step"] == 6 * (64 * 128 + 128 * 64 + 64 * 5) * 16
        assert c["gflops_per_s"] > 0 and c["peak_rss_mb"] > 50
        assert c["import_s"] > 0 and c["build_s"] > 0 and c["first_step_s"] > 0
        acc = c["accuracy"]["per_shots"]
        assert set(acc) == {"2", "5"}
        for k, a in acc.items():
            assert a["train_size"] == 5 * int(k) and a["test_size"] == 50
            assert 0.0 <= a["final_accuracy"] <= 1.0 and len(a["curve"]) == 1
        (name, b), *_ = c["baselines"].items()
        assert name == {"torch": "eager", "flax": "jit"}[c["framework"]]
        assert b["status"] == "ok" and b["ratio"] > 0
        assert b["pair_ratio"]["q1"] <= b["pair_ratio"]["median"] <= b["pair_ratio"]["q3"]
        assert b["transferkit_ms"]["n"] == b["native_ms"]["n"] == b["native_wall_ms"]["n"] == 2
        assert b["native_ms"] == b["native_wall_ms"]  # a plain loop: its wall time
    # Same weights, same head initialisation, same data: the frameworks agree.
    assert ok[0]["accuracy"]["per_shots"]["5"]["final_accuracy"] == pytest.approx(
        ok[1]["accuracy"]["per_shots"]["5"]["final_accuracy"], abs=0.05
    )

    assert "Native baselines:" in (tmp_path / "bench.md").read_text()
    broken = doc["cases"][-1]
    assert broken["status"] == "failed" and "InputShapeError" in broken["error"]
    assert "3 channels" in broken["error"]
    assert "failed" in (tmp_path / "bench.md").read_text()


def test_unknown_framework_is_an_error_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="unknown framework 'pytorch'.*did you mean torch"):
        bench.run(tiny(["pytorch"]), out=tmp_path, verbose=False)
    assert not (tmp_path / "bench.json").exists()


@pytest.mark.skipif(not HAVE_TORCH, reason="needs torch")
def test_unknown_backbone_names_the_closest(tmp_path):
    with pytest.raises(ConfigError, match="resnet19.*torch:resnet18"):
        bench.run(tiny(["torch"], backbones=["resnet19"]), out=tmp_path, verbose=False)


def test_bad_suites_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no benchmark suite 'nope'.*default.*quick"):
        bench.load_suite("nope")
    with pytest.raises(ConfigError, match="data 'mnist' is not one of"):
        bench.load_suite(tiny(["torch"], data="mnist"))
    with pytest.raises(ConfigError, match="unknown key.*batch_size"):
        bench.load_suite(tiny(["torch"], batch_size=3))
    with pytest.raises(ConfigError, match="only keras takes a backend"):
        bench.check(bench.expand(bench.load_suite(tiny(["torch[jax]"]))))
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(ConfigError, match="cannot read benchmark suite"):
        bench.load_suite(bad)


def test_filters_pick_cases_by_framework_and_backbone(tmp_path):
    cases = bench.expand(bench.load_suite("default"))
    picked = bench.select(cases, ["keras[torch]"], ["cnn", "mlp"])
    assert [(c.framework, c.backbone) for c in picked] == [
        ("keras[torch]", "keras:mlp"),
        ("keras[torch]", "keras:cnn"),
    ]
    assert {c.framework for c in bench.select(cases, ["keras*"])} == {
        "keras[tensorflow]",
        "keras[jax]",
        "keras[torch]",
    }
    assert [c.backbone for c in bench.select(cases, None, ["hf:*"])] == ["hf:all-MiniLM-L6-v2"]
    with pytest.raises(ConfigError, match="no case of suite 'quick'.*frameworks: torch, flax"):
        bench.run("quick", out=tmp_path, frameworks=["tensorflow"], verbose=False)


def test_the_shipped_suites_parse():
    for name in ("default", "quick"):
        suite = bench.load_suite(name)
        cases = bench.expand(suite)
        archs = {c.backbone.partition(":")[2] for c in cases}
        assert {"mlp", "cnn"} <= archs
    default = {c.framework for c in bench.expand(bench.load_suite("default"))}
    assert {"torch", "flax", "keras[tensorflow]", "keras[jax]", "keras[torch]", "hf"} <= default


@pytest.mark.skipif(not HAVE_TORCH, reason="needs torch")
def test_framework_not_installed_is_skipped(tmp_path, monkeypatch):
    from transferkit.plugins import registry

    torch_fw = registry().frameworks["torch"]
    monkeypatch.setattr(type(torch_fw), "missing", lambda self: ["torch"])
    doc = bench.run(tiny(["torch"]), out=tmp_path, verbose=False)
    (case,) = doc["cases"]
    assert case["status"] == "skipped"
    assert "needs torch, which is not installed" in case["error"]
    assert "pip install 'transferkit[torch]'" in case["error"]
    assert "skipped" in (tmp_path / "bench.md").read_text()


@pytest.mark.skipif(not HAVE_TORCH, reason="needs torch")
def test_a_hanging_case_fails_at_its_time_limit(tmp_path):
    suite = bench.load_suite(tiny(["torch"], backbones=["cnn"]))
    suite = bench.Suite(**{**bench.asdict_shallow(suite), "timeout_s": 1.0})
    (case,) = bench.expand(suite)
    r = bench.run_case(case, suite, tmp_path)
    assert r["status"] == "failed" and "timed out after 1 s" in r["error"]
    assert r["wall_s"] < 30


def test_a_crashing_case_process_is_reported(tmp_path):
    # A spec the case process cannot even read: it dies with a traceback, no result.
    r = bench.run_part(
        {"not": "a spec"}, 60, bench._env(bench.expand(bench.load_suite(tiny(["torch"])))[0])
    )
    assert r["status"] == "failed" and "exited with code 1" in r["error"]
    assert "KeyError" in r["log_tail"]


def test_flops_are_counted_from_layer_shapes():
    # cnn on 32x32x3: 3x3 convs 3->32 (32x32), 32->64 (16x16), 64->128 (8x8), 128->128 (4x4)
    macs = 32 * 32 * 32 * 3 * 9 + 16 * 16 * 64 * 32 * 9 + 8 * 8 * 128 * 64 * 9
    macs += 4 * 4 * 128 * 128 * 9
    assert bench.forward_macs("cnn", (32, 32, 3)) == macs
    # ResNet-18 at 224x224: 1.82 GMACs (the published figure)
    assert bench.forward_macs("resnet18", (224, 224, 3)) == pytest.approx(1.814e9, rel=0.01)
    # EfficientNet-Lite0 at 224x224: about 0.39 GMACs (published 407M with its classifier)
    assert bench.forward_macs("efficientnet_lite0", (224, 224, 3)) == pytest.approx(
        0.385e9, rel=0.05
    )
    assert bench.train_step_flops("unknown", (8, 8, 1), 64, 5, 16) is None


@pytest.mark.skipif(not HAVE_TORCH, reason="needs torch")
def test_quick_suite_from_the_command_line(tmp_path):
    # The smoke run: `transferkit bench --quick` as a user types it; every field is there
    # and every value is sane. Frameworks that are not installed are reported as skipped.
    out = tmp_path / "quick"
    run = subprocess.run(
        [sys.executable, "-m", "transferkit", "bench", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads((out / "bench.json").read_text())
    assert doc["complete"] is True and doc["suite"]["name"] == "quick"
    assert doc["command"] == f"transferkit bench --quick --out {out}"
    assert {p.name for p in out.iterdir()} >= {
        "bench.json",
        "bench.md",
        "bench_ms_per_step.png",
        "bench_accuracy.png",
    }
    installed = {
        "torch": HAVE_TORCH,
        "flax": HAVE_FLAX,
        "keras[jax]": HAVE_KERAS_JAX,
    }
    assert {(c["arch"], c["framework"]) for c in doc["cases"]} == {
        (a, f) for a in ("mlp", "cnn") for f in installed
    }
    for c in doc["cases"]:
        if not installed[c["framework"]]:
            assert c["status"] == "skipped", c
            continue
        assert c["status"] == "ok", c.get("error")
        assert set(CASE_FIELDS) <= set(c), set(CASE_FIELDS) - set(c)
        st = c["step_ms"]
        assert st["n"] == 10 and 0 < st["q1"] <= st["median"] <= st["q3"]
        assert 0 < c["fraction_of_matmul_peak"] < 1.5 and c["peak_rss_mb"] > 50
        for a in c["accuracy"]["per_shots"].values():
            # a stratified subset of 150: rounded per class (5 classes)
            assert 0.0 <= a["final_accuracy"] <= 1.0 and 145 <= a["test_size"] <= 150
        (name, b), *_ = c["baselines"].items()
        assert b["status"] == "ok" and b["ratio"] > 0 and b["rounds"] == 6
        if name == "fit":  # timed inside Keras's fit: not the wall time of the call
            assert b["steps_per_round"] == 9 and "steady-state" in b["description"]
            assert b["native_ms"] != b["native_wall_ms"]
    # One pretrained cnn, the same head initialisation and data: the frameworks agree.
    cnn = [c for c in doc["cases"] if c["arch"] == "cnn" and c["status"] == "ok"]
    finals = {c["accuracy"]["per_shots"]["20"]["final_accuracy"] for c in cnn}
    assert max(finals) - min(finals) <= 0.05
    md = (out / "bench.md").read_text()
    assert "| digits | cnn | 32 |" in md and "Fastest framework" in md
