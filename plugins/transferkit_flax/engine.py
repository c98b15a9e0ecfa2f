"""Flax (nnx) realisation of a backbone + head, and its ``jax.jit``-compiled steps.

The model is split into (trainable params, frozen params, batch statistics); a train
step is a pure function of them, compiled once per freeze plan and input shape. Only
trainable parameters get gradients and optimizer state.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from transferkit import BackboneSpec, Engine, Head, OptimizerSpec, layout
from transferkit.errors import ConfigError
from transferkit.heads import DenseLayer
from transferkit.regularizers import Penalty
from transferkit.scaling import Scaling

from . import scaling as jscaling

# Flax leaf name -> canonical (PyTorch) leaf name
_LEAF = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}


def _to_canonical(value: np.ndarray, leaf: str) -> np.ndarray:
    return layout.kernel_to_canonical(value) if leaf == "kernel" else value


def _from_canonical(value: np.ndarray, leaf: str) -> np.ndarray:
    return layout.kernel_from_canonical(value) if leaf == "kernel" else value


class FlaxHead(nnx.Module):
    """Dense head with canonical names ``hidden.<i>`` and ``out``; dropout takes a key."""

    def __init__(self, layers: list[DenseLayer], rngs: nnx.Rngs) -> None:
        self.rates = tuple(d.dropout for d in layers)
        self.hidden = nnx.List(
            [nnx.Linear(d.in_features, d.out_features, rngs=rngs) for d in layers[:-1]]
        )
        self.out = nnx.Linear(layers[-1].in_features, layers[-1].out_features, rngs=rngs)

    def _drop(self, x: jax.Array, rate: float, key: jax.Array | None, i: int) -> jax.Array:
        if key is None or rate == 0.0:
            return x
        keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), 0.0)

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        for i, layer in enumerate(self.hidden):
            x = nnx.relu(layer(self._drop(x, self.rates[i], key, i)))
        return self.out(self._drop(x, self.rates[-1], key, len(self.rates)))


class FlaxModel(nnx.Module):
    def __init__(self, backbone: nnx.Module, head: FlaxHead) -> None:
        self.backbone = backbone
        self.head = head

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        return self.head(self.backbone(x), key)


def _loss(kind: str, out: jax.Array, y: jax.Array, w: jax.Array) -> jax.Array:
    out = out.astype(jnp.float32)  # a reduced compute dtype stops before the loss
    if kind == "cross_entropy":
        per = optax.softmax_cross_entropy_with_integer_labels(out, y)
    else:
        per = jnp.mean((out - y) ** 2, axis=-1)
    return jnp.sum(per * w) / jnp.sum(w)


def _transform(o: OptimizerSpec) -> optax.GradientTransformation:
    """The update direction; the (scheduled, per-group) learning rate is applied after."""
    if o.name == "adam":  # L2 added to the gradient, as torch.optim.Adam
        parts = [optax.add_decayed_weights(o.weight_decay)] if o.weight_decay else []
        return optax.chain(*parts, optax.scale_by_adam(o.beta1, o.beta2, o.eps))
    if o.name == "adamw":  # decoupled, as torch.optim.AdamW
        parts = [optax.add_decayed_weights(o.weight_decay)] if o.weight_decay else []
        return optax.chain(optax.scale_by_adam(o.beta1, o.beta2, o.eps), *parts)
    parts = [optax.add_decayed_weights(o.weight_decay)] if o.weight_decay else []
    return optax.chain(*parts, optax.trace(decay=o.momentum))


def _name(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _keystr_leaves(tree: Any) -> dict[str, Any]:
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


class FlaxEngine(Engine):
    #: under jax.distributed, inference is one program over every process's devices
    spreads_inference = True

    def __init__(
        self,
        spec: BackboneSpec,
        model: FlaxModel,
        head: Head,
        data_parallel: bool = False,
        device: str = "auto",
    ) -> None:
        self.spec = spec
        self.native = model
        self.backbone = model.backbone
        self.loss = head.loss
        self._norms = self._find_norms()
        self.multiples: dict[str, float] = {g: 1.0 for g in spec.group_names}
        self.head_only = False
        self.mesh = None
        self.device = resolve_device(device)
        if data_parallel:
            if self.device is not None:
                raise ConfigError(
                    f"data_parallel=True shards over every device; it cannot be combined with "
                    f"device={device!r} (leave device='auto')"
                )
            self.mesh = Mesh(np.array(jax.devices()), ("data",))
        self._eval_cache: tuple | None = None
        self._entries: tuple | None = None  # group_features' taps, found on first use
        self._train: dict[str, Any] | None = None
        self._tx = None
        self._key = jax.random.key(0)
        self._penalty: Penalty | None = None
        self._dtype: Any = None  # the steps' compute dtype (None: the parameters')

    def _find_norms(self) -> list[tuple[nnx.BatchNorm, str]]:
        norms = []
        for path, m in nnx.iter_graph(self.native.backbone):
            if isinstance(m, nnx.BatchNorm):
                norms.append((m, self.spec.group_of(_name(path) + ".weight")))
        return norms

    # --- sync between the split training state and the module -------------------------
    def _sync(self) -> None:
        """Write the training state back into the module (after steps)."""
        if self._train is not None and self._train["dirty"]:
            t = self._train
            nnx.update(self.native, t["tr"], t["fr"], t["st"])
            t["dirty"] = False
            self._eval_cache = None

    def _eval_state(self) -> tuple:
        self._sync()
        if self._eval_cache is None:
            for m, _ in self._norms:
                m.use_running_average = True
            graph, params, stats = nnx.split(self.native, nnx.Param, nnx.BatchStat)
            params, stats = self._place((params, stats))
            self._eval_cache = (graph, params, stats)
        return self._eval_cache

    # --- weights ----------------------------------------------------------------------
    def _flat(self) -> list[tuple[str, Any, str]]:
        """(canonical name, live variable, flax leaf name) for every weight."""
        out = []
        for state in nnx.state(self.native, nnx.Param, nnx.BatchStat):
            for path, var in nnx.to_flat_state(state):
                leaf = str(path[-1])
                out.append((_name(path[:-1]) + "." + _LEAF[leaf], var, leaf))
        return out

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        self._sync()
        return {
            name: layout.canonical_shape(var.get_value().shape)
            if leaf == "kernel"
            else tuple(var.get_value().shape)
            for name, var, leaf in self._flat()
        }

    def get_weights(self) -> dict[str, np.ndarray]:
        self._sync()
        return {
            name: np.array(_to_canonical(np.asarray(var.get_value()), leaf), np.float32)
            for name, var, leaf in self._flat()
        }

    def set_weights(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.check_names(arrays)
        self._sync()
        for name, var, leaf in self._flat():
            if name in arrays:
                var.set_value(jnp.asarray(_from_canonical(np.asarray(arrays[name]), leaf)))
        self._eval_cache = None
        if self._train is not None:  # training continues from these weights
            self._refresh_training_state()

    def _refresh_training_state(self) -> None:
        """Re-read parameters and statistics into the training state (after
        ``set_weights``); the compiled step and the optimizer state stay as they are."""
        t = self._train
        _, tr, fr, st = nnx.split(
            self.native, nnx.All(nnx.Param, self._trainable), nnx.Param, nnx.BatchStat
        )
        t["tr"], t["fr"], t["st"] = self._place((tr, fr, st))
        t["dirty"] = False

    # --- inference --------------------------------------------------------------------
    def _put(self, x: np.ndarray) -> tuple[Any, int]:
        n = len(x)
        if self.mesh is None:
            return x, n  # numpy goes straight into the jitted function
        ndev = self.mesh.size
        pad = (-n) % ndev
        if pad:
            x = np.concatenate([x, np.repeat(x[:1], pad, axis=0)])
        # each process places the rows of its own devices (all of them in one process)
        sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i]), n

    def _place(self, tree: Any) -> Any:
        """Replicated over the mesh, committed to the chosen device, or left where JAX's
        default puts it (numpy inputs then follow the committed parameters)."""
        if self.mesh is not None:
            return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))
        if self.device is not None:
            return jax.device_put(tree, self.device)
        return tree

    def features(self, x: np.ndarray) -> np.ndarray:
        graph, params, stats = self._eval_state()
        xb, n = self._put(np.asarray(x, np.float32))
        return jscaling.fetch(_features(graph, params, stats, xb))[:n]

    def group_features(self, x: np.ndarray) -> dict[str, np.ndarray]:
        graph, params, stats = self._eval_state()
        if self._entries is None:
            self._entries = self._group_entries()
        xb, n = self._put(np.asarray(x, np.float32))
        out = _group_features(graph, self._entries, self.spec.name, params, stats, xb)
        names = self.spec.group_names
        return {
            g: jscaling.fetch(v).astype(np.float32)[:n] for g, v in zip(names, out, strict=True)
        }

    def _group_entries(self) -> tuple[tuple[str, tuple[tuple, ...]], ...]:
        """Per layer group after the first: its name and the paths of its outermost
        callable modules; the first of them called receives the tensor entering it."""
        groups = self.spec.groups
        modules = {tuple(p): m for p, m in nnx.iter_modules(self.native.backbone) if p}

        def owner(path: tuple) -> str | None:
            return next((g.name for g in groups if g.owns(_name(path))), None)

        def outermost(path: tuple, group: str) -> bool:
            return callable(modules[path]) and not any(
                owner(path[:k]) == group and callable(modules.get(path[:k]))
                for k in range(1, len(path))
            )

        entries = []
        for g in groups[1:]:
            paths = tuple(p for p in modules if owner(p) == g.name and outermost(p, g.name))
            if not paths:
                raise ConfigError(
                    f"group_features: layer group {g.name!r} of {self.spec.name!r} has no "
                    "module of its own that the backbone calls, so the tensor entering it "
                    "cannot be taken"
                )
            entries.append((g.name, paths))
        return tuple(entries)

    def head_predict(self, f: np.ndarray) -> np.ndarray:
        graph, params, stats = self._eval_state()
        fb, n = self._put(np.asarray(f, np.float32))
        return jscaling.fetch(_head(graph, params, stats, fb))[:n]

    def predict(self, x: np.ndarray) -> np.ndarray:
        graph, params, stats = self._eval_state()
        xb, n = self._put(np.asarray(x, np.float32))
        return jscaling.fetch(_predict(graph, params, stats, xb))[:n]

    # --- training ---------------------------------------------------------------------
    def set_scaling(self, scaling: Scaling) -> None:
        self._dtype = jscaling.COMPUTE[scaling.precision]
        if scaling.strategy == "ddp":
            if self.device is not None:
                raise ConfigError(
                    "strategy='ddp' shards over every process's devices; it cannot be "
                    "combined with device=... (leave device='auto')"
                )
            self.rank, self.world = jscaling.join()
            self.mesh = Mesh(np.array(jax.devices()), ("data",))  # every process's
            self._eval_cache = None

    def start_training(self, optimizer: OptimizerSpec, seed: int) -> None:
        self._tx = _transform(optimizer)
        self._key = jax.random.key(seed)
        self._train = None

    def set_plan(self, multiples: Mapping[str, float], head_only: bool) -> None:
        self._sync()
        old = self._train
        self.multiples = {**dict(multiples), "head": 1.0}
        self.head_only = head_only
        self._split_for_training(_keystr_leaves(old["opt"]) if old is not None else None)

    def _group(self, path: tuple) -> str:
        if path[0] == "head":
            return "head"
        return self.spec.group_of(_name(path[1:-1]) + "." + _LEAF[str(path[-1])])

    def _trainable(self, path: tuple, _value: Any) -> bool:
        group = self._group(path)
        return self.multiples[group] > 0 and not (self.head_only and group != "head")

    def _split_for_training(self, opt_leaves: dict[str, Any] | None = None) -> None:
        if opt_leaves is None and self._train is not None:
            opt_leaves = _keystr_leaves(self._train["opt"])

        for m, group in self._norms:  # frozen BatchNorm uses its running statistics
            m.use_running_average = (
                self.head_only or self.multiples[group] == 0 or self.batchnorm == "frozen"
            )
        with jscaling.compute_dtype(self.native, self._dtype):  # the step's graph keeps it
            graph, tr, fr, st = nnx.split(
                self.native, nnx.All(nnx.Param, self._trainable), nnx.Param, nnx.BatchStat
            )
        mults = jax.tree_util.tree_map_with_path(
            lambda p, _: self.multiples[self._group(tuple(k.key for k in p if hasattr(k, "key")))],
            tr,
        )
        opt = self._tx.init(tr)
        if opt_leaves:  # keep the state of parameters that stay trainable
            opt = jax.tree_util.tree_map_with_path(
                lambda p, v: (
                    jnp.asarray(opt_leaves[k]).reshape(v.shape)
                    if (k := jax.tree_util.keystr(p)) in opt_leaves
                    and np.shape(opt_leaves[k]) == np.shape(v)
                    else v
                ),
                opt,
            )
        tr, fr, st, opt = self._place((tr, fr, st, opt))
        penalty = self._penalty_trees(tr)
        step = _make_step(graph, self._tx, self.loss, mults, self.head_only, penalty is not None)
        self._train = {"tr": tr, "fr": fr, "st": st, "opt": opt, "step": step, "dirty": False}
        self._train["penalty"] = penalty
        self._eval_cache = None

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> Any:
        t = self._train
        # numpy goes straight into the jitted step (jax's fast path); with a mesh, the
        # batch is padded to a multiple of the devices and the padding rows weigh 0
        xb, n = self._put(np.asarray(x, np.float32))
        yb, _ = self._put(np.asarray(y))
        w = np.zeros(len(xb), np.float32)
        w[:n] = 1.0
        wb, _ = self._put(w)
        penalty = t["penalty"] or (None, None)
        t["tr"], t["st"], t["opt"], self._key, loss, reg = t["step"](
            t["tr"], t["fr"], t["st"], t["opt"], xb, yb, wb, np.float32(lr), self._key, *penalty
        )
        t["dirty"] = True
        return loss if t["penalty"] is None else (loss, reg)

    def set_penalty(self, penalty: Penalty | None) -> None:
        self._penalty = penalty

    def _penalty_trees(self, tr: Any) -> tuple[Any, Any] | None:
        """Coefficient and anchor trees shaped like the trainable parameters ``tr``."""
        p = self._penalty
        if p is None:
            return None

        def keys(path) -> tuple:
            return tuple(k.key for k in path if hasattr(k, "key"))

        def name(path) -> str:
            return _name(keys(path)[:-1]) + "." + _LEAF[str(keys(path)[-1])]

        def coef(path, v):
            return np.float32(p.coefficients.get(name(path), 0.0))

        def anchor(path, v):
            leaf = str(keys(path)[-1])
            a = p.anchors.get(name(path))
            if a is None:
                return jnp.zeros(v.shape, v.dtype)
            return jnp.asarray(_from_canonical(np.asarray(a, np.float32), leaf)).reshape(v.shape)

        coefs = jax.tree_util.tree_map_with_path(coef, tr)
        anchors = jax.tree_util.tree_map_with_path(anchor, tr)
        return self._place((coefs, anchors))

    def end_training(self) -> None:
        self._sync()

    def barrier(self) -> None:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("transferkit fit")

    def batch_statistics(self, x: np.ndarray, groups: tuple[str, ...]) -> dict[str, np.ndarray]:
        chosen = [m for m, g in self._norms if g in groups]
        if not chosen:
            return {}
        self._sync()
        # momentum 0 (Flax's: the weight of the old statistic): the pass leaves exactly
        # the batch statistics, read from its output state; the module keeps its own
        saved = [(m, m.use_running_average, m.momentum) for m, _ in self._norms]
        ids = {id(m) for m in chosen}
        try:
            for m, _ in self._norms:
                m.use_running_average = id(m) not in ids
                m.momentum = 0.0
            graph, params, stats = nnx.split(self.native, nnx.Param, nnx.BatchStat)
            params, stats = self._place((params, stats))
            # unpadded, even over a mesh: padding rows would enter the statistics
            xr = self._place(np.asarray(x, np.float32))  # replicated over a mesh
            new = _batch_stats(graph, params, stats, xr)
        finally:
            for m, running, momentum in saved:
                m.use_running_average, m.momentum = running, momentum
            self._eval_cache = None
        wanted = {_name(p) for p, m in nnx.iter_graph(self.native) if id(m) in ids}
        out = {}
        for path, var in nnx.to_flat_state(new):
            prefix = _name(path[:-1])
            if prefix in wanted:
                out[f"{prefix}.{_LEAF[str(path[-1])]}"] = np.array(var.get_value(), np.float32)
        return out

    def training_state(self) -> dict[str, np.ndarray]:
        state = {"rng.jax": np.asarray(jax.random.key_data(self._key))}
        if self._train is not None:
            for k, v in _keystr_leaves(self._train["opt"]).items():
                state[f"opt.{k}"] = np.asarray(v)
        return state

    def load_training_state(self, state: Mapping[str, np.ndarray]) -> None:
        if "rng.jax" in state:
            self._key = jax.random.wrap_key_data(jnp.asarray(state["rng.jax"]))
        if self._train is not None:  # after set_plan: the state belongs to this plan
            self._sync()
            self._split_for_training({k[4:]: v for k, v in state.items() if k.startswith("opt.")})


@partial(jax.jit, static_argnums=0)
def _features(graph, params, stats, x):
    return nnx.merge(graph, params, stats, copy=True).backbone(x)


class _Entry(nnx.Module):
    """Stands in for a module of a traced copy of the backbone and hands the first input
    it sees to ``record``: the tensor entering the module's layer group."""

    def __init__(self, inner: nnx.Module, record: Any) -> None:
        self.inner = inner
        self.record = record

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        self.record(x)
        return self.inner(x, *args, **kwargs)


