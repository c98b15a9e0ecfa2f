"""Imported by this adapter's engine and baselines before torch.

TensorFlow 2.20 and later load their bundled LLVM into the process's global symbols
(``RTLD_GLOBAL``), and a ``triton`` imported after them crashes the process with a
segmentation fault (tensorflow#124205). PyTorch imports triton, where it is installed
(its CUDA builds install it), when an optimizer first steps, when a model is compiled or
exported, and when Transformers loads a model. Where TensorFlow came first, triton is
hidden from this process instead (PyTorch then runs as without it: eager and CPU-compiled
steps are unchanged; compiling for a GPU needs it), with a warning saying how to keep it.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings


def hide_triton_after_tensorflow() -> None:
    if "tensorflow" not in sys.modules or "triton" in sys.modules:
        return
    if importlib.util.find_spec("triton") is None:
        return
    sys.modules["triton"] = None  # `import triton` raises ImportError: PyTorch goes without
    warnings.warn(
        "TensorFlow was imported before triton, which would now crash this process "
        "(tensorflow#124205); triton is hidden from PyTorch in it. To use triton with "
        "TensorFlow in one process, import triton first",
        RuntimeWarning,
        stacklevel=2,
    )


hide_triton_after_tensorflow()
