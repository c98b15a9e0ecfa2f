"""Keras 3 realisation of a backbone + head, trained with Keras's own compiled steps.

The model is a functional ``keras.Model`` (backbone, then head). A freeze plan is applied
the Keras way: ``layer.trainable`` per layer group, then ``compile``; Keras's trainer for
the active backend (tensorflow, jax or torch) supplies the step, compiled with
``jit_compile`` where the backend allows (XLA under tensorflow and jax). Compiling
happens in ``set_plan`` only, so the step is rebuilt when the trainable set changes and
at no other time. The learning rate is a variable set before each step.

Canonical names come from layer names (``-`` stands for ``.``), weights in PyTorch's
layout: convolutions HWIO <-> OIHW, depthwise ``(k, k, C, 1)`` <-> ``(C, 1, k, k)``,
dense kernels transposed.
"""

from __future__ import annotations

from . import import_order  # noqa: F401  (before keras: see import_order.py)

# isort: split
import contextlib
import functools
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from transferkit import BackboneSpec, Engine, Head, OptimizerSpec, layout
from transferkit.errors import ConfigError
from transferkit.heads import DenseLayer
from transferkit.regularizers import Penalty
from transferkit.scaling import Scaling

from . import scaling as kscaling

# Keras variable name -> canonical (PyTorch) leaf name
_LEAF = {
    "kernel": "weight",
    "gamma": "weight",
    "beta": "bias",
    "bias": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
# Layers that behave differently in training: held in inference mode when frozen.
_MODAL = (layers.BatchNormalization, layers.Dropout)


def canonical_prefix(layer: layers.Layer) -> str:
    return layer.name.replace("-", ".")


def leaf_layers(model: layers.Layer) -> list[layers.Layer]:
    """The model's layers, nested models flattened, input to output."""
    out = []
    for layer in getattr(model, "layers", []):
        if hasattr(layer, "layers") and isinstance(layer, keras.Model):
            out.extend(leaf_layers(layer))
        elif not isinstance(layer, layers.InputLayer):
            out.append(layer)
    return out


class Weight:
    """One Keras variable under its canonical name; ``group`` is None for the head (a
    backbone may have a layer group called "head")."""

    __slots__ = ("name", "var", "leaf", "depthwise", "group")

    def __init__(self, name: str, var: Any, leaf: str, depthwise: bool, group: str | None) -> None:
        self.name, self.var, self.leaf, self.depthwise, self.group = (
            name,
            var,
            leaf,
            depthwise,
            group,
        )

    def canonical_shape(self) -> tuple[int, ...]:
        shape = tuple(self.var.shape)
        return layout.canonical_shape(shape, self.depthwise) if self.leaf == "kernel" else shape

    def get(self) -> np.ndarray:
        value = np.asarray(ops.convert_to_numpy(self.var.value))
        if self.leaf == "kernel":
            value = layout.kernel_to_canonical(value, self.depthwise)
        return np.array(value, np.float32)

    def set(self, value: np.ndarray) -> None:
        value = np.asarray(value)
        if self.leaf == "kernel":
            value = layout.kernel_from_canonical(value, tuple(self.var.shape))
        self.var.assign(np.asarray(value, dtype=self.var.dtype).reshape(self.var.shape))


def _inference_call(bound_call):
    def call(*args, training=None, **kwargs):
        return bound_call(*args, training=False, **kwargs)

    return call


def pin_inference(layer: layers.Layer, pinned: bool) -> None:
    """Hold a BatchNorm/Dropout layer in inference mode whatever ``training`` says (the
    Keras transfer-learning guide's ``base_model(x, training=False)``, per layer)."""
    if pinned and "call" not in layer.__dict__:
        layer.__dict__["call"] = _inference_call(type(layer).call.__get__(layer))
    elif not pinned:
        layer.__dict__.pop("call", None)


class TorchRuleOptimizer(keras.optimizers.Optimizer):
    """Adam / AdamW / SGD with PyTorch's semantics (the ``OptimizerSpec`` contract), a
    per-variable learning-rate multiple (the freeze plan's layer-wise rates) and a
    per-variable step count, so that a variable that joins later starts its own bias
    correction, as in PyTorch."""

    def __init__(self, spec: OptimizerSpec, multiples: list[float], **kwargs: Any) -> None:
        super().__init__(learning_rate=0.0, name=f"transferkit_{spec.name}", **kwargs)
        self.spec = spec
        self.multiples = list(multiples)
        self.slot_names = ("step", "m", "v") if spec.name in ("adam", "adamw") else ("momentum",)

    def build(self, variables: list[Any]) -> None:
        if self.built:
            return
        super().build(variables)
        self.slots: dict[str, list[Any]] = {}
        for slot in self.slot_names:
            if slot == "step":
                self.slots[slot] = [
                    self.add_variable((), dtype="float32", name=f"step_{i}")
                    for i in range(len(variables))
                ]
            else:
                self.slots[slot] = [self.add_variable_from_reference(v, slot) for v in variables]

    def _backend_update_step(self, grads: list, variables: list, learning_rate: Any) -> None:
        if keras.backend.backend() == "torch":  # eager: one batched update, not one per
            self._torch_update(grads, variables, learning_rate)  # variable
        else:  # traced into the compiled step, where XLA fuses the per-variable updates
            super()._backend_update_step(grads, variables, learning_rate)

    def _torch_update(self, grads: list, variables: list, learning_rate: Any) -> None:
        """The rules of ``update_step`` with ``torch._foreach_*`` ops, as Keras's own
        PyTorch-backend optimizers do."""
        import torch

        o = self.spec
        idx = [self._get_variable_index(v) for v in variables]
        ps = [v.value for v in variables]
        lr = float(ops.convert_to_numpy(learning_rate))
        lrs = [lr * self.multiples[i] for i in idx]
        with torch.no_grad():
            g = [gr.to(p.dtype) for gr, p in zip(grads, ps, strict=True)]
            if o.weight_decay and o.name != "adamw":  # L2 added to the gradient
                g = torch._foreach_add(g, ps, alpha=o.weight_decay)
            if o.name == "sgd":
                bufs = [self.slots["momentum"][i].value for i in idx]
                torch._foreach_mul_(bufs, o.momentum)
                torch._foreach_add_(bufs, g)
                torch._foreach_add_(ps, torch._foreach_mul(bufs, [-x for x in lrs]))
                return
            steps, m, v = ([self.slots[s][i].value for i in idx] for s in ("step", "m", "v"))
            torch._foreach_add_(steps, 1.0)
            if o.name == "adamw" and o.weight_decay:  # decoupled, as torch.optim.AdamW
                torch._foreach_mul_(ps, [1.0 - x * o.weight_decay for x in lrs])
            torch._foreach_mul_(m, o.beta1)
            torch._foreach_add_(m, g, alpha=1.0 - o.beta1)
            torch._foreach_mul_(v, o.beta2)
            torch._foreach_addcmul_(v, g, g, value=1.0 - o.beta2)
            t = [float(s) for s in steps]
            denom = torch._foreach_div(v, [1.0 - o.beta2**n for n in t])
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, o.eps)
            step_sizes = [x / (1.0 - o.beta1**n) for x, n in zip(lrs, t, strict=True)]
            num = torch._foreach_mul(m, step_sizes)
            torch._foreach_div_(num, denom)
            torch._foreach_sub_(ps, num)

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        i = self._get_variable_index(variable)
        o = self.spec
        lr = ops.cast(learning_rate, variable.dtype) * self.multiples[i]
        g = ops.cast(gradient, variable.dtype)
        if o.weight_decay and o.name != "adamw":  # L2 added to the gradient
            g = g + o.weight_decay * variable
        if o.name == "sgd":
            buf = self.slots["momentum"][i]
            self.assign(buf, o.momentum * buf + g)
            self.assign_sub(variable, lr * buf)
            return
        step, m, v = (self.slots[s][i] for s in ("step", "m", "v"))
        self.assign_add(step, 1.0)
        if o.name == "adamw" and o.weight_decay:  # decoupled, as torch.optim.AdamW
            self.assign(variable, variable * (1.0 - lr * o.weight_decay))
        self.assign(m, o.beta1 * m + (1.0 - o.beta1) * g)
        self.assign(v, o.beta2 * v + (1.0 - o.beta2) * ops.square(g))
        bc1 = 1.0 - ops.power(o.beta1, step)
        bc2 = 1.0 - ops.power(o.beta2, step)
        self.assign_sub(variable, lr * (m / bc1) / (ops.sqrt(v / bc2) + o.eps))