def _pooled(t: jax.Array, backbone: str, group: str) -> jax.Array:
    """Feature maps ``(N, H, W, C)`` averaged over height and width; vectors as is."""
    if getattr(t, "ndim", None) not in (2, 4):
        raise ConfigError(
            f"group_features: layer group {group!r} of {backbone!r} is entered by "
            f"{type(t).__name__} {getattr(t, 'shape', '')}; only feature maps (N, H, W, C) "
            "and vectors (N, C) can be pooled per group"
        )
    return t.astype(jnp.float32).mean(axis=(1, 2)) if t.ndim == 4 else t.astype(jnp.float32)


@partial(jax.jit, static_argnums=(0, 1, 2))
def _group_features(graph, entries, backbone, params, stats, x):
    # No hooks in nnx: in a copy merged inside the trace (the engine's own module is never
    # touched), each group's entry modules are wrapped by recorders.
    model = nnx.merge(graph, params, stats, copy=True)
    seen: dict[str, jax.Array] = {}

    def recorder(group: str):
        def record(t):
            if group not in seen:
                seen[group] = _pooled(t, backbone, group)

        return record

    for group, paths in entries:
        for path in paths:
            parent = model.backbone
            for key in path[:-1]:
                parent = getattr(parent, str(key))
                parent = parent.inner if isinstance(parent, _Entry) else parent
            inner = getattr(parent, str(path[-1]))
            setattr(parent, str(path[-1]), _Entry(inner, recorder(group)))
    out = model.backbone(x)
    missing = [group for group, _ in entries if group not in seen]
    if missing:
        raise ConfigError(
            f"group_features: no module of layer group {missing[0]!r} of {backbone!r} was "
            "called by the backbone, so the tensor entering it is unknown"
        )
    return [seen[group] for group, _ in entries] + [out]


