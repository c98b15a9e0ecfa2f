"""PyTorch realisation of a backbone + head, and its eager training steps."""

from __future__ import annotations

from . import import_order  # noqa: F401  (before torch: see import_order.py)

# isort: split
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transferkit import BackboneSpec, Engine, Head, OptimizerSpec
from transferkit.errors import ConfigError, FrameworkNotInstalledError, WeightsError
from transferkit.heads import DenseLayer
from transferkit.regularizers import Penalty
from transferkit.scaling import Scaling, shard

from . import scaling as tscaling

_NOT_WEIGHTS = ("num_batches_tracked",)
_BN = nn.modules.batchnorm._BatchNorm


class TorchHead(nn.Module):
    """Dense head with canonical names ``hidden.<i>`` and ``out``."""

    def __init__(self, layers: list[DenseLayer]) -> None:
        super().__init__()
        self.spec = layers
        self.hidden = nn.ModuleList(nn.Linear(d.in_features, d.out_features) for d in layers[:-1])
        self.out = nn.Linear(layers[-1].in_features, layers[-1].out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for d, layer in zip(self.spec[:-1], self.hidden, strict=True):
            x = F.relu(layer(F.dropout(x, d.dropout, self.training)))
        return self.out(F.dropout(x, self.spec[-1].dropout, self.training))


class TorchModel(nn.Module):
    def __init__(self, backbone: nn.Module, head: TorchHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _nchw(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(x, dtype=np.float32))
    return t.permute(0, 3, 1, 2).contiguous() if t.ndim == 4 else t


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"``: CUDA where PyTorch sees a GPU, otherwise the CPU; or any torch device
    that is available here (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(
            f"device {device!r} is not a torch device ({e}); use 'auto', 'cpu', 'cuda' or "
            "'cuda:<index>'"
        ) from None
    available = {
        "cpu": lambda: True,
        "cuda": lambda: torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count(),
        "mps": lambda: torch.backends.mps.is_available(),
    }
    if not available.get(dev.type, lambda: False)():
        raise ConfigError(
            f"device {device!r} is not available to this PyTorch ({torch.__version__}, "
            f"{torch.cuda.device_count()} CUDA device(s)); use device='auto' or 'cpu'"
        )
    return dev


def _pooled(t: Any, backbone: str, group: str) -> torch.Tensor:
    """An activation entering layer group ``group`` as one vector per example: feature
    maps ``(N, C, H, W)`` averaged over height and width, vectors as they are."""
    if isinstance(t, torch.Tensor) and t.ndim in (2, 4):
        return t.float().mean(dim=(2, 3)) if t.ndim == 4 else t.float()
    what = f"a {t.ndim}-d tensor" if isinstance(t, torch.Tensor) else type(t).__name__
    raise ConfigError(
        f"group_features: layer group {group!r} of {backbone!r} is entered by {what}; only "
        "feature maps (N, C, H, W) and vectors (N, C) can be pooled per group"
    )


def _entry(seen: Mapping[str, torch.Tensor], group: str, backbone: str) -> np.ndarray:
    if group not in seen:
        raise ConfigError(
            f"group_features: no module of layer group {group!r} of {backbone!r} was called "
            "by the backbone's forward, so the tensor entering it is unknown"
        )
    return np.ascontiguousarray(seen[group].cpu().numpy(), dtype=np.float32)


class TorchEngine(Engine):
    def __init__(
        self,
        spec: BackboneSpec,
        backbone: nn.Module,
        head: Head,
        device: str = "auto",
        compile: bool = False,
    ) -> None:
        self.spec = spec
        self.backbone = backbone
        self.device = resolve_device(device)
        self.native = TorchModel(backbone, TorchHead(head.dense_layers(spec.feature_size)))
        self.native.to(self.device)
        self.loss = head.loss
        self.native.eval()
        self._training = False
        self.optimizer: torch.optim.Optimizer | None = None
        self._index_parameters()
        # BatchNorm and dropout layers by layer group: a frozen group runs in inference
        # mode (running statistics, no dropout), so a frozen backbone computes the same
        # features whether they are cached or not.
        self._norms = [
            (m, spec.group_of(f"{n}.weight"))
            for n, m in backbone.named_modules()
            if isinstance(m, (_BN, nn.modules.dropout._DropoutNd))
            and any(g.owns(n) for g in spec.groups)
        ]
        self.multiples: dict[str, float] = {g: 1.0 for g in spec.group_names}
        self.head_only = False
        self._penalty: dict[str, tuple[float, torch.Tensor | None]] | None = None
        self._penalised: list[tuple[nn.Parameter, float, torch.Tensor | None]] = []
        self._compile = compile
        self._compiled: dict[int, nn.Module] = {}  # id(module) -> torch.compile(module)
        self._autocast: torch.dtype | None = None
        self._scaler: torch.amp.GradScaler | None = None
        self._ddp: nn.Module | None = None  # the trained module under DDP, per plan

    def _index_parameters(self) -> None:
        self._named = dict(self.native.named_parameters())
        self._group_of = {name: self._group(name) for name in self._named}

    def _group(self, name: str) -> str:
        if name.startswith("head."):
            return "head"
        if ".lora_" in name:
            return "peft"
        return self.spec.group_of(name[len("backbone.") :])

    def to_input(self, x: Any) -> Any:
        """Engine input -> what the backbone's forward takes (NCHW tensors for images),
        on the model's device."""
        return _nchw(x).to(self.device, non_blocking=True)

    def add_peft(self, peft: Mapping[str, Any]) -> None:
        if peft.get("kind") != "lora":
            raise ConfigError(f"unknown PEFT kind {peft.get('kind')!r}; expected 'lora'")
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError:
            raise FrameworkNotInstalledError(
                "LoRA needs the 'peft' package: pip install 'transferkit[hf]'"
            ) from None
        config = LoraConfig(
            r=peft["r"],
            lora_alpha=peft["alpha"],
            target_modules=list(peft["target"]),
            lora_dropout=peft["dropout"],
            bias="none",
        )
        targets = list(peft["target"])
        names = [name for name, _ in self.backbone.named_modules()]
        if not any(n == t or n.endswith("." + t) for n in names for t in targets):
            layers = [  # what a user would adapt, for the message
                name
                for name, m in self.backbone.named_modules()
                if isinstance(m, (nn.Linear, nn.Conv2d)) and getattr(m, "groups", 1) == 1
            ]
            shown = ", ".join(layers[:12]) + (
                f", ... ({len(layers)} in all)" if len(layers) > 12 else ""
            )
            raise ConfigError(
                f"LoRA target {targets} matches no module of {self.spec.name!r}; its linear "
                f"and convolution layers: {shown or 'none'} (a target matches a module whose "
                "name ends with it)"
            )
        try:
            inject_adapter_in_model(config, self.backbone)
        except ValueError as e:  # a module peft cannot adapt
            raise ConfigError(f"LoRA target {targets} in {self.spec.name!r}: {e}") from None
        self._index_parameters()
        self.optimizer = None

    # --- weights -------------------------------------------------------------------
    def _state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.native.state_dict().items() if not k.endswith(_NOT_WEIGHTS)}

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self._state().items()}

    def get_weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self._state().items()}

    def set_weights(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.check_names(arrays)
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        # A subset is allowed (a pretrained backbone without a head).
        self.native.load_state_dict(tensors, strict=False)

    # --- inference -----------------------------------------------------------------
    def _eval(self) -> None:
        if self._training:
            self.native.eval()
            self._training = False

    @torch.inference_mode()
    def features(self, x: np.ndarray) -> np.ndarray:
        self._eval()
        return self._run(self.backbone)(self.to_input(x)).float().cpu().numpy()

    @torch.inference_mode()
    def head_predict(self, f: np.ndarray) -> np.ndarray:
        self._eval()
        return self._run(self.native.head)(self._tensor(f)).cpu().numpy()

    @torch.inference_mode()
    def predict(self, x: np.ndarray) -> np.ndarray:
        self._eval()
        return self._run(self.native)(self.to_input(x)).cpu().numpy()

    @torch.inference_mode()
    def group_features(self, x: np.ndarray) -> dict[str, np.ndarray]:
        # A forward pre-hook on every module of each group after the first: the first to
        # fire is the group's outermost module called first, and its input is the tensor
        # entering the group (maxpool's output for resnet18's layer1), i.e. the one that
        # leaves the group before it.
        self._eval()
        groups = self.spec.groups
        seen: dict[str, torch.Tensor] = {}

        def record(group: str):
            def hook(module: nn.Module, args: tuple) -> None:
                if group not in seen:
                    seen[group] = _pooled(args[0] if args else None, self.spec.name, group)

            return hook

        handles = []
        try:
            for name, module in self.backbone.named_modules():
                owner = next((g.name for g in groups if g.owns(name)), None) if name else None
                if owner is not None and owner != groups[0].name:
                    handles.append(module.register_forward_pre_hook(record(owner)))
            out = self.backbone(self.to_input(x))
        finally:
            for h in handles:
                h.remove()
        leaving = [_entry(seen, g.name, self.spec.name) for g in groups[1:]]
        leaving.append(np.ascontiguousarray(out.cpu().numpy(), dtype=np.float32))
        return dict(zip(self.spec.group_names, leaving, strict=True))

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.asarray(a))
        return t.float().to(self.device) if t.is_floating_point() else t.to(self.device)

    def _run(self, module: nn.Module) -> nn.Module:
        """``module``, compiled with ``torch.compile`` when the model was built with
        ``compile=True`` (once per module; its guards recompile what a plan changes)."""
        if not self._compile:
            return module
        if id(module) not in self._compiled:
            self._compiled[id(module)] = torch.compile(module)
        return self._compiled[id(module)]

    # --- training ------------------------------------------------------------------
    def set_scaling(self, scaling: Scaling) -> None:
        self._autocast = tscaling.check_precision(scaling.precision, self.device)
        fp16 = self._autocast is torch.float16
        self._scaler = torch.amp.GradScaler(self.device.type) if fp16 else None
        self.rank, self.world = 0, 1
        if scaling.strategy == "ddp":
            device, self.rank, self.world = tscaling.join(self.device, scaling.timeout)
            if device != self.device:
                self.device = device
                self.native.to(device)

    def _trained_module(self, inputs: Any) -> nn.Module:
        """What a step runs: the head on cached features, else the whole model; under
        DDP wrapped once per plan (``find_unused_parameters`` only when a trainable
        parameter takes no part in the loss)."""
        module = self.native.head if self.head_only else self.native
        if self.world > 1:
            if self._ddp is None:
                module.eval()
                try:
                    with torch.enable_grad():
                        used = tscaling.reached(module(inputs))
                finally:
                    self._train_mode()
                unused = any(p.requires_grad and id(p) not in used for p in module.parameters())
                self._ddp = tscaling.wrap(module, self.device, unused)
            module = self._ddp
        return self._run(module)

    def start_training(self, optimizer: OptimizerSpec, seed: int) -> None:
        torch.manual_seed(seed)
        groups: dict[str, list[nn.Parameter]] = {}
        for name, p in self._named.items():
            groups.setdefault(self._group_of[name], []).append(p)
        param_groups = [{"params": ps, "group": g, "mult": 1.0} for g, ps in groups.items()]
        o = optimizer
        if o.name == "adam":
            self.optimizer = torch.optim.Adam(
                param_groups, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay
            )
        elif o.name == "adamw":
            self.optimizer = torch.optim.AdamW(
                param_groups, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay
            )
        else:
            self.optimizer = torch.optim.SGD(
                param_groups, momentum=o.momentum, weight_decay=o.weight_decay
            )
        self._param_name = {id(p): n for n, p in self._named.items()}

    def set_plan(self, multiples: Mapping[str, float], head_only: bool) -> None:
        self.multiples = {**dict(multiples), "head": 1.0}
        self.head_only = head_only
        for name, p in self._named.items():
            train = self.multiples.get(self._group_of[name], 0.0) > 0 and not (
                head_only and not name.startswith("head.")
            )
            if not train and self.optimizer is not None:
                self.optimizer.state.pop(p, None)  # frozen parameters hold no state
                p.grad = None
            p.requires_grad_(train)
        for pg in self.optimizer.param_groups:
            pg["mult"] = self.multiples.get(pg["group"], 0.0)
        if self._ddp is not None:  # DDP registers the parameters that train under a plan
            self._compiled.pop(id(self._ddp), None)
            self._ddp = None
        self._penalised = [
            (self._named[n], c, a)
            for n, (c, a) in (self._penalty or {}).items()
            if self._named[n].requires_grad
        ]
        self._train_mode()

    def set_penalty(self, penalty: Penalty | None) -> None:
        self._penalty = None
        if penalty is not None:
            self._penalty = {}
            for name, p in self._named.items():
                c = float(penalty.coefficients.get(name, 0.0))
                if c:
                    a = penalty.anchors.get(name)
                    if a is not None:
                        a = torch.from_numpy(np.asarray(a, np.float32)).reshape(p.shape)
                        a = a.to(self.device)
                    self._penalty[name] = (c, a)

    def _train_mode(self) -> None:
        self.native.train()
        for m, group in self._norms:
            if self.head_only or self.multiples.get(group, 0.0) == 0:
                m.eval()  # frozen: BatchNorm on running statistics, no dropout
            elif self.batchnorm == "frozen" and isinstance(m, _BN):
                m.eval()  # BatchNorm in inference mode; its weight and bias still train
        self._training = True

    @torch.inference_mode()
    def batch_statistics(self, x: np.ndarray, groups: tuple[str, ...]) -> dict[str, np.ndarray]:
        # momentum 1: a forward pass leaves exactly the batch statistics (the variance
        # unbiased, as PyTorch keeps it) in the running buffers, restored afterwards
        chosen = [m for m, g in self._norms if isinstance(m, _BN) and g in groups]
        if not chosen:
            return {}
        self.native.eval()
        self._training = False
        saved = {m: (m.momentum, {k: b.clone() for k, b in m.named_buffers()}) for m in chosen}
        for m in chosen:
            m.train()
            m.momentum = 1.0
        try:
            self.backbone(self.to_input(x))
            names = {m: n for n, m in self.backbone.named_modules()}
            out = {}
            for m in chosen:
                out[f"backbone.{names[m]}.running_mean"] = m.running_mean.cpu().numpy().copy()
                out[f"backbone.{names[m]}.running_var"] = m.running_var.cpu().numpy().copy()
        finally:
            for m, (momentum, buffers) in saved.items():
                m.momentum = momentum
                for k, b in m.named_buffers():
                    b.copy_(buffers[k])
                m.eval()
        return out

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> Any:
        if not self._training:
            self._train_mode()
        for pg in self.optimizer.param_groups:
            pg["lr"] = lr * pg["mult"]
        n = len(y)
        if self.world > 1:  # this process's shard of the global batch
            part = shard(n, self.rank, self.world)
            x, y = x[part], y[part]
        inputs = self._tensor(x) if self.head_only else self.to_input(x)
        module = self._trained_module(inputs)
        dtype = self._autocast
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=bool(dtype)):
            out = module(inputs)
        target = self._tensor(y)
        out = out.float()
        loss = (
            F.cross_entropy(out, target)
            if self.loss == "cross_entropy"
            else F.mse_loss(out, target)
        )
        # DDP averages the processes' gradients: each weighs its mean by its share, so
        # the update is the whole batch's mean whatever the shard sizes
        total = loss * (len(y) * self.world / n) if self.world > 1 else loss
        if self._penalty is not None:
            reg = out.new_zeros(())
            for p, c, a in self._penalised:
                reg = reg + (c / 2) * torch.sum(torch.square(p if a is None else p - a))
            total = total + reg
        self.optimizer.zero_grad(set_to_none=True)
        if self._scaler is not None:  # float16: the loss scaled against underflow
            self._scaler.scale(total).backward()
            self._scaler.step(self.optimizer)
            self._scaler.update()
        else:
            total.backward()
            self.optimizer.step()
        loss = loss.detach()
        if self.world > 1:
            loss = tscaling.all_sum(loss * (len(y) / n))
        return loss if self._penalty is None else (loss, reg.detach())

    def end_training(self) -> None:
        self._eval()

    def barrier(self) -> None:
        tscaling.barrier()

    def all_gather(self, rows: np.ndarray) -> np.ndarray:
        return tscaling.all_gather(rows, self.device) if self.world > 1 else rows

    def training_state(self) -> dict[str, np.ndarray]:
        state = {"rng.torch": torch.get_rng_state().numpy().copy()}
        if self._scaler is not None:
            amp = self._scaler.state_dict()
            state["amp.scale"] = np.float64(amp["scale"])
            state["amp.growth_tracker"] = np.int64(amp["_growth_tracker"])
        for p, s in self.optimizer.state.items():
            name = self._param_name[id(p)]
            for key, value in s.items():
                state[f"opt.{name}.{key}"] = torch.as_tensor(value).detach().cpu().numpy().copy()
        return state

    def _slots(self) -> set[str]:
        """The per-parameter state this optimizer keeps once it has taken a step."""
        groups = self.optimizer.param_groups
        if isinstance(self.optimizer, torch.optim.SGD):
            return {"momentum_buffer"} if any(g.get("momentum") for g in groups) else set()
        amsgrad = any(g.get("amsgrad") for g in groups)
        return {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if amsgrad else set())

    def load_training_state(self, state: Mapping[str, np.ndarray]) -> None:
        slots: dict[str, set[str]] = {}
        for key, value in state.items():  # every key and shape checked before any is set
            if key.startswith("opt."):
                name, _, slot = key[4:].rpartition(".")
                if name not in self._named:
                    raise WeightsError(f"{key!r}: this model has no parameter {name!r}")
                want = () if slot == "step" else tuple(self._named[name].shape)
                if tuple(np.shape(value)) != want:
                    raise WeightsError(f"{key!r} has shape {np.shape(value)}, expected {want}")
                slots.setdefault(name, set()).add(slot)
        expected = self._slots()
        for name, found in slots.items():
            if found != expected:
                raise WeightsError(
                    f"the optimizer state of {name!r} holds {sorted(found)}, but this "
                    f"optimizer keeps {sorted(expected)}"
                )
        if "rng.torch" in state:
            rng = np.asarray(state["rng.torch"])
            want = torch.get_rng_state().shape
            if rng.dtype != np.uint8 or rng.shape != tuple(want):
                raise WeightsError(
                    f"'rng.torch' is {rng.dtype} {rng.shape}, not torch's uint8 {tuple(want)}"
                )
            torch.set_rng_state(torch.from_numpy(rng.copy()))
        if self._scaler is not None and "amp.scale" in state:
            amp = self._scaler.state_dict()
            amp["scale"] = float(state["amp.scale"])
            amp["_growth_tracker"] = int(state["amp.growth_tracker"])
            self._scaler.load_state_dict(amp)
        self.optimizer.state.clear()
        for key, value in state.items():
            if not key.startswith("opt."):
                continue
            name, _, slot = key[4:].rpartition(".")
            t = torch.from_numpy(np.array(value))
            if slot != "step":  # torch.optim keeps the step count on the CPU
                t = t.to(self.device)
            self.optimizer.state[self._named[name]][slot] = t


def build_engine(
    spec: BackboneSpec,
    head: Head,
    input_shape: tuple[int, ...],
    seed: int,
    device: str = "auto",
    compile: bool = False,
    **loading: Any,
) -> TorchEngine:
    """``loading``: for a backbone whose library loads its own pretrained weights
    (``spec.loads_pretrained``), ``pretrained=`` and ``assets=``, passed to its factory
    with the spec's options."""
    torch.manual_seed(seed)
    extra = {**spec.options, **loading} if spec.loads_pretrained else {}
    backbone = spec.create(nn.Module, input_shape=input_shape, **extra)
    return TorchEngine(spec, backbone, head, device, compile)
