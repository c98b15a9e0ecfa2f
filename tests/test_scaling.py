"""Scaling out and speeding up: mixed precision in every framework, multi-process data
parallel under each framework's own launcher (2 CPU processes), compiled PyTorch steps,
and the errors said before anything launches."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import transferkit as tk
from transferkit import datasets
from transferkit.errors import ConfigError
from transferkit.plugins import registry
from transferkit.scaling import check, check_nproc, shard

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_FLAX = importlib.util.find_spec("flax") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None
#: what a fit here is: SGD (no Adam sign noise), BatchNorm in inference mode (each
#: process normalises its own shard by batch statistics otherwise), a global batch of 15
#: over 40 examples (batches 15, 15, 10: shards of 8 and 7, then 5 and 5); a constant
#: learning rate, so that a run resumed with more epochs continues the same schedule
FIT = dict(batch_size=15, optimizer="sgd", lr=0.05, seed=0, verbose=0, batchnorm="frozen",
           schedule="constant")  # fmt: skip


def _train():
    return datasets.digits_transfer(shots=8, seed=0)[0]


# --- checks before any work ---------------------------------------------------------
def test_shard_splits_a_global_batch_contiguously():
    for n in range(1, 40):
        for world in range(1, min(n, 5) + 1):
            parts = [shard(n, r, world) for r in range(world)]
            rows = np.concatenate([np.arange(n)[p] for p in parts])
            assert rows.tolist() == list(range(n))
            sizes = [p.stop - p.start for p in parts]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_precision_and_strategy_are_checked_against_the_framework(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    flax, keras = registry().framework("flax"), registry().framework("keras")
    with pytest.raises(ConfigError, match=r"precision must be one of 32, bf16-mixed, 16-mixed"):
        check(flax, "fp8", None)
    with pytest.raises(ConfigError, match=r"flax framework does not train in precision='16-mixed'; "
                       r"it offers 32, bf16-mixed; hf, keras, timm, torch, "
                       r"torchvision do"):  # fmt: skip
        check(flax, "16-mixed", None)
    with pytest.raises(
        ConfigError,
        match=r"keras framework has no 'ddp' strategy .*tensorflow issue 72388\); Keras trains "
        r"on several processes with KERAS_BACKEND=jax\); flax, hf, timm, torch, torchvision do",
    ):
        check(keras, "32", "ddp")
    with pytest.raises(ConfigError, match="strategy must be None or one of ddp"):
        check(flax, "32", "horovod")
    with pytest.raises(ConfigError, match="timeout must be a positive number"):
        check(flax, "32", "ddp", timeout=0)
    assert check(flax, None, "ddp", 5).timeout == 5.0
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    with pytest.raises(ConfigError, match="implemented for the jax backend only"):
        check(keras, "32", "ddp")
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert check(keras, "32", "ddp").strategy == "ddp"


def test_nproc_is_checked_before_launching(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    with pytest.raises(ConfigError, match=r"more processes than this machine's \d+ cores"):
        check_nproc((os.cpu_count() or 1) + 1, registry().framework("torch"))
    with pytest.raises(ConfigError, match="keras framework trains in one process only.*72388"):
        check_nproc(2, registry().framework("keras"))
    from transferkit.cli import main

    out = tmp_path / "m"
    args = ["fit", "--backbone", "keras:cnn", "--data", "builtin:digits", "--out", str(out)]
    assert main([*args, "--nproc", "2"]) == 2  # a user error, and nothing launched
    assert not out.exists()


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_ddp_outside_a_launcher_is_refused():
    m = tk.build("torch:mlp", head=tk.Classifier(5), weights=None)
    with pytest.raises(ConfigError, match="processes started by torchrun.*--nproc N"):
        tk.fit(m, _train(), epochs=1, strategy="ddp", **FIT)


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_a_batch_too_small_to_split_over_the_processes_is_refused():
    m = tk.build("torch:mlp", head=tk.Classifier(5), weights=None)
    join = m.engine.set_scaling

    def three_processes(scaling):  # as if three processes had joined
        join(scaling)
        m.engine.world = 3

    m.engine.set_scaling = three_processes
    before = m.get_weights()
    train = _train()
    few = tk.Dataset(train.x[:4], train.y[:4], train.classes)
    with pytest.raises(ConfigError, match=r"a batch of 2 examples cannot be split over 3 proc"):
        tk.fit(m, few, epochs=1, **dict(FIT, batch_size=2))
    after = m.get_weights()
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.skipif(not HAS_FLAX, reason="needs flax")
def test_flax_ddp_without_jax_distributed_is_refused():
    m = tk.build("flax:mlp", head=tk.Classifier(5), weights=None)
    with pytest.raises(ConfigError, match=r"jax.distributed.initialize\(\) before building"):
        tk.fit(m, _train(), epochs=1, strategy="ddp", **FIT)


@pytest.mark.skipif(not HAS_FLAX, reason="needs flax")
def test_compile_is_a_torch_option():
    with pytest.raises(
        ConfigError, match=r"unknown option\(s\) compile.*compile is an option of torch"
    ):
        tk.build("flax:cnn", head=tk.Classifier(3), compile=True)


# --- mixed precision ----------------------------------------------------------------
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_float32_weights(framework, precision):
    train = _train()
    if precision not in registry().framework(framework).precisions:
        m = tk.build(f"{framework}:mlp", head=tk.Classifier(5), weights=None)
        with pytest.raises(ConfigError, match="offers 32, bf16-mixed"):
            tk.fit(m, train, epochs=1, precision=precision, **FIT)
        return
    runs = {}
    for p in ("32", precision):
        m = tk.build(f"{framework}:mlp", head=tk.Classifier(5), weights=None, seed=1)
        h = tk.fit(m, train, epochs=3, precision=p, **FIT)
        runs[p] = (m.get_weights(), [e["loss"] for e in h.epochs], m.predict(train.x[:8]))
    (w32, l32, p32), (wmx, lmx, pmx) = runs["32"], runs[precision]
    assert all(v.dtype == np.float32 for v in wmx.values())
    diff = max(float(np.abs(w32[k] - wmx[k]).max()) for k in w32)
    # the reduced compute dtype took effect (bfloat16 has 8 bits of mantissa, float16
    # 11), and the fit is the same fit
    assert 1e-6 < diff < 2e-2, diff
    assert np.allclose(l32, lmx, rtol=2e-2), (l32, lmx)
    assert np.allclose(p32, pmx, atol=5e-2)


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_float16_loss_scale_is_saved_and_restored(tmp_path):
    train = _train()
    opts = dict(FIT, precision="16-mixed")

    def mlp():
        return tk.build("torch:mlp", head=tk.Classifier(5), weights=None, seed=1)

    whole, first = mlp(), mlp()
    tk.fit(whole, train, epochs=3, **opts)
    tk.fit(first, train, epochs=2, checkpoint_dir=tmp_path / "ck", **opts)
    state = tk.TrainState.load(tmp_path / "ck")
    assert float(state.optimizer["amp.scale"]) == first.engine._scaler.get_scale()
    again = mlp()  # a resumed float16 run is the uninterrupted one
    tk.fit(again, train, epochs=3, resume_from=tmp_path / "ck", **opts)
    a, b = whole.get_weights(), again.get_weights()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # a scale the scaler would not reach by itself in a few steps comes back as saved
    state.optimizer["amp.scale"] = np.float64(1024.0)
    state.save(tmp_path / "ck")
    resumed = mlp()
    tk.fit(resumed, train, epochs=3, resume_from=tmp_path / "ck", **opts)
    assert resumed.engine._scaler.get_scale() == 1024.0


# --- compiled PyTorch steps -----------------------------------------------------------
@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_compiled_torch_steps_follow_the_eager_fit():
    train = _train()
    policy = tk.freeze.UnfreezeAt(epoch=1)  # two plans: the compiled step follows both
    fitted = {}
    for compiled in (False, True):
        m = tk.build("torch:mlp", head=tk.Classifier(5), weights=None, seed=1, compile=compiled)
        h = tk.fit(m, train, epochs=2, freeze=policy, cache_features=False, **FIT)
        fitted[compiled] = m, [e["loss"] for e in h.epochs]
    (eager, le), (comp, lc) = fitted[False], fitted[True]
    assert type(comp.engine._run(comp.engine.native)).__name__ == "OptimizedModule"
    assert np.allclose(le, lc, rtol=1e-5)
    we, wc = eager.get_weights(), comp.get_weights()
    assert max(float(np.abs(we[k] - wc[k]).max()) for k in we) < 1e-5
    assert np.allclose(eager.predict(train.x[:8]), comp.predict(train.x[:8]), atol=1e-5)


# --- multi-process data parallel ------------------------------------------------------
TORCHRUN_FIT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    import transferkit as tk
    from transferkit import datasets

    out = Path(sys.argv[1])
    opts = {json_opts}
    train = datasets.digits_transfer(shots=8, seed=0)[0]
    m = tk.build("torch:cnn", head=tk.Classifier(5), weights=None, seed=1)
    h = tk.fit(m, train, epochs=2, strategy="ddp", checkpoint_dir=out / "ck", **opts)
    np.savez(out / f"two-{{m.engine.rank}}.npz", loss=[e["loss"] for e in h.epochs],
             **m.get_weights())
    r = tk.build("torch:cnn", head=tk.Classifier(5), weights=None, seed=1)
    tk.fit(r, train, epochs=3, strategy="ddp", resume_from=out / "ck", **opts)
    np.savez(out / f"resumed-{{r.engine.rank}}.npz", **r.get_weights())
    r.save(out / "model")
    # a frozen backbone: each process computes the features of its shard, all gathered
    f = tk.build("torch:cnn", head=tk.Classifier(5), seed=1)
    computed, features = [], f.features
    f.features = lambda x, **kw: computed.append(len(x)) or features(x, **kw)
    tk.fit(f, train, epochs=2, freeze=tk.freeze.FeatureExtraction(), strategy="ddp", **opts)
    np.savez(out / f"frozen-{{f.engine.rank}}.npz", computed=computed, **f.get_weights())
    (out / f"world-{{r.engine.rank}}.txt").write_text(f"world {{r.engine.world}}")
    """
)


