"""The cross-framework benchmark: one transfer task, every framework, measured alike.

A suite is data (TOML shipped in ``transferkit/bench/suites/``, or a file of yours):
tasks x backbones x frameworks x batch sizes. Every case runs in a fresh subprocess
(``python -m transferkit.bench.case``), so import cost, memory and compiler caches never
leak from one framework into another; this package imports no framework. Per case the
subprocess measures import and build time, the first (compiling) training step, the
steady-state ms/step (median and quartiles), peak resident memory, and the accuracy
reached by ``tk.fit`` on the task with several numbers of labels per class. Each native
baseline that a framework declares (:class:`transferkit.framework.Baseline`: PyTorch
eager and ``torch.compile``, ``jax.jit`` + optax, Keras ``model.fit``) runs alternately
with transferkit's engine step on the same model, weights and batches, so the report
gives transferkit's overhead as a ratio measured under the same noise.

Work is counted by each framework from the layer shapes of the built model
(``Framework.count_macs``: multiply-accumulates of every convolution and dense layer;
BatchNorm, activations, pooling and the optimizer are not counted), x2 for FLOPs, x3 for
a training step (backward ~ twice the forward). The machine's float32 matmul rate is
measured in the same run with numpy.

Modules: :mod:`.suite` (suites and cases), :mod:`.frameworks` (what the registered
frameworks declare), :mod:`.probe` (the machine), :mod:`.runner` (processes, the run),
:mod:`.case`, :mod:`.workload` and :mod:`.alternate` (inside a case's process),
:mod:`.stats`, :mod:`.report` (``bench.md``/``bench.json``) and :mod:`.charts`.

    transferkit bench --quick
    python -c "from transferkit.bench import run; run('quick', out='bench-out')"
"""

from __future__ import annotations

from .charts import charts
from .frameworks import check
from .probe import machine, matmul_gflops
from .report import FLOPS_METHOD, headline, markdown, summarise, write
from .runner import finish, rewrite, run, run_case, run_part
from .suite import Case, Suite, Task, asdict_shallow, expand, load_suite, select, suites_dir

__all__ = [
    "FLOPS_METHOD",
    "Case",
    "Suite",
    "Task",
    "asdict_shallow",
    "charts",
    "check",
    "expand",
    "finish",
    "headline",
    "load_suite",
    "machine",
    "markdown",
    "matmul_gflops",
    "rewrite",
    "run",
    "run_case",
    "run_part",
    "select",
    "suites_dir",
    "summarise",
    "write",
]
