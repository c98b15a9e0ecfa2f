"""The benchmark suite: a tiny run end to end (fields and sane values, never timings),
and what happens with bad suites, missing frameworks, crashing and hanging cases; a
third-party framework that declares its baselines, variants, device names and MAC count
takes part with no change to the benchmark."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

import transferkit as tk
from transferkit import bench, plugins
from transferkit.bench.runner import process_env
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
    with pytest.raises(ConfigError, match=r"torch takes no variant.*keras\[jax\]"):
        bench.check(bench.expand(bench.load_suite(tiny(["torch[jax]"]))))
    with pytest.raises(ConfigError, match=r"keras takes one of keras\[tensorflow\]"):
        bench.check(bench.expand(bench.load_suite(tiny(["keras[cntk]"]))))
    with pytest.raises(ConfigError, match="'torch' has no native baseline 'jit'.*eager"):
        bench.check(bench.expand(bench.load_suite(tiny(["torch"], baselines={"torch": ["jit"]}))))
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
    # package data, read through importlib.resources (an installed wheel has them too)
    assert {p.name for p in bench.suites_dir().iterdir()} >= {"default.toml", "quick.toml"}
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
        {"not": "a spec"}, 60, process_env(bench.expand(bench.load_suite(tiny(["torch"])))[0])
    )
    assert r["status"] == "failed" and "exited with code 1" in r["error"]
    assert "KeyError" in r["log_tail"]


# cnn on 32x32x3: 3x3 convs 3->32 (32x32), 32->64 (16x16), 64->128 (8x8), 128->128 (4x4)
CNN_MACS = (
    32 * 32 * 32 * 3 * 9 + 16 * 16 * 64 * 32 * 9 + 8 * 8 * 128 * 64 * 9 + 4 * 4 * 128 * 128 * 9
)


@pytest.mark.parametrize("framework", ["torch", "flax", "keras"])
def test_frameworks_count_macs_from_layer_shapes(framework):
    fw = plugins.registry().framework(framework)
    if fw.missing():
        pytest.skip(f"needs {', '.join(fw.missing())}")

    def macs(arch, shape):
        model = tk.build(f"{framework}:{arch}", tk.Classifier(5), weights=None, input_shape=shape)
        return fw.count_macs(model) - model.spec.feature_size * 5  # less the linear head

    assert macs("cnn", (32, 32, 3)) == CNN_MACS
    # ResNet-18 at 224x224: 1.82 GMACs (the published figure)
    assert macs("resnet18", (224, 224, 3)) == pytest.approx(1.814e9, rel=0.01)
    # EfficientNet-Lite0 at 224x224: about 0.39 GMACs (published 407M with its classifier)
    assert macs("efficientnet_lite0", (224, 224, 3)) == pytest.approx(0.385e9, rel=0.05)


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


# --- a third-party framework ------------------------------------------------------------------
# A framework in plain numpy, as a separately installed package would ship it: a module
# and the ``.dist-info`` metadata pip writes, whose entry point the registry finds in this
# process and in every case process the benchmark starts (through PYTHONPATH).
NUMPY_PLUGIN = """
import os

import numpy as np

import transferkit as tk
from transferkit.framework import Baseline, Variant


def dense(input_shape):
    return None  # the engine holds the weights


def forward(w, x):
    f = np.maximum(x.reshape(len(x), -1) @ w["backbone.fc.weight"].T + w["backbone.fc.bias"], 0)
    return f, f @ w["head.out.weight"].T + w["head.out.bias"]


def grads(w, x, y):
    x = x.reshape(len(x), -1)
    f, logits = forward(w, x)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    loss = -np.log(p[np.arange(len(y)), y]).mean()
    p[np.arange(len(y)), y] -= 1
    d = p / len(y)
    df = (d @ w["head.out.weight"]) * (f > 0)
    return loss, {
        "head.out.weight": d.T @ f, "head.out.bias": d.sum(0),
        "backbone.fc.weight": df.T @ x, "backbone.fc.bias": df.sum(0),
    }


class Adam:
    def __init__(self, w):
        self.m = {k: np.zeros_like(v) for k, v in w.items()}
        self.v = {k: np.zeros_like(v) for k, v in w.items()}
        self.t = 0

    def step(self, w, g, lr, multiples):
        self.t += 1
        for k in g:
            rate = lr * multiples[k]
            if rate:
                self.m[k] = 0.9 * self.m[k] + 0.1 * g[k]
                self.v[k] = 0.999 * self.v[k] + 0.001 * g[k] ** 2
                m, v = self.m[k] / (1 - 0.9**self.t), self.v[k] / (1 - 0.999**self.t)
                w[k] -= rate * m / (np.sqrt(v) + 1e-8)