@partial(jax.jit, static_argnums=0)
def _head(graph, params, stats, f):
    return nnx.merge(graph, params, stats, copy=True).head(f)


@partial(jax.jit, static_argnums=0)
def _batch_stats(graph, params, stats, x):
    model = nnx.merge(graph, params, stats, copy=True)
    model.backbone(x)
    return nnx.state(model, nnx.BatchStat)


@partial(jax.jit, static_argnums=0)
def _predict(graph, params, stats, x):
    return nnx.merge(graph, params, stats, copy=True)(x)


def _penalty(tr, coefs, anchors) -> jax.Array:
    """``Σ c/2 ‖w − a‖²`` over the trainable leaves (trees of the same structure)."""
    terms = [
        c / 2 * jnp.sum(jnp.square(p - a))
        for p, c, a in zip(
            jax.tree.leaves(tr), jax.tree.leaves(coefs), jax.tree.leaves(anchors), strict=True
        )
    ]
    return sum(terms, jnp.zeros((), jnp.float32))


def _make_step(graph, tx, loss_kind: str, mults, head_only: bool, penalised: bool = False):
    def step(tr, fr, st, opt, x, y, w, lr, key, coefs=None, anchors=None):
        key, sub = jax.random.split(key)

        def loss_fn(tr, st):
            model = nnx.merge(graph, tr, fr, st, copy=True)
            out = model.head(x, sub) if head_only else model(x, sub)
            task = _loss(loss_kind, out, y, w)
            reg = _penalty(tr, coefs, anchors) if penalised else jnp.zeros((), jnp.float32)
            return task + reg, (nnx.state(model, nnx.BatchStat), task, reg)

        (_, (st, loss, reg)), grads = jax.value_and_grad(loss_fn, has_aux=True)(tr, st)
        updates, opt = tx.update(grads, opt, tr)
        tr = jax.tree.map(lambda p, u, m: p - (lr * m) * u, tr, updates, mults)
        return tr, st, opt, key, loss, reg

    return jax.jit(step, donate_argnums=(0, 2, 3))


def build_engine(
    spec: BackboneSpec,
    head: Head,
    input_shape: tuple[int, ...],
    seed: int,
    data_parallel: bool = False,
    device: str = "auto",
) -> FlaxEngine:
    jscaling.initialize_from_env()  # a launched process joins before JAX computes
    rngs = nnx.Rngs(seed)
    backbone = spec.create(nnx.Module, input_shape=input_shape, rngs=rngs)
    model = FlaxModel(backbone, FlaxHead(head.dense_layers(spec.feature_size), rngs))
    return FlaxEngine(spec, model, head, data_parallel, device)


def resolve_device(device: str) -> Any:
    """transferkit's device name -> one of ``jax.devices()``; None for ``"auto"`` (JAX's
    default device)."""
    if device == "auto":
        return None
    kind, _, index = device.partition(":")
    platform = {"cuda": "gpu"}.get(kind, kind)
    try:
        found = jax.devices(platform)
    except RuntimeError:
        found = []
    i = int(index or 0)
    if i >= len(found):
        raise ConfigError(
            f"device {device!r} is not available to JAX ({jax.__version__}; devices: "
            f"{', '.join(str(d) for d in jax.devices())}); use device='auto' or 'cpu'"
        )
    return found[i]
