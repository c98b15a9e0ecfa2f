"""Imported by every module of this adapter before Keras (and so TensorFlow).

TensorFlow 2.20 and later load their bundled LLVM into the process's global symbols
(``RTLD_GLOBAL``), and a ``triton`` imported after them (by ``torch.compile``, or by
Transformers through ``torch._dynamo``) crashes the process with a segmentation fault
(tensorflow#124205). PyTorch's CUDA builds install triton; imported first, it loads
cleanly and TensorFlow after it too. Where triton is not installed, this does nothing.
"""

from __future__ import annotations

import importlib.util
import sys


def triton_before_tensorflow() -> None:
    if "tensorflow" in sys.modules or "triton" in sys.modules:
        return
    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


triton_before_tensorflow()