def build_head(layers_spec: list[DenseLayer], feature_size: int, seed: int) -> keras.Model:
    """Dense head with canonical names ``hidden-<i>`` and ``out``; dropout on each dense
    layer's input."""
    inputs = keras.Input((feature_size,))
    x = inputs
    for i, d in enumerate(layers_spec):
        if d.dropout:
            x = layers.Dropout(d.dropout, seed=seed + i, name=f"dropout-{i}")(x)
        x = layers.Dense(d.out_features, activation=d.activation, name=d.name.replace(".", "-"))(x)
    return keras.Model(inputs, x, name="head")


def jit_compile() -> bool:
    """XLA under tensorflow and jax; PyTorch runs eagerly (torch.compile is not used)."""
    return keras.backend.backend() in ("tensorflow", "jax")


def resolve_device(device: str) -> str | None:
    """transferkit's device name -> Keras's (``"gpu:0"``), checked against the devices the
    backend has; None for ``"auto"`` (the backend's default placement)."""
    if device == "auto":
        return None
    kind, _, index = device.partition(":")
    kind = {"cuda": "gpu"}.get(kind, kind)
    name = f"{kind}:{int(index or 0)}"
    try:
        available = keras.distribution.list_devices(kind)
    except (RuntimeError, AttributeError, ValueError):  # no such platform / torch backend
        available = ["cpu:0"] if kind == "cpu" else []
        if kind == "gpu" and keras.backend.backend() == "torch":
            import torch

            available = [f"gpu:{i}" for i in range(torch.cuda.device_count())]
    if name not in [d.lower() for d in available]:
        raise ConfigError(
            f"device {device!r} is not available to Keras on {keras.backend.backend()} "
            f"(devices: {', '.join(available) or 'none of that kind'}); use device='auto' "
            "or 'cpu'"
        )
    return name