def _torchrun(script: str, *args: str, nproc: int = 2, timeout: int = 240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", str(nproc), script, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_torch_ddp_on_two_processes_equals_one_process(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(TORCHRUN_FIT.format(json_opts=repr(FIT)))
    run = _torchrun(str(script), str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    assert [(tmp_path / f"world-{r}.txt").read_text() for r in (0, 1)] == ["world 2"] * 2
    train = _train()
    one = tk.build("torch:cnn", head=tk.Classifier(5), weights=None, seed=1)
    h = tk.fit(one, train, epochs=2, **FIT)
    ref = one.get_weights()
    for rank in (0, 1):  # every process holds the same model, the one-process one
        two = np.load(tmp_path / f"two-{rank}.npz")
        assert np.allclose(two["loss"], [e["loss"] for e in h.epochs], rtol=1e-6)
        assert max(float(np.abs(two[k] - ref[k]).max()) for k in ref) < 1e-6
    three = tk.build("torch:cnn", head=tk.Classifier(5), weights=None, seed=1)
    tk.fit(three, train, epochs=3, **FIT)
    resumed = np.load(tmp_path / "resumed-0.npz")
    assert max(float(np.abs(resumed[k] - v).max()) for k, v in three.get_weights().items()) < 1e-6
    saved = tk.load(tmp_path / "model")  # written once, by rank 0
    assert np.array_equal(saved.get_weights()["head.out.weight"], resumed["head.out.weight"])
    frozen = tk.build("torch:cnn", head=tk.Classifier(5), seed=1)
    tk.fit(frozen, train, epochs=2, freeze=tk.freeze.FeatureExtraction(), **FIT)
    for rank in (0, 1):
        two = np.load(tmp_path / f"frozen-{rank}.npz")
        assert two["computed"].tolist() == [len(train) // 2]  # its shard's features only
        assert max(float(np.abs(two[k] - v).max()) for k, v in frozen.get_weights().items()) < 1e-6


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_a_failing_process_fails_the_run(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(
        textwrap.dedent(
            """
            import os
            import transferkit as tk
            from transferkit import datasets
            train = datasets.digits_transfer(shots=8, seed=0)[0]
            if os.environ["RANK"] == "1":
                raise RuntimeError("rank 1 could not read its data")
            m = tk.build("torch:mlp", head=tk.Classifier(5), weights=None)
            tk.fit(m, train, epochs=50, strategy="ddp", timeout=60, verbose=0)
            """
        )
    )
    run = _torchrun(str(script), timeout=180)
    assert run.returncode != 0
    assert "rank 1 could not read its data" in run.stderr


def _fit_on_1_and_2_processes(tmp_path, base: list[str], **env: str) -> dict:
    """``transferkit fit <base> --nproc 1`` and ``--nproc 2``, saved to ``n1`` and ``n2``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    runs = {}
    for nproc in (1, 2):
        out = tmp_path / f"n{nproc}"
        command = [sys.executable, "-m", "transferkit", *base, "--nproc", str(nproc)]
        r = subprocess.run(
            [*command, "--out", str(out)], capture_output=True, text=True, timeout=300, env=env
        )
        assert r.returncode == 0, r.stderr[-3000:]
        runs[nproc] = r
    assert "launching 2 processes" in runs[2].stderr
    return runs


@pytest.mark.skipif(not HAS_FLAX, reason="needs flax")
def test_cli_nproc_runs_flax_under_jax_distributed(tmp_path):
    base = ["fit", "--backbone", "flax:cnn", "--data", "builtin:digits", "--shots", "8"]
    base += ["--epochs", "2", "--weights", "none", "--batchnorm", "frozen", "--lr", "0.05"]
    base += ["--batch-size", "15", "--optimizer", "sgd", "--seed", "1"]
    runs = _fit_on_1_and_2_processes(tmp_path, base)
    out = runs[2].stdout  # after gloo's own lines, the report, printed once by rank 0
    report = json.loads(out[out.index("{\n") :])
    assert report["epochs"] == 2 and "val" in report
    one, two = tk.load(tmp_path / "n1"), tk.load(tmp_path / "n2")
    w1, w2 = one.get_weights(), two.get_weights()
    assert max(float(np.abs(w1[k] - w2[k]).max()) for k in w1) < 1e-6


@pytest.mark.skipif(not HAS_JAX, reason="needs jax")
def test_cli_nproc_runs_keras_on_jax_under_its_data_parallel_distribution(tmp_path):
    # L2-SP (its anchors beside replicated variables) and a global batch of 15 over two
    # devices: padded to 16, the padding row weighing 0
    base = ["fit", "--backbone", "keras:cnn", "--data", "builtin:digits", "--shots", "8"]
    base += ["--epochs", "2", "--batchnorm", "frozen", "--lr", "0.05", "--batch-size", "15"]
    base += ["--optimizer", "sgd", "--seed", "1", "--regularizer", "l2sp", "--alpha", "0.1"]
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    runs = _fit_on_1_and_2_processes(tmp_path, base, KERAS_BACKEND="jax")
    assert runs[2].stderr.count("epoch 2/2") == 1  # progress from rank 0 only
    check = (
        "import sys, numpy as np, transferkit as tk\n"
        "a, b = (tk.load(p).get_weights() for p in sys.argv[1:])\n"
        "print(max(float(np.abs(a[k] - b[k]).max()) for k in a))"
    )
    r = subprocess.run(
        [sys.executable, "-c", check, str(tmp_path / "n1"), str(tmp_path / "n2")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout.split()[-1]) < 1e-6


HF_DDP = textwrap.dedent(
    """
    import sys
    import numpy as np
    import transferkit as tk

    texts = [f"text number {i} about {'sports' if i % 2 else 'politics'}" for i in range(20)]
    data = tk.Dataset(texts, np.arange(20) % 2, ["a", "b"])
    m = tk.build(f"hf:{sys.argv[1]}", head=tk.Classifier(2), seed=0)
    ddp = len(sys.argv) > 3
    tk.fit(m, data, epochs=2, batch_size=8, optimizer="sgd", lr=0.05, seed=0, verbose=0,
           freeze=tk.freeze.LoRA(r=4), schedule="constant", strategy="ddp" if ddp else None)
    if m.engine.rank == 0:
        np.savez(sys.argv[2], **m.get_weights())
    """
)


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="needs transformers, peft")
def test_hf_lora_under_ddp_equals_one_process(tmp_path):
    from conftest import make_tiny_bert

    # no dropout: each process draws masks for its own part of the batch
    make_tiny_bert(tmp_path / "bert", 0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    script = tmp_path / "hf.py"
    script.write_text(HF_DDP)
    one = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "bert"), str(tmp_path / "one.npz")],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(str(script), str(tmp_path / "bert"), str(tmp_path / "two.npz"), "ddp")
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert any(".lora_" in k for k in a.files)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a.files) < 1e-6


FLAX_RESUME = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    import transferkit as tk
    from transferkit import datasets

    out, opts = Path(sys.argv[1]), {json_opts}
    train = datasets.digits_transfer(shots=8, seed=0)[0]
    m = tk.build("flax:cnn", head=tk.Classifier(5), weights=None, seed=1)
    tk.fit(m, train, epochs=2, strategy="ddp", checkpoint_dir=out / "ck", **opts)
    r = tk.build("flax:cnn", head=tk.Classifier(5), weights=None, seed=1)
    tk.fit(r, train, epochs=3, strategy="ddp", resume_from=out / "ck", **opts)
    if r.engine.rank == 0:
        np.savez(out / "resumed.npz", **r.get_weights())
    print("world", r.engine.world, "rank", r.engine.rank, r.predict(train.x[:2]).shape)
    """
)


@pytest.mark.skipif(not HAS_FLAX, reason="needs flax")
def test_flax_resume_under_jax_distributed(tmp_path):
    from transferkit.launch import COORDINATOR, NUM_PROCESSES, PROCESS_ID, free_port

    script = tmp_path / "resume.py"
    script.write_text(FLAX_RESUME.format(json_opts=repr(FIT)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", NUM_PROCESSES: "2"}
    env[COORDINATOR] = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path)],
            env={**env, PROCESS_ID: str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
    assert "world 2 rank 0 (2, 5)" in outs[0][0] and "world 2 rank 1 (2, 5)" in outs[1][0]
    one = tk.build("flax:cnn", head=tk.Classifier(5), weights=None, seed=1)
    tk.fit(one, _train(), epochs=3, **FIT)
    resumed = np.load(tmp_path / "resumed.npz")
    assert max(float(np.abs(resumed[k] - v).max()) for k, v in one.get_weights().items()) < 1e-6


def test_the_coordinator_launcher_stops_the_others_when_one_fails(tmp_path, monkeypatch):
    from transferkit import launch

    fake = tmp_path / "python"  # stands in for `python -m transferkit ...`
    fake.write_text(
        "#!/bin/sh\n"
        f'if [ "${launch.PROCESS_ID}" = 1 ]; then sleep 2; exit 3; fi\n'
        f'echo "$@ at ${launch.COORDINATOR}" > {tmp_path}/args; exec sleep 120\n'
    )
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    start = time.monotonic()
    assert launch.main(["2", "fit", "--config", "x.toml"]) == 3  # the failing process's code
    assert time.monotonic() - start < 30  # process 0 was stopped, not waited for
    assert (tmp_path / "args").read_text().startswith("-m transferkit fit --config x.toml at 127")
