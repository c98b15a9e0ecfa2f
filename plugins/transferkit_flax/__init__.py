"""transferkit's JAX/Flax adapter, registered through the ``transferkit`` entry point.

Importing this module imports no jax: the framework and the backbones are registered
as metadata; jax and flax are imported when a model is built.
"""

from __future__ import annotations

from transferkit import hookimpl
from transferkit.formats import ExportFormat
from transferkit.framework import Baseline, BuildOption, Framework
from transferkit.launch import group_launcher
from transferkit.reference import REFERENCE, reference_spec


class FlaxFramework(Framework):
    """JAX with Flax (``flax.nnx``), ``jax.jit``-compiled steps and optax optimizers.

    Backbone factories receive ``input_shape=(H, W, C)`` and ``rngs`` (an ``nnx.Rngs``)
    and return an ``nnx.Module`` mapping normalised NHWC input to ``(N, feature_size)``.
    Build options: ``data_parallel=True`` shards every batch over all local devices
    through JAX's sharding (parameters replicated); ``device="cpu"|"gpu[:i]"|"tpu[:i]"``
    commits parameters (and so every step) to one of ``jax.devices()``.
    """

    name = "flax"
    extra = "jax"
    requires = ("jax", "flax", "optax")
    description = "JAX/Flax nnx, jax.jit"
    options = (
        BuildOption("data_parallel", (bool,), False, "shard batches over all local devices"),
    )
    baselines = (Baseline("jit", "transferkit_flax.baselines:Jit"),)
    precisions = ("32", "bf16-mixed")
    strategies = ("ddp",)

    def launcher(self, nproc):
        """A coordinator on this machine for ``jax.distributed.initialize``."""
        return group_launcher(nproc)

    libraries = ("jax", "jaxlib", "flax", "optax")
    process_env = (("XLA_PYTHON_CLIENT_PREALLOCATE", "false"),)  # share a GPU politely
    exports = (
        ExportFormat(
            "jax",
            ".jax",
            tolerance=1e-4,
            description="a serialized jax.export function with its parameters "
            "(jax.export.deserialize(...).call(x)), any batch size",
        ),
    )

    def export(self, model, path, fmt, serving):
        from .export import export

        export(model, path, fmt, serving)

    def run_exported(self, path, fmt, x, serving=None):
        from .export import run_exported

        return run_exported(path, fmt, x)

    def device_name(self, model):
        from .baselines import device_name

        return device_name(model)

    def count_macs(self, model):
        from .baselines import count_macs

        return count_macs(model)

    def build(self, spec, head, input_shape, seed=0, **options):
        from .engine import build_engine

        return build_engine(spec, head, input_shape, seed, **options)


@hookimpl
def transferkit_register_frameworks(register):
    register(FlaxFramework())


@hookimpl
def transferkit_register_backbones(register):
    for arch in REFERENCE:
        register(reference_spec("flax", arch, f"transferkit_flax.architectures:{arch}"))
