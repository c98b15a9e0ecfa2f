"""TensorFlow (2.20 and later) and a triton imported after it crash a process
(tensorflow#124205); PyTorch's CUDA builds install triton and import it from their
optimizers, compiler and exporter. The adapters keep a process that uses Keras and
PyTorch alive, whichever comes first. Each case runs in its own process."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("triton", "tensorflow", "torch")),
    reason="needs triton, tensorflow and torch",
)

FIT = (
    "import transferkit as tk\n"
    "train = tk.datasets.digits_transfer(shots=2, seed=0)[0]\n"
    "m = tk.build('torch:cnn', head=tk.Classifier(5), weights=None)\n"
    "tk.fit(m, train, epochs=1, verbose=0)\n"  # the optimizer's step imports torch._dynamo
    "import torch._dynamo\n"
    "print('TRITON', sys.modules.get('triton') is not None)\n"
)


def _run(code: str) -> subprocess.CompletedProcess:
    env = {"KERAS_BACKEND": "tensorflow", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-c", "import sys\n" + code],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def test_tensorflow_first_hides_triton_from_pytorch_with_a_warning():
    run = _run("import tensorflow\n" + FIT)
    assert run.returncode == 0, run.stderr[-2000:]  # -11 without the adapter's guard
    assert "TRITON False" in run.stdout
    assert "tensorflow#124205); triton is hidden from PyTorch" in run.stderr


def test_the_keras_adapter_imports_triton_before_tensorflow():
    code = (
        "import transferkit as tk\n"
        "k = tk.build('keras:cnn', head=tk.Classifier(5), weights=None)\n"
        "assert 'tensorflow' in sys.modules\n" + FIT
    )
    run = _run(code)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "TRITON True" in run.stdout and "hidden" not in run.stderr