def _on_device(method):
    """Run an engine method under ``keras.device`` when a device was chosen."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        if self.device is None:
            return method(self, *args, **kwargs)
        with keras.device(self.device):
            return method(self, *args, **kwargs)

    return run


def _placeholders(model: keras.Model) -> Any:
    """New ``keras.Input`` tensors shaped like ``model``'s inputs."""
    return keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype), model.input
    )


def _inline(model: keras.Model, inputs: Any, call: Any) -> Any:
    """Run ``model``'s graph on new ``keras.Input`` tensors ``inputs``, layer by layer,
    each through ``call(layer, *args, **kwargs)`` (the layers are reused, not cloned)."""
    if isinstance(model, keras.Sequential):
        x = inputs
        for layer in model.layers:
            x = call(layer, x)
        return x
    clone = keras.models.clone_model(
        model, input_tensors=inputs, clone_function=lambda layer: layer, call_function=call
    )
    return clone.outputs if len(clone.outputs) > 1 else clone.outputs[0]


def _pooled_symbolic(t: Any, backbone: str, group: str) -> Any:
    """Feature maps ``(N, H, W, C)`` averaged over height and width; vectors as is."""
    rank = len(getattr(t, "shape", ()))
    if rank not in (2, 4):
        raise ConfigError(
            f"group_features: layer group {group!r} of {backbone!r} is entered by "
            f"{type(t).__name__} {getattr(t, 'shape', '')}; only feature maps (N, H, W, C) "
            "and vectors (N, C) can be pooled per group"
        )
    return ops.mean(t, axis=(1, 2)) if rank == 4 else t


class _Pull(keras.regularizers.Regularizer):
    """``c/2 · ‖w − a‖²``: Keras adds it to the loss for every trainable variable that
    carries it, inside its compiled step, so a frozen variable costs nothing."""

    def __init__(self, coefficient: float, anchor: Any) -> None:
        self.coefficient = coefficient
        # a backend tensor: under the torch backend, ``tensor - ndarray`` is numpy's
        self.anchor = None if anchor is None else ops.convert_to_tensor(anchor)

    def __call__(self, x: Any) -> Any:
        d = x if self.anchor is None else ops.subtract(x, self.anchor)
        return (self.coefficient / 2) * ops.sum(ops.square(d))


