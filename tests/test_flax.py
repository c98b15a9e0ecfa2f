"""What the JAX/Flax adapter adds: parity with PyTorch on the same weights, moving fitted
models between frameworks, compile-once steps and data parallelism through sharding."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("flax")
torch = pytest.importorskip("torch")

import transferkit as tk  # noqa: E402
from transferkit import errors  # noqa: E402

ARCH_INPUT = {
    "mlp": (8, 8, 1),
    "cnn": (32, 32, 3),
    "resnet18": (64, 64, 3),
    "efficientnet_lite0": (224, 224, 3),
}


def _pair(arch, tmp_path):
    """The same weights in torch and flax: pretrained where the arch has them, otherwise a
    random torch initialisation moved over through a saved model."""
    shape = ARCH_INPUT[arch]
    weights = None if arch == "resnet18" else "pretrained"
    t = tk.build(
        f"torch:{arch}",
        head=tk.Classifier(7, hidden=(16,)),
        weights=weights,
        input_shape=shape,
        seed=1,
    )
    t.save(tmp_path / arch)
    return t, tk.load(tmp_path / arch, framework="flax")


@pytest.mark.parametrize("arch", list(ARCH_INPUT))
def test_same_weights_same_features_and_logits(arch, tmp_path):
    t, f = _pair(arch, tmp_path)
    assert f.spec.name == f"flax:{arch}" and f.backbone.framework == "flax"
    x = np.random.default_rng(0).random((4, *ARCH_INPUT[arch]), dtype=np.float32)
    feat_diff = np.abs(t.features(x) - f.features(x)).max()
    logit_diff = np.abs(t.logits(x) - f.logits(x)).max()
    print(f"parity {arch}: features {feat_diff:.2e}, logits {logit_diff:.2e}")
    assert feat_diff <= 1e-4 and logit_diff <= 1e-4


def test_fitted_models_move_between_frameworks(tmp_path):
    train, test = tk.datasets.digits_transfer(shots=5, seed=0)
    for src, dst in (("torch", "flax"), ("flax", "torch")):
        model = tk.build(f"{src}:cnn", head=tk.Classifier(5, hidden=(32,)))
        tk.fit(model, train, freeze=tk.freeze.TrainLast(2), epochs=3, verbose=0)
        model.save(tmp_path / src)
        moved = tk.load(tmp_path / src, framework=dst)
        assert moved.spec.framework == dst
        assert np.abs(moved.predict(test.x) - model.predict(test.x)).max() <= 1e-4


def test_no_realisation_in_the_target_framework(tmp_path):
    class OnlyTorch:
        @tk.hookimpl
        def transferkit_register_backbones(self, register):
            register(
                tk.BackboneSpec(
                    name="torch:only_torch",
                    input_kind="image",
                    input_shape=(8, 8, 1),
                    feature_size=64,
                    groups=(("fc1", ("fc1",)), ("fc2", ("fc2",))),
                    factory="transferkit_torch.architectures:mlp",
                )
            )

    from transferkit import plugins

    tk.register(OnlyTorch(), "only-torch")
    try:
        tk.build("torch:only_torch", head=tk.Classifier(2), weights=None).save(tmp_path / "m")
        with pytest.raises(errors.ConfigError, match="realises no reference architecture.*'torch'"):
            tk.load(tmp_path / "m", framework="flax")
    finally:
        plugins.reload()


def test_steps_compile_once_per_shape():
    x = np.random.default_rng(0).random((20, 16, 16, 3), dtype=np.float32)
    model = tk.build("flax:cnn", head=tk.Classifier(2), weights=None, input_shape=(16, 16, 3))
    tk.fit(model, tk.Dataset(x, np.arange(20) % 2), epochs=4, batch_size=8, verbose=0)
    # 8, 8 and a last batch of 4 in every epoch: two shapes, two compilations.
    assert model.engine._train["step"]._cache_size() == 2


def test_frozen_parameters_hold_no_optimizer_state():
    model = tk.build("flax:cnn", head=tk.Classifier(2), weights=None, input_shape=(16, 16, 3))
    x = np.random.default_rng(0).random((8, 16, 16, 3), dtype=np.float32)
    tk.fit(
        model, tk.Dataset(x, np.arange(8) % 2), freeze=tk.freeze.TrainLast(1), epochs=1, verbose=0
    )
    keys = list(model.engine.training_state())
    assert any("'stage4'" in k for k in keys) and not any("'stage1'" in k for k in keys)


def test_bad_options_are_named():
    with pytest.raises(errors.ConfigError, match="data_parallel"):
        tk.build("flax:cnn", head=tk.Classifier(2), weights=None, mixed_precision=True)


DATA_PARALLEL = textwrap.dedent("""
    import jax, numpy as np, transferkit as tk
    assert len(jax.devices()) == 2, jax.devices()
    x = np.random.default_rng(0).random((32, 16, 16, 3), dtype=np.float32)
    data = tk.Dataset(x, np.arange(32) % 4)
    out = []
    for dp in (False, True):
        m = tk.build("flax:cnn", head=tk.Classifier(4), weights=None, input_shape=(16, 16, 3),
                     data_parallel=dp)
        tk.fit(m, data, epochs=3, batch_size=8, verbose=0, seed=0)
        out.append((m.get_weights(), m.predict(x)))
    diff = max(np.abs(out[0][0][k] - out[1][0][k]).max() for k in out[0][0])
    pdiff = np.abs(out[0][1] - out[1][1]).max()
    sharding = m.engine._put(x[:8])[0].sharding
    print("DP", diff, pdiff, len(sharding.device_set))
""")


def test_data_parallel_over_two_cpu_devices_matches_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run(
        [sys.executable, "-c", DATA_PARALLEL], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("DP "))
    _, diff, pdiff, devices = line.split()
    assert int(devices) == 2
    assert float(diff) < 1e-4 and float(pdiff) < 1e-4


def test_group_features_match_torch_for_resnet18():
    # every group's pooled entry tensor (maxpool's output for the stem; each layer's blocks
    # sit in an nnx.List, whose first block receives it), not only the features
    x = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    t = tk.build("torch:resnet18", head=tk.Classifier(2), weights=None, input_shape=(32, 32, 3))
    f = tk.build("flax:resnet18", head=tk.Classifier(2), weights=None, input_shape=(32, 32, 3))
    f.set_weights(t.get_weights())
    expected = t.engine.group_features(t.prepare(x))
    got = f.engine.group_features(f.prepare(x))
    assert list(got) == list(expected) == list(t.spec.group_names)
    diffs = {g: float(np.abs(got[g] - v).max()) for g, v in expected.items()}
    print("group_features resnet18 flax vs torch:", {g: f"{d:.1e}" for g, d in diffs.items()})
    assert max(diffs.values()) <= 1e-4, diffs
