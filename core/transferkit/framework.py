"""The seam between core and a framework adapter.

Core owns everything that is the same in every framework: the epoch loop,
schedules, metrics, data handling, weights files, checkpoints. An adapter
supplies a :class:`Framework` (registered through the
``transferkit_register_frameworks`` hook) that builds an :class:`Engine`: one
backbone+head realised natively, with its compiled per-batch steps.

Every array that crosses this seam is numpy. Images arrive already resized and
normalised, channels-last float32. Parameter names are canonical:
``backbone.<name>`` and ``head.<layer>.weight|bias`` (see ``heads.py``), with
weights in PyTorch's layout (dense ``(out, in)``, convolution ``(O, I, H, W)``);
an adapter converts to its own layout.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .catalog import BackboneSpec
from .declarations import Baseline, Variant
from .errors import ConfigError, FrameworkNotInstalledError, WeightsError
from .formats import ExportFormat, Serving
from .heads import Head
from .optimizers import OptimizerSpec
from .options import DEVICE, BuildOption, check_device
from .regularizers import Penalty
from .scaling import Scaling


class Engine(ABC):
    """One model (backbone + head) realised in one framework: the adapter author's
    contract, not user API (users hold a :class:`~transferkit.Model`).

    ``multiples`` map layer-group names to learning-rate multiples; 0 means frozen:
    no gradient, no update, no optimizer state, BatchNorm in inference mode.
    Core calls, in order: ``set_weights`` (head, then backbone), inference methods at
    any time, then for a fit ``start_training``, ``set_plan``, ``train_step``...,
    ``end_training``. Canonical names: see ``hookspecs`` ("Canonical parameter names").
    """

    #: the native backbone object (``nn.Module``, ``keras.Model``, ...)
    backbone: Any
    #: the native backbone+head object
    native: Any
    #: the plan in force: layer group -> learning-rate multiple (``"head"`` always 1)
    multiples: dict[str, float]
    #: whether ``train_step`` receives cached features rather than inputs
    head_only: bool = False
    #: the head's loss, ``"cross_entropy"`` or ``"mse"`` (``Head.loss``)
    loss: str
    #: how the backbone's BatchNorm layers run in a group that trains: ``"train"`` (batch
    #: statistics, running statistics updated) or ``"frozen"`` (inference mode: running
    #: statistics used, not updated; scale and shift still learn). Core sets it after
    #: ``start_training``, before the first ``set_plan``; see ``transferkit.batchnorm``.
    batchnorm: str = "train"
    #: this process's rank among the processes that train together, and their number
    #: (set by :meth:`set_scaling`; 0 and 1 in one process)
    rank: int = 0
    world: int = 1
    #: whether inference under a strategy already spreads its rows over the processes
    #: (JAX's one program over all of them: every process passes the same rows); if
    #: not, core hands each process its shard and joins them with :meth:`all_gather`
    spreads_inference: bool = False

    # --- weights -----------------------------------------------------------------
    @abstractmethod
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical name -> shape of every weight (BatchNorm statistics included)."""

    @abstractmethod
    def get_weights(self) -> dict[str, np.ndarray]:
        """Canonical name -> float32 array, in canonical (PyTorch) layout."""

    @abstractmethod
    def set_weights(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Load arrays that core has already checked against ``param_shapes``. A subset
        is allowed (the backbone's weights, say); a name the model does not have is an
        error in every adapter: call :meth:`check_names` first."""

    def check_names(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Raise :class:`~transferkit.errors.WeightsError` for names this model lacks, so
        no adapter silently ignores a weight it was given."""
        unexpected = sorted(set(arrays) - set(self.param_shapes()))
        if unexpected:
            more = f" (+{len(unexpected) - 4} more)" if len(unexpected) > 4 else ""
            raise WeightsError(
                f"set_weights: this model has no weights named {', '.join(unexpected[:4])}"
                f"{more}; names are canonical ('backbone.<name>', 'head.<layer>.weight')"
            )

    # --- inference (one batch each) ----------------------------------------------
    @abstractmethod
    def features(self, x: np.ndarray) -> np.ndarray:
        """Backbone features ``(N, feature_size)`` in inference mode."""

    @abstractmethod
    def head_predict(self, f: np.ndarray) -> np.ndarray:
        """Head outputs for features, inference mode."""

    @abstractmethod
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Head outputs (logits or values) for inputs, inference mode."""

    # --- training ----------------------------------------------------------------
    @abstractmethod
    def start_training(self, optimizer: OptimizerSpec, seed: int) -> None:
        """Create the optimizer and seed the framework's random state."""

    @abstractmethod
    def set_plan(self, multiples: Mapping[str, float], head_only: bool) -> None:
        """Apply a freeze plan. ``head_only``: train_step receives features, not inputs.

        Called at the start and whenever the plan changes, never otherwise, so an
        adapter may rebuild compiled steps here.
        """

    @abstractmethod
    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> Any:
        """One optimisation step at base learning rate ``lr`` (each group's rate is
        ``lr`` times its multiple from :meth:`set_plan`); returns the batch loss as
        anything ``float()`` accepts (it may stay lazy until then).

        ``x``: prepared inputs (images ``(N, H, W, C)`` float32, normalised; text a list
        of ``N`` strings), or features ``(N, feature_size)`` when ``head_only``.
        ``y``: int64 class indices ``(N,)`` for a classifier, whose loss is the mean
        softmax cross-entropy of the logits; float32 targets ``(N, outputs)`` for a
        regressor, whose loss is the mean squared error averaged over examples and
        outputs (``head.loss`` names which: ``"cross_entropy"`` or ``"mse"``). The
        optimizer follows :class:`OptimizerSpec`'s semantics exactly (PyTorch's)."""

    @abstractmethod
    def end_training(self) -> None:
        """Leave training mode."""

    @abstractmethod
    def training_state(self) -> dict[str, np.ndarray]:
        """Optimizer and random state as arrays, for an exact resume."""

    @abstractmethod
    def load_training_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what ``training_state`` returned. Called after ``start_training`` and
        after the ``set_plan`` of the plan the state was saved under, so the optimizer
        state can be put straight into the optimizer built for that plan."""

    def set_scaling(self, scaling: Scaling) -> None:
        """Train under ``scaling`` (:mod:`transferkit.scaling`; checked by core against
        the framework's declarations), before ``start_training``: compute in its
        ``precision`` with float32 weights and optimizer state; under its ``strategy``
        join the launched processes (set :attr:`rank`, :attr:`world`). Then every
        ``train_step`` gets the global batch, computes on its ``shard``, reduces the
        gradients to one process's update on the whole batch and returns the whole
        batch's loss; collectives wait at most ``scaling.timeout`` seconds."""
        if not scaling.default:
            raise ConfigError(f"{type(self).__name__} trains in one process, in float32")

    def all_gather(self, rows: np.ndarray) -> np.ndarray:
        """Every process's ``rows`` (their lengths may differ), concatenated in rank
        order; called by every process when ``world > 1``."""
        if self.world > 1:
            raise ConfigError(f"{type(self).__name__} trains on several processes but does "
                              "not gather rows from them (Engine.all_gather)")  # fmt: skip
        return rows

    def barrier(self) -> None:
        """Wait for every process (called by core when ``world > 1``, after a run that
        ended normally: rank 0's writes are done when any process goes on)."""
        return None  # one process: nothing to wait for

    def set_penalty(self, penalty: Penalty | None) -> None:
        """Add ``Σ c/2 · ‖w − a‖²`` (:class:`~transferkit.regularizers.Penalty`: canonical
        name -> coefficient ``c`` and anchor ``a`` in canonical layout, zero where absent)
        over the weights that train under the plan in force to the loss the framework
        differentiates, inside the compiled step. Called after ``start_training``, before
        the first ``set_plan``. While a penalty is set, ``train_step`` returns the pair
        ``(task loss, penalty)``. ``None``: no penalty (the default)."""
        if penalty is not None:
            raise ConfigError(f"{type(self).__name__} does not support regularizers")

    def batch_statistics(self, x: np.ndarray, groups: tuple[str, ...]) -> dict[str, np.ndarray]:
        """One forward pass of the backbone over the prepared inputs ``x`` with the
        BatchNorm layers of layer groups ``groups`` in training mode (the others in
        inference mode, dropout off): for each of those layers, the batch mean and the
        *unbiased* batch variance it normalised by, under the canonical names of its
        running statistics (``backbone.<layer>.running_mean`` / ``.running_var``). Changes
        no weight and no running statistic. Core averages them over the training data
        (``batchnorm="recalibrate"``). A model without BatchNorm returns ``{}``."""
        if any(k.endswith(".running_mean") for k in self.param_shapes()):
            raise ConfigError(
                f"{type(self).__name__} cannot re-estimate BatchNorm statistics "
                "(batchnorm='recalibrate'); use batchnorm='train' or 'frozen'"
            )
        return {}

    # --- optional ------------------------------------------------------------------
    def group_features(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """For each backbone layer group, input to output: the activation that leaves the
        group (the tensor that enters the next group; for the last group, the backbone's
        features as :meth:`features` computes them), pooled to one vector per example —
        images: the mean over height and width; text: over the tokens as the features are
        (by default the mean under the attention mask); already flat: as is — as float32
        ``(N, channels)``, in inference mode, changing no weight and no running statistic.
        ``x`` is prepared input as for ``features``."""
        raise ConfigError(
            f"{type(self).__name__} cannot give features per layer group (group_features); "
            "its adapter does not implement them: use features() for the backbone's output"
        )

    def add_peft(self, peft: Mapping[str, Any]) -> None:
        """Insert trainable parameter-efficient modules (``{"kind": "lora", ...}``, see
        ``tk.freeze.LoRA``) into the frozen backbone. Their parameters form the layer
        group ``"peft"``."""
        raise ConfigError(
            f"{type(self).__name__} does not support {peft.get('kind')!r} modules (LoRA)"
        )

    def save_assets(self, path: Path) -> None:
        """Write what rebuilding this backbone needs besides weights (a tokenizer and
        model configuration, say) into ``path``; it comes back as ``build(assets=path)``."""
        return None  # most backbones are rebuilt from their name alone

    def options(self) -> dict[str, Any]:
        """Build options to record in a saved model, passed back to ``build`` on load."""
        return {}


class Framework(ABC):
    """A framework adapter. Instantiating one must not import the framework."""

    #: short name used in backbone names (``"torch"``)
    name: str = ""
    #: the pip extra that installs it (``pip install 'transferkit[torch]'``)
    extra: str = ""
    #: import names that must be importable
    requires: tuple[str, ...] = ()
    description: str = ""

    def missing(self) -> list[str]:
        """Required modules that are not installed (checked without importing them)."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def ensure_installed(self) -> None:
        missing = self.missing()
        if missing:
            raise FrameworkNotInstalledError(
                f"framework {self.name!r} needs {', '.join(missing)}, which is not installed. "
                f"Install it with: pip install 'transferkit[{self.extra}]'"
            )

    def version(self) -> str | None:
        """Installed version of the framework's main package, without importing it."""
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as _v

        try:
            return _v(self.requires[0]) if self.requires else None
        except PackageNotFoundError:
            return None

    #: whether this framework's realisations of the reference architectures define the
    #: canonical names and layouts (one framework does: the PyTorch adapter); others are
    #: checked against it, and the shipped weights are made with it
    reference: bool = False
    #: build options every backbone of this framework takes, besides ``device``
    options: tuple[BuildOption, ...] = ()

    def build_options(self, spec: BackboneSpec) -> tuple[BuildOption, ...]:
        """Every option ``build`` accepts for ``spec``: ``device``, the framework's
        :attr:`options`, and any an adapter adds per backbone (override to add them)."""
        return (DEVICE, *self.options)

    def check_options(self, spec: BackboneSpec, options: dict[str, Any]) -> dict[str, Any]:
        """Core's check of user build options against :meth:`build_options`; returns
        them with the device name checked. Runs before the framework is imported."""
        known = {o.name: o for o in self.build_options(spec)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            from .plugins import registry

            taken = {f.name: {o.name for o in f.options} for f in registry().frameworks.values()}
            owners = {
                u: [
                    f if f != self.name else f"other {f} backbones"
                    for f, n in taken.items()
                    if u in n
                ]
                for u in unknown
            }
            raise ConfigError(
                f"unknown option(s) {', '.join(unknown)} for {spec.name!r}; the {self.name} "
                f"framework takes {', '.join(o.describe() for o in known.values())}"
                + "".join(f" ({u} is an option of {', '.join(n)})" for u, n in owners.items() if n)
            )
        out = {}
        for key, value in options.items():
            out[key] = (
                check_device(value) if key == "device" else known[key].check(spec.name, value)
            )
        return out

    def resolve(self, name: str, assets: Path | None = None) -> BackboneSpec | None:
        """A backbone that is not registered but that this framework can make from its
        name alone (a Hugging Face model id, say); ``assets`` is the directory a saved
        model wrote with :meth:`Engine.save_assets`. ``None``: no such backbone."""
        return None

    def specialise(self, spec: BackboneSpec, input_shape: tuple[int, ...]) -> BackboneSpec:
        """The spec of this backbone at ``input_shape``: a copy with another
        ``feature_size`` where features depend on the input size (flattened feature maps,
        say), or an :class:`~transferkit.errors.InputShapeError` for a size the backbone
        cannot take. Called before ``build``; must not import the framework."""
        return spec

    @abstractmethod
    def build(
        self,
        spec: BackboneSpec,
        head: Head,
        input_shape: tuple[int, ...],
        seed: int = 0,
        **options: Any,
    ) -> Engine:
        """Build backbone (via ``spec.create``) and head natively, randomly initialised
        from ``seed``, with the backbone's build ``options``. Import the framework here,
        not at module level."""

    # --- what the benchmark (``transferkit bench``) asks of a framework ---------------
    #: native loops the benchmark compares this framework's engine step with
    baselines: tuple[Baseline, ...] = ()
    #: distributions whose versions a benchmark report names (default: ``requires``)
    libraries: tuple[str, ...] = ()
    #: environment defaults of a fresh process that runs it (the user's settings win)
    process_env: tuple[tuple[str, str], ...] = ()

    # --- scaling (``tk.fit(precision=..., strategy=...)``, ``transferkit fit --nproc``) --
    #: the precisions its engines train in (:data:`transferkit.scaling.PRECISIONS`)
    precisions: tuple[str, ...] = ("32",)
    #: its multi-process strategies (``"ddp"``), started by :meth:`launcher`
    strategies: tuple[str, ...] = ()
    #: (strategy, why) for strategies it lacks in this configuration, said in the error
    strategy_notes: tuple[tuple[str, str], ...] = ()
    #: the parameter-efficient modules its engines insert (``"lora"``: ``Engine.add_peft``)
    peft_kinds: tuple[str, ...] = ()

    def launcher(self, nproc: int) -> list[str]:
        """The command that starts ``nproc`` processes of ``python -m transferkit`` (then
        the CLI's arguments) under this framework's own launcher, each joining with
        ``strategy="ddp"`` (:mod:`transferkit.launch`). Must not import the framework."""
        raise ConfigError(f"the {self.name} framework trains in one process only")

    # --- deployment (``model.export``, ``transferkit export``) ------------------------
    #: the formats this framework writes from its realisation of a model
    exports: tuple[ExportFormat, ...] = ()
    #: (format, why) for formats its own backbones cannot reach, said in the error
    export_notes: tuple[tuple[str, str], ...] = ()

    def export(self, model: Any, path: Path, fmt: str, serving: Serving) -> None:
        """Write ``model`` (a built :class:`~transferkit.Model` of this framework, in
        inference mode) as format ``fmt`` to ``path`` (a file with the format's suffix,
        or a directory), computing ``serving``, with a dynamic batch size. Core has
        checked the format's modules are installed, and checks the result with
        :meth:`run_exported` after this returns. May import the framework."""
        raise ConfigError(f"framework {self.name!r} exports no format")

    def run_exported(
        self, path: Path, fmt: str, x: Any, serving: Serving | None = None
    ) -> np.ndarray:
        """Run an exported model at ``path`` on ``x`` (inputs as :class:`Serving` says;
        texts as a list of strings, tokenized as a user would with the tokenizer saved
        beside the export) with the format's own runtime (ONNX Runtime, the LiteRT
        interpreter, ...), not through transferkit's model; returns numpy outputs."""
        raise ConfigError(f"framework {self.name!r} exports no format")

    def variants(self) -> tuple[Variant, ...]:
        """Its per-process variants (Keras's backends): ``framework[variant]``."""
        return ()

    def device_name(self, model: Any) -> str:
        """Where a built :class:`~transferkit.Model` runs, in the framework's own words
        (``"cpu"``, ``"cuda:0"``); every benchmark row carries it. Called in the process
        that built the model, so it may import the framework."""
        return "unknown"

    def count_macs(self, model: Any) -> int | None:
        """Multiply-accumulates of one forward pass of one example through a built model
        (backbone and head) at its ``input_shape``: every convolution and dense layer,
        and the attention matmuls of a transformer; normalisation, activations and
        pooling are not counted. The benchmark derives FLOPs from it. ``None``: this
        framework cannot count them. May import the framework."""
        return None