class KerasEngine(Engine):
    #: under a distribution, inference is one program over every process's devices
    spreads_inference = True

    def __init__(
        self,
        spec: BackboneSpec,
        backbone: keras.Model,
        head: Head,
        seed: int,
        device: str | None = None,
    ) -> None:
        self.spec = spec
        self.device = device
        self.backbone = backbone
        self.head = build_head(head.dense_layers(spec.feature_size), spec.feature_size, seed)
        inputs = keras.Input(tuple(backbone.input_shape[1:]), name="inputs")
        self.native = keras.Model(inputs, self.head(backbone(inputs)), name="transferkit")
        self.loss = head.loss
        self._weights = self._index()
        self._by_var = {id(w.var): w for w in self._weights}
        self._layer_groups = self._assign_layer_groups()
        self.multiples: dict[str, float] = {g: 1.0 for g in spec.group_names}
        self.head_only = False
        self._optimizer_spec: OptimizerSpec | None = None
        self._optimizer: TorchRuleOptimizer | None = None
        self._penalised = False
        self._trained: keras.Model | None = None
        self._group_probe: keras.Model | None = None  # built on first group_features
        self._precision = "32"
        # keras.distribution's DataParallel when built under one (jax backend), with the
        # jitted inference functions of its models
        self._dist = kscaling.distribution()
        self._jitted: dict[int, Any] = {}

    # --- naming -----------------------------------------------------------------------
    def _index(self) -> list[Weight]:
        out: list[Weight] = []
        for prefix, model in (("", self.backbone), ("head.", self.head)):
            for layer in leaf_layers(model):
                depthwise = isinstance(layer, layers.DepthwiseConv2D)
                for var in layer.weights:
                    leaf = var.name
                    name = f"{prefix}{canonical_prefix(layer)}.{_LEAF.get(leaf, leaf)}"
                    group = None if prefix else self.spec.group_of(name)
                    out.append(Weight(name, var, leaf, depthwise, group))
        names = [w.name for w in out]
        if len(set(names)) != len(names):
            raise ConfigError(f"backbone {self.spec.name!r}: layer names are not unique")
        return out

    def _assign_layer_groups(self) -> list[tuple[layers.Layer, str]]:
        """Every backbone layer with its group; a layer without weights belongs to the
        group of the last weighted layer before it (the first group at the start)."""
        out, group = [], self.spec.group_names[0]
        for layer in leaf_layers(self.backbone):
            if layer.weights:
                group = self._by_var[id(layer.weights[0])].group
            out.append((layer, group))
        return out

    def options(self) -> dict[str, Any]:
        return {}

    # --- weights ----------------------------------------------------------------------
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {self._full_name(w): w.canonical_shape() for w in self._weights}

    def _full_name(self, w: Weight) -> str:
        return w.name if w.group is None else "backbone." + w.name

    def get_weights(self) -> dict[str, np.ndarray]:
        return {self._full_name(w): w.get() for w in self._weights}

    @_on_device
    def set_weights(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.check_names(arrays)
        for w in self._weights:
            name = self._full_name(w)
            if name in arrays:
                w.set(arrays[name])

    # --- inference --------------------------------------------------------------------
    def _infer(self, model: keras.Model, x: np.ndarray) -> np.ndarray:
        return self._infer_all(model, x)[0]

    def _infer_all(self, model: keras.Model, x: np.ndarray) -> list[np.ndarray]:
        x = np.asarray(x, np.float32)
        if self._dist is not None:  # each process computes the rows of its devices
            n, rows = len(x), kscaling.spread_rows(x, self._dist)
            out = self._jitted_inference(model)(
                [v.value for v in model.trainable_variables],
                [v.value for v in model.non_trainable_variables],
                rows,
            )
            return [kscaling.fetch(o)[:n] for o in keras.tree.flatten(out)]
        if keras.backend.backend() == "tensorflow":
            # Eager TensorFlow runs the same kernels as a traced function, without the
            # seconds of tracing each new model and batch shape would cost.
            out = model(x, training=False)
        else:  # jax: a jitted function per shape; torch: eager under no_grad
            out = model.predict_on_batch(x)
        return [np.asarray(ops.convert_to_numpy(o), np.float32) for o in keras.tree.flatten(out)]

    def _jitted_inference(self, model: keras.Model) -> Any:
        """``model``'s inference as one jitted function of its variables and rows (Keras's
        ``predict_on_batch`` would take each process's own rows, not one batch)."""
        if id(model) not in self._jitted:
            import jax

            def infer(trainable, non_trainable, x):
                return model.stateless_call(trainable, non_trainable, x, training=False)[0]

            self._jitted[id(model)] = jax.jit(infer)
        return self._jitted[id(model)]

    @_on_device
    def features(self, x: np.ndarray) -> np.ndarray:
        return self._infer(self.backbone, x)

    @_on_device
    def group_features(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if self._group_probe is None:
            self._group_probe = self._build_group_probe()
        outs = self._infer_all(self._group_probe, x)
        return dict(zip(self.spec.group_names, outs, strict=True))

    def _group_entries(self) -> dict[int, str]:
        """The first layer of each group after the first (by id) -> its group. A layer
        without weights named under a group (``stage2-conv-pad``, the padding of its first
        convolution) opens that group; otherwise it belongs where ``_layer_groups`` says."""
        first: dict[str, layers.Layer] = {}
        for layer, group in self._layer_groups:
            if not layer.weights:
                name = canonical_prefix(layer)
                group = next((g.name for g in self.spec.groups if g.owns(name)), group)
            first.setdefault(group, layer)
        empty = [g for g in self.spec.group_names if g not in first]
        if empty:
            raise ConfigError(
                f"group_features: layer group {empty[0]!r} of {self.spec.name!r} holds no "
                "layer in this model (at this input size), so no tensor enters it"
            )
        if tuple(first) != self.spec.group_names:
            raise ConfigError(
                f"group_features: the layers of {self.spec.name!r} do not run group by group "
                f"({', '.join(self.spec.group_names)}): their groups first appear in the order "
                f"{', '.join(first)}, so no tensor enters each group alone"
            )
        return {id(first[g]): g for g in self.spec.group_names[1:]}

    def _build_group_probe(self) -> keras.Model:
        """The backbone's graph, nested models inlined, with the inputs of each group's
        first layer (pooled) as extra outputs before the features; the layers are shared."""
        entries, seen = self._group_entries(), {}

        def call(layer: layers.Layer, *args: Any, **kwargs: Any) -> Any:
            if isinstance(layer, keras.Model) and any(
                id(inner) in entries for inner in leaf_layers(layer)
            ):
                # a nested model holding entries: its graph inlined into a model of its
                # own that also returns them, called here like the original
                before = set(seen)
                inputs = _placeholders(layer)
                out = _inline(layer, inputs, call)
                new = [g for g in seen if g not in before]
                flat = keras.tree.flatten(out)
                sub = keras.Model(inputs, [seen[g] for g in new] + flat)
                results = keras.tree.flatten(sub(*args, **kwargs))
                seen.update(zip(new, results[: len(new)], strict=True))
                return keras.tree.pack_sequence_as(out, results[len(new) :])
            group = entries.get(id(layer))
            if group is not None and group not in seen:
                seen[group] = _pooled_symbolic(args[0], self.spec.name, group)
            return layer(*args, **kwargs)

        inputs = _placeholders(self.backbone)
        out = _inline(self.backbone, inputs, call)
        missing = [g for g in entries.values() if g not in seen]
        if missing:
            raise ConfigError(
                f"group_features: the first layer of group {missing[0]!r} of "
                f"{self.spec.name!r} is inside a layer that is not a functional or "
                "sequential model, so the tensor entering the group cannot be taken"
            )
        groups = self.spec.group_names[1:]
        return keras.Model(inputs, [seen[g] for g in groups] + [out], name="group_features")

    @_on_device
    def head_predict(self, f: np.ndarray) -> np.ndarray:
        return self._infer(self.head, f)

    @_on_device
    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._infer(self.native, x)

    # --- training ---------------------------------------------------------------------
    def _seed_generators(self) -> list[Any]:
        gens = []
        for layer in leaf_layers(self.backbone) + leaf_layers(self.head):
            gens.extend(getattr(layer, "_seed_generators", []))
        return gens

    def set_scaling(self, scaling: Scaling) -> None:
        if scaling.strategy == "ddp":
            if self.device is not None:
                raise ConfigError(
                    "strategy='ddp' replicates the model over every process's devices; it "
                    "cannot be combined with device=... (leave device='auto')"
                )
            self.rank, self.world = kscaling.join(self._dist)
        elif self._dist is not None and self._dist.device_mesh.backend_mesh.size > len(
            self._dist.device_mesh.backend_mesh.local_devices
        ):
            raise ConfigError(
                "this Keras model was built under a keras.distribution spanning several "
                "processes: fit it with strategy='ddp'"
            )
        self._precision = scaling.precision

    @_on_device
    def start_training(self, optimizer: OptimizerSpec, seed: int) -> None:
        self._optimizer_spec = optimizer
        self._optimizer = None
        for i, gen in enumerate(self._seed_generators()):
            gen.state.assign(np.array([seed * 7919 + i + 1, 0], dtype=gen.state.dtype))

    @_on_device
    def set_plan(self, multiples: Mapping[str, float], head_only: bool) -> None:
        self.multiples = dict(multiples)
        self.head_only = head_only
        carried = self._optimizer_slots() if self._optimizer is not None else None
        for layer, group in self._layer_groups:
            layer.trainable = self.multiples.get(group, 0.0) > 0 and not head_only
        self._pin()
        self._trained = self.head if head_only else self.native
        variables = self._trained.trainable_variables
        names = [self._by_var[id(v)].name for v in variables]
        self._optimizer = TorchRuleOptimizer(
            self._optimizer_spec, [self._multiple(self._by_var[id(v)].group) for v in variables]
        )
        self._optimizer.build(variables)
        self._slot_names = names
        if carried:  # keep the state of variables that stay trainable
            self._assign_slots(carried)
        loss = (
            keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            if self.loss == "cross_entropy"
            else keras.losses.MeanSquaredError()
        )
        kscaling.set_policy(self.native, self._precision)  # compile() sees the policy
        self._jitted = {}
        self._trained.compile(optimizer=self._optimizer, loss=loss, jit_compile="auto")

    def _pin(self) -> None:
        """BatchNorm and dropout of a frozen group run in inference mode, and so does
        every BatchNorm under ``batchnorm="frozen"`` (the Keras transfer-learning guide's
        ``base_model(x, training=False)``, per layer)."""
        for layer, _ in self._layer_groups:
            if isinstance(layer, _MODAL):
                frozen = not layer.trainable or (
                    self.batchnorm == "frozen" and isinstance(layer, layers.BatchNormalization)
                )
                pin_inference(layer, frozen)

    @_on_device
    def batch_statistics(self, x: np.ndarray, groups: tuple[str, ...]) -> dict[str, np.ndarray]:
        chosen = [
            layer
            for layer, g in self._layer_groups
            if g in groups and isinstance(layer, layers.BatchNormalization)
        ]
        if not chosen:
            return {}
        # momentum 0 (Keras's: the weight of the old statistic): one pass leaves exactly
        # the batch statistics in the moving ones, which are put back afterwards
        modal = [(lay, lay.trainable) for lay, _ in self._layer_groups if isinstance(lay, _MODAL)]
        saved = {
            id(b): (b.momentum, self._numpy(b.moving_mean), self._numpy(b.moving_variance))
            for b in chosen
        }
        try:
            for layer, _ in modal:
                pin_inference(layer, id(layer) not in saved)
            for b in chosen:
                b.trainable, b.momentum = True, 0.0
            x = np.asarray(x, np.float32)
            self.backbone(
                x if self._dist is None else kscaling.global_rows(x, self._dist), training=True
            )
            out = {}
            for b in chosen:
                name = "backbone." + canonical_prefix(b)
                out[f"{name}.running_mean"] = self._numpy(b.moving_mean)
                out[f"{name}.running_var"] = self._numpy(b.moving_variance)
        finally:
            for b in chosen:
                momentum, mean, var = saved[id(b)]
                b.momentum = momentum
                b.moving_mean.assign(mean)
                b.moving_variance.assign(var)
            for layer, trainable in modal:
                layer.trainable = trainable
            self._pin()
        return out

    @staticmethod
    def _numpy(var: Any) -> np.ndarray:
        return np.array(ops.convert_to_numpy(var.value), np.float32)

    def _assign_slots(self, carried: Mapping[str, np.ndarray]) -> None:
        for slot, vars_ in self._optimizer.slots.items():
            for name, var in zip(self._slot_names, vars_, strict=True):
                key = f"{name}.{slot}"
                if key in carried and tuple(np.shape(carried[key])) == tuple(var.shape):
                    var.assign(np.asarray(carried[key], dtype=var.dtype))

    def _multiple(self, group: str | None) -> float:
        return 1.0 if group is None else self.multiples.get(group, 0.0)

    @_on_device
    def set_penalty(self, penalty: Penalty | None) -> None:
        self._penalised = penalty is not None
        for w in self._weights:
            name = self._full_name(w)
            c = 0.0 if penalty is None else float(penalty.coefficients.get(name, 0.0))
            if not c:
                w.var.regularizer = None
                continue
            a = penalty.anchors.get(name)
            if a is not None:
                a = np.asarray(a, np.float32)
                if w.leaf == "kernel":
                    a = layout.kernel_from_canonical(a, tuple(w.var.shape))
                a = np.ascontiguousarray(a).reshape(w.var.shape)
            if a is not None and self._dist is not None:  # beside replicated variables
                a = kscaling.global_rows(a, self._dist)
            w.var.regularizer = _Pull(c, a)

    @_on_device
    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> Any:
        self._optimizer.learning_rate = lr
        batch = self._rows(np.asarray(x, np.float32), np.asarray(y))
        if not self._penalised:
            return self._trained.train_on_batch(*batch)
        # Keras's loss includes the penalty at the weights the step starts from
        reg = sum(
            float(v.regularizer(v.value))
            for v in self._trained.trainable_weights
            if getattr(v, "regularizer", None) is not None
        )
        total = self._trained.train_on_batch(*batch)
        return float(total) - reg, reg

    def _rows(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, Any]:
        """(x, y, sample_weight) of this process's part of the global batch. Under a
        distribution the batch is padded to a multiple of its devices (repeating the
        first row, weight 0) and the real rows weigh ``padded / n``, so that Keras's mean
        over the padded batch is the mean over the real one; each process passes its
        contiguous part, which ``train_on_batch`` joins into the global batch."""
        if self._dist is None:
            return x, y, None
        n = len(x)
        m = kscaling.pad_to(n, self._dist)
        w = None
        if m > n:
            x = np.concatenate([x, np.repeat(x[:1], m - n, axis=0)])
            y = np.concatenate([y, np.repeat(y[:1], m - n, axis=0)])
            w = np.zeros(m, np.float32)
            w[:n] = m / n
        part = slice(self.rank * m // self.world, (self.rank + 1) * m // self.world)
        return x[part], y[part], None if w is None else w[part]

    def barrier(self) -> None:
        if self.world > 1:
            kscaling.barrier()

    def end_training(self) -> None:
        if self._precision != "32":  # inference computes in float32
            kscaling.set_policy(self.native, "32")
            self._jitted = {}

    def _optimizer_slots(self) -> dict[str, np.ndarray]:
        out = {}
        for slot, vars_ in self._optimizer.slots.items():
            for name, var in zip(self._slot_names, vars_, strict=True):
                out[f"{name}.{slot}"] = np.asarray(ops.convert_to_numpy(var.value))
        return out

    def training_state(self) -> dict[str, np.ndarray]:
        state = {
            f"rng.keras.{i}": np.asarray(ops.convert_to_numpy(g.state.value)).astype(np.int64)
            for i, g in enumerate(self._seed_generators())
        }
        if self._optimizer is not None:
            state.update({f"opt.{k}": v for k, v in self._optimizer_slots().items()})
        return state

    def load_training_state(self, state: Mapping[str, np.ndarray]) -> None:
        for i, gen in enumerate(self._seed_generators()):
            key = f"rng.keras.{i}"
            if key in state:
                gen.state.assign(np.asarray(state[key]).astype(gen.state.dtype))
        if self._optimizer is not None:
            self._assign_slots({k[4:]: v for k, v in state.items() if k.startswith("opt.")})


def build_engine(
    spec: BackboneSpec,
    head: Head,
    input_shape: tuple[int, ...],
    seed: int,
    device: str = "auto",
    **options: Any,
) -> KerasEngine:
    # ``options`` were checked by core against KerasFramework.build_options(spec)
    kscaling.initialize_from_env()  # a launched process joins before JAX computes
    placement = resolve_device(device)
    keras.utils.set_random_seed(seed)
    with keras.device(placement) if placement else contextlib.nullcontext():
        backbone = spec.create(keras.Model, input_shape=tuple(input_shape), **options)
        return KerasEngine(spec, backbone, head, seed, placement)
