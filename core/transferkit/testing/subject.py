"""The subject of the conformance suite: which backbone, how to make inputs, and what it
can do (capability flags)."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import transferkit as tk
from transferkit import weights as wio
from transferkit.catalog import BackboneSpec
from transferkit.plugins import registry


def parity_framework() -> str | None:
    """The framework whose realisations of the reference architectures the parity tests
    compare against: canonical names and layouts are its own (``Framework.reference``)."""
    return registry().reference_framework()


#: Example texts for text backbones: varied topics, lengths and punctuation.
SENTENCES = (
    "The central bank raised interest rates to curb inflation.",
    "The striker scored twice in the second half.",
    "Shares fell sharply after the profit warning.",
    "The midfielder signed a new three-year contract.",
    "Quarterly earnings beat analysts' forecasts.",
    "The home side won the cup final on penalties.",
    "Heavy rain is expected across the north tomorrow.",
    "A new exhibition of early photographs opens on Friday.",
    "The committee postponed its vote until next week.",
    "Researchers sequenced the genome of an ancient wheat variety.",
    "Is the museum open on public holidays?",
    "Add the flour slowly, stirring all the time.",
    "The train to Leeds is delayed by twenty minutes.",
    "She learned to play the cello at the age of forty.",
    "Wind turbines supplied a third of the country's power last year.",
    "The software update fixes a bug in the login screen.",
    "Two climbers reached the summit before dawn.",
    "Prices of second-hand cars have started to fall.",
    "The novel follows three sisters through the war.",
    "Please remember to water the tomatoes while I'm away.",
    "The minister denied any knowledge of the contract.",
    "Tickets for the concert sold out within an hour.",
    "A small earthquake shook the island overnight.",
    "Our cat refuses to eat anything but fish.",
    "The bridge will be closed for repairs until May.",
    "Scientists warn that the glacier is shrinking faster than expected.",
    "He apologised for the late reply.",
    "The festival attracted record crowds this summer.",
    "Unemployment fell for the fourth month in a row.",
    "The recipe calls for two ripe bananas and a pinch of salt.",
    "Local volunteers cleaned up the beach on Sunday.",
    "The goalkeeper was sent off in the first minute.",
)

#: Words that mark the classes of text examples in learning tests (class 0 is unmarked).
_CLASS_WORDS = ("", "football goal match", "bank profit shares")


@dataclass(frozen=True)
class Subject:
    """What the suite tests: one backbone, how to build it, and what it can do.

    Args:
        backbone: the backbone's ``framework:name``, registered by a plugin or resolved by
            its framework from the name (``hf:/path/to/model``).
        input_shape: the ``input_shape`` passed to ``tk.build`` (``(16, 16, 3)`` keeps
            image tests fast); None builds at the backbone's registered shape.
        options: further build options of the framework (``{"device": "cpu"}``, say).
        trains_backbone: the framework fine-tunes backbone layer groups. False for one
            that supports feature extraction only (the head trains, the backbone is
            frozen): the tests of partial and gradual unfreezing are skipped, and the
            others train under ``tk.freeze.FeatureExtraction()``.
        pretrained: the backbone has pretrained weights (``weights="pretrained"``, the
            default of ``tk.build``). False: the test that they load and differ from a
            random initialisation is skipped, and every other test starts from scratch.
        reference: the backbone realises a transferkit reference architecture (its spec
            names it as ``arch``, with the canonical weight names), so a linear probe on
            it must train exactly as on the reference framework's realisation
            (:func:`parity_framework`). That test is skipped when the parity framework is
            not installed, and for the parity framework's own realisation.
    """

    backbone: str
    input_shape: tuple[int, ...] | None = None
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    trains_backbone: bool = True
    pretrained: bool = True
    reference: bool = True

    def __post_init__(self) -> None:
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "options", dict(self.options))

    @property
    def framework(self) -> str:
        return self.backbone.split(":", 1)[0]

    @functools.cached_property
    def spec(self) -> BackboneSpec:
        """The backbone's spec: registered, or resolved from the name by its framework (as
        ``tk.build`` does); an unknown name raises ``UnknownBackboneError``."""
        reg = registry()
        if self.backbone in reg.catalog:
            return reg.catalog.get(self.backbone)
        fw = reg.frameworks.get(self.framework)
        short = self.backbone.partition(":")[2]
        spec = fw.resolve(short) if fw is not None and short else None
        return spec if spec is not None else reg.catalog.get(self.backbone)

    @property
    def shape(self) -> tuple[int, ...]:
        """One example's shape as built: ``input_shape``, or the registered one."""
        return self.input_shape if self.input_shape is not None else self.spec.input_shape

    def build(self, head: tk.Head, weights: Any = None, **kw: Any) -> tk.Model:
        """``tk.build`` of this backbone with ``head``; from scratch unless ``weights``."""
        options = {**self.options, **kw}
        return tk.build(
            self.backbone, head=head, weights=weights, input_shape=self.input_shape, **options
        )

    @property
    def weights(self) -> str | None:
        """What the tests build from: ``"pretrained"`` where there are pretrained weights."""
        return "pretrained" if self.pretrained else None

    def policy(self) -> tk.FreezePolicy:
        """The policy tests that merely need some training train under."""
        return tk.freeze.FullFineTune() if self.trains_backbone else tk.freeze.FeatureExtraction()

    def inputs(self, n: int, seed: int = 0) -> Any:
        """``n`` example inputs of the backbone's kind: images uniform in [0, 1] (float32,
        channels last), vectors uniform in [0, 1], or texts from :data:`SENTENCES` in a
        random order (each once before any repeats)."""
        rng = np.random.default_rng(seed)
        kind = self.spec.input_kind
        if kind == "text":
            rounds = -(-n // len(SENTENCES))  # every sentence once before any repeats
            order = np.concatenate([rng.permutation(len(SENTENCES)) for _ in range(rounds)])
            return [SENTENCES[i] for i in order[:n]]
        return rng.random((n, *self.shape), dtype=np.float32)

    def separable(self, x: Any, y: np.ndarray) -> Any:
        """The inputs ``x`` with a visible mark of their class ``y`` (0, 1 or 2) added,
        so that a few epochs learn them: class 1 brighter in the first half of the rows
        (of the features, for vectors), class 2 in the second half; texts of class 1 and
        2 start with words of a topic."""
        if self.spec.input_kind == "text":
            return [f"{_CLASS_WORDS[c]} {t}".strip() for t, c in zip(x, y, strict=True)]
        x = np.array(x, copy=True)
        half = x.shape[1] // 2
        x[y == 1, :half] += 0.8
        x[y == 2, half:] += 0.8
        return np.clip(x, 0, 1)


def _targets(x: Any) -> np.ndarray:
    """Regression targets that depend on the inputs."""
    if isinstance(x, np.ndarray):
        return x.reshape(len(x), -1).mean(axis=1)
    return np.array([len(t) / 100 for t in x], np.float32)


def _reverse(x: Any) -> Any:
    return x[::-1].copy() if isinstance(x, np.ndarray) else list(reversed(x))


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[^0-9A-Za-z_]+", name) if t]


def _names_group(key: str, group: tk.LayerGroup) -> bool:
    """Whether a state key names a parameter of ``group``: one of its prefixes appears,
    token by token, in the key (``opt.backbone.stage1.conv.weight.exp_avg``, or
    ``opt.[0].mu['backbone']['stage1']...``)."""
    key_tokens = _tokens(key)
    for prefix in group.prefixes:
        p = _tokens(prefix)
        if any(key_tokens[i : i + len(p)] == p for i in range(len(key_tokens) - len(p) + 1)):
            return True
    return False


def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def reference_pair(
    subject: Subject,
    head: tk.Head,
    tmp_path: Path,
    seed: int = 3,
    input_shape: tuple[int, ...] | None = None,
) -> tuple[tk.Model, tk.Model]:
    """The PyTorch reference realisation of the subject's architecture and the subject,
    with the same backbone weights and head initialisation; skips the calling test where
    there is no reference to compare with."""
    if not subject.reference:
        pytest.skip("subject.reference is False: no reference architecture to compare with")
    arch = subject.spec.arch
    assert arch is not None, (
        f"{subject.backbone!r} declares no reference architecture (spec.arch); "
        "register it with transferkit.reference.reference_spec or set reference=False"
    )
    parity = parity_framework()
    if parity is None:
        pytest.skip("subject.reference: no framework with the reference layouts is registered")
    if subject.framework == parity:
        pytest.skip(f"subject.reference: {subject.backbone!r} is the reference itself")
    reference = f"{parity}:{arch}"
    if registry().frameworks[parity].missing():
        pytest.skip(f"subject.reference: the reference {reference!r} is not installed")
    shape = input_shape or subject.input_shape
    ref = tk.build(reference, head=head, weights=subject.weights, seed=seed, input_shape=shape)
    same = dict(head=head, seed=seed, input_shape=shape, **subject.options)
    if subject.pretrained:
        return ref, tk.build(subject.backbone, **same)
    # the reference's random backbone, through the canonical names
    backbone = {k: v for k, v in ref.get_weights().items() if k.startswith("backbone.")}
    wio.save(backbone, tmp_path / "backbone.safetensors")
    weights = tmp_path / "backbone.safetensors"
    return ref, tk.build(subject.backbone, weights=weights, **same)


def sgd_pair(
    subject: Subject, tmp_path: Path, x: Any, epochs: int, batchnorm: str, control: bool = False
) -> tuple[dict[str, np.ndarray], ...]:
    """The reference realisation and the subject, from the same weights, after plain SGD
    (lr 1e-2, batches of 4, no momentum) on ``x`` in 3 classes; images at 8x8, where the
    last stages see 1x1 feature maps. Their weights, BatchNorm statistics included.

    ``control=True`` adds a third: the reference again, from the same weights, on ``x``
    times ``1 + 1e-7`` (a rounding's worth). How far it moves from the reference is the
    reference's own float32 sensitivity on this trajectory, its chaos floor: no realisation
    can be asked to agree more closely than that (:func:`floor_tolerance`)."""
    small = None
    if subject.spec.input_kind == "image" and subject.spec.resizable:
        small = (8, 8, subject.spec.input_shape[-1])
    y = np.arange(len(x)) % 3
    ref, model = reference_pair(subject, tk.Classifier(3), tmp_path, input_shape=small)
    runs = [(ref, x), (model, x)]
    if control:
        twin = tk.build(ref.spec.name, head=ref.head, weights=None, input_shape=ref.input_shape)
        twin.set_weights(ref.get_weights())
        runs.append((twin, (np.asarray(x, np.float32) * np.float32(1 + 1e-7))))
    for m, data in runs:
        tk.fit(
            m, tk.Dataset(data, y), epochs=epochs, batch_size=4, lr=1e-2, seed=0, verbose=0,
            optimizer="sgd", momentum=0.0, schedule="constant", freeze=subject.policy(),
            batchnorm=batchnorm,
        )  # fmt: skip
    return tuple(m.get_weights() for m, _ in runs)


def floor_tolerance(
    reference: dict[str, np.ndarray], control: dict[str, np.ndarray], least: float, factor: float
) -> dict[str, float]:
    """Per weight: ``least``, or ``factor`` times how far the reference's own control run
    moved (:func:`sgd_pair` with ``control=True``), whichever is larger."""
    return {
        k: max(least, factor * float(np.max(np.abs(control[k] - v)))) for k, v in reference.items()
    }