class Engine(tk.Engine):
    def __init__(self, spec, head, input_shape, seed):
        dtype = os.environ.get("NPFW_DTYPE", "float32")  # set by the variant
        rng = np.random.default_rng(seed)
        size, features = int(np.prod(input_shape)), spec.feature_size
        self.native = {
            "backbone.fc.weight": rng.normal(0, size**-0.5, (features, size)),
            "backbone.fc.bias": np.zeros(features),
            **head.initial_weights(features, seed),
        }
        self.native = {k: v.astype(dtype) for k, v in self.native.items()}
        self.backbone, self.loss, self.spec = None, head.loss, spec
        self.multiples, self.head_only = {"fc": 1.0}, False

    def param_shapes(self):
        return {k: v.shape for k, v in self.native.items()}

    def get_weights(self):
        return {k: v.astype(np.float32) for k, v in self.native.items()}

    def set_weights(self, arrays):
        self.check_names(arrays)
        for k, v in arrays.items():
            self.native[k] = np.asarray(v, self.native[k].dtype)

    def features(self, x):
        return forward(self.native, x)[0].astype(np.float32)

    def head_predict(self, f):
        w = self.native
        return (f @ w["head.out.weight"].T + w["head.out.bias"]).astype(np.float32)

    def predict(self, x):
        return forward(self.native, x)[1].astype(np.float32)

    def start_training(self, optimizer, seed):
        self.adam = Adam(self.native)

    def set_plan(self, multiples, head_only):
        self.multiples, self.head_only = dict(multiples), head_only

    def train_step(self, x, y, lr):
        loss, g = grads(self.native, x, y)
        each = {k: 1.0 if k.startswith("head.") else self.multiples["fc"] for k in g}
        self.adam.step(self.native, g, lr, each)
        return loss

    def end_training(self):
        pass

    def training_state(self):
        return {}

    def load_training_state(self, state):
        pass


class Loop:
    description = "numpy loop: the same gradients and Adam, written out"
    steps_per_round = 1

    def __init__(self, model, x, y, lr, twin=None):
        self.w = {k: v.copy() for k, v in model.native.items()}
        self.x, self.y, self.lr, self.adam = np.asarray(x), np.asarray(y), lr, Adam(self.w)

    def run(self, batches):
        for idx in batches:
            _, g = grads(self.w, self.x[idx], self.y[idx])
            self.adam.step(self.w, g, self.lr, {k: 1.0 for k in g})


class NumpyFramework(tk.Framework):
    name = "npfw"
    extra = "npfw"
    requires = ("numpy",)
    baselines = (Baseline("loop", "npfw:Loop"),)
    process_env = (("NPFW_DTYPE", "float32"),)

    def variants(self):
        return tuple(Variant(t, (), (("NPFW_DTYPE", t),)) for t in ("float32", "float64"))

    def device_name(self, model):
        return "cpu (numpy " + next(iter(model.native.values())).dtype.name + ")"

    def count_macs(self, model):
        return sum(v.size for k, v in model.native.items() if k.endswith(".weight"))

    def build(self, spec, head, input_shape, seed=0, **options):
        return Engine(spec, head, input_shape, seed)


@tk.hookimpl
def transferkit_register_frameworks(register):
    register(NumpyFramework())


@tk.hookimpl
def transferkit_register_backbones(register):
    register(tk.BackboneSpec(
        name="npfw:dense", input_kind="image", input_shape=(8, 8, 1), feature_size=16,
        groups=(("fc", ("fc",)),), factory="npfw:dense",
    ))
"""


@pytest.fixture
def numpy_framework(tmp_path, monkeypatch):
    """``npfw`` "installed" in a site directory that this process and the case processes
    (PYTHONPATH) both see; the registry is rediscovered with it, and without it after."""
    monkeypatch.delenv(plugins.ALLOW_ENV, raising=False)
    site = tmp_path / "site"
    info = site / "npfw-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "npfw.py").write_text(textwrap.dedent(NUMPY_PLUGIN))
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: npfw\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[transferkit]\nnpfw = npfw\n")
    monkeypatch.syspath_prepend(str(site))
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    plugins.reload()
    yield
    monkeypatch.undo()
    sys.modules.pop("npfw", None)
    plugins.reload()


def test_a_third_party_framework_runs_in_the_bench(numpy_framework, tmp_path):
    suite = tiny(["npfw[float64]"], backbones=["dense"], shots=[5], baselines={})
    doc = bench.run(suite, out=tmp_path / "out", verbose=False)
    (case,) = doc["cases"]
    assert case["status"] == "ok", case.get("error")
    assert case["framework"] == "npfw[float64]" and case["backbone"] == "npfw:dense"
    # The variant's environment reached the case process: the engine computes in float64.
    assert case["device"] == "cpu (numpy float64)"
    # Its MAC count (the dense layer 64 -> 16 and the head 16 -> 5) gives the FLOPs.
    assert case["flops_per_step"] == 6 * (64 * 16 + 16 * 5) * 16
    assert case["gflops_per_s"] > 0 and case["step_ms"]["n"] == 3
    assert 0.0 <= case["accuracy"]["per_shots"]["5"]["final_accuracy"] <= 1.0
    # Its declared baseline ran by default, alternately with the engine step.
    b = case["baselines"]["loop"]
    assert b["status"] == "ok" and b["ratio"] > 0 and b["device"] == "cpu (numpy float64)"
    assert b["description"].startswith("numpy loop")
    assert doc["suite"]["tasks"][0]["baselines"]["npfw"] == ["loop"]
    md = (tmp_path / "out" / "bench.md").read_text()
    assert "| digits | dense | 16 | " in md and "vs loop" in md
    with pytest.raises(ConfigError, match=r"npfw takes one of npfw\[float32\], npfw\[float64\]"):
        bench.check(bench.expand(bench.load_suite(tiny(["npfw[float16]"], backbones=["dense"]))))


def test_a_framework_registered_in_process_only_is_an_error(numpy_framework, monkeypatch):
    # The same framework registered with tk.register, not installed: a case process would
    # not find it, so the benchmark says so before anything runs.
    import npfw

    monkeypatch.setenv(plugins.ALLOW_ENV, "torch")
    plugins.reload()
    tk.register(npfw, "npfw-local")
    with pytest.raises(ConfigError, match="registered in this process only"):
        bench.check(bench.expand(bench.load_suite(tiny(["npfw"], backbones=["dense"]))))
