"""The adapter conformance suite: the tests every framework adapter and backbone must pass.

The built-in adapters run it, and so can a third-party package. Subclass
:class:`AdapterConformance` in your own tests, name the backbone in a :class:`Subject`,
and pytest collects the whole suite for it (the pattern of pandas' extension-array base
tests)::

    # tests/test_conformance.py of a third-party package
    from transferkit.testing import AdapterConformance, Subject


    class TestMyFramework(AdapterConformance):
        subject = Subject(backbone="myfw:cnn", input_shape=(16, 16, 3))

    # tests/conftest.py: failed asserts in the suite then show their values
    import pytest

    pytest.register_assert_rewrite("transferkit.testing")

then ``pytest tests/test_conformance.py``. The suite needs pytest (not a dependency of
transferkit itself). Every test is a method of the class, so ``-k``, ``-x`` and
``--deselect`` work as usual; a test that does not apply to the subject (see the flags of
:class:`Subject`) is skipped with a reason that names the flag. A subject that can only
be made at run time (a model written to a temporary directory, say) comes from a fixture
that overrides :meth:`AdapterConformance.make_subject`::

    class TestMyTextEncoder(AdapterConformance):
        @pytest.fixture(name="subject")
        def make_subject(self, tiny_model_dir):  # a fixture of yours that saves one
            return Subject(backbone=f"myfw:{tiny_model_dir}", reference=False)

The tests are small (24 examples, 16x16 images, a few epochs) and check behaviour users
rely on: shapes, repeatable seeded training that learns, frozen layer groups that do not
move and hold no optimizer state, feature caching that changes nothing, every freeze
policy and optimizer, regression heads, save/load, early stopping, exact resume from a
checkpoint, and the same errors for the same mistakes in every framework.

The reference architecture ``cnn``
----------------------------------

A new *framework* gets the full suite, cross-framework parity included, by realising the
small reference architecture ``cnn`` (``transferkit.reference.REFERENCE["cnn"]``; the
built-in realisations are ``plugins/transferkit_{torch,flax,keras}/architectures.py``)
and registering it with ``transferkit.reference.reference_spec("myfw", "cnn",
"myfw_pkg.architectures:cnn")``, which gives the backbone ``myfw:cnn`` its metadata.
The network maps normalised channels-last float32 images (core feeds ``(x - 0.5) / 0.5``)
to 128 features:

* four stages ``stage1`` .. ``stage4``, each a 3x3 convolution without bias (padding 1 on
  every side, as PyTorch's ``padding=1``; strides 1, 2, 2, 2; 32, 64, 128, 128 output
  channels), BatchNorm (epsilon 1e-5, PyTorch momentum 0.1, i.e. 0.9 in Keras/Flax
  terms) and ReLU; then the global average over height and width;
* one layer group per stage, input to output: ``stage1``, ``stage2``, ``stage3``,
  ``stage4``, each owning the parameters under its own name;
* canonical parameter names and PyTorch layouts, per stage ``N``:
  ``stageN.conv.weight`` ``(out, in, 3, 3)``, ``stageN.bn.weight``, ``stageN.bn.bias``,
  ``stageN.bn.running_mean``, ``stageN.bn.running_var``. The engine's ``get_weights``
  prefixes them with ``backbone.``; the head is ``head.out.weight|bias`` (and
  ``head.hidden.<i>.weight|bias``);
* pretrained weights: ``transferkit/pretrained/cnn.safetensors``, shipped with
  transferkit, holding exactly those 20 arrays (trained on digits 0-4); the spec's
  weight source finds it, and core loads it into every realisation unchanged.

One thing the suite asks of an engine beyond :class:`transferkit.Engine`'s contract: the
keys of ``training_state()`` name the parameter each optimizer slot belongs to (its
canonical name or native path, as ``opt.backbone.stage4.conv.weight.exp_avg`` or
``opt.[0].mu['backbone']['stage4']...``), so that frozen groups can be seen to hold none.

A third-party *backbone* for an existing framework (``torch:mynet``) runs the suite with
``reference=False`` (and ``pretrained=False`` if it has no weights).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

import transferkit as tk
from transferkit import errors
from transferkit import weights as wio
from transferkit.catalog import BackboneSpec
from transferkit.plugins import registry

__all__ = ["AdapterConformance", "Subject", "PARITY_FRAMEWORK", "SENTENCES"]

#: The framework whose realisations of the reference architectures the parity test
#: compares against: canonical names and layouts are its own (see ``reference.py``).
PARITY_FRAMEWORK = "torch"

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
            it must train exactly as on the ``PARITY_FRAMEWORK`` realisation. That test
            is skipped when the parity framework is not installed, and for the parity
            framework's own realisation.
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


class AdapterConformance:
    """The conformance suite. Subclass it with a ``subject`` and pytest runs it.

    The class itself is not collected (``__test__ = False``); every subclass is, unless it
    sets ``__test__ = False`` itself (an intermediate base).
    """

    __test__ = False
    #: the backbone under test; or override :meth:`make_subject`
    subject: ClassVar[Subject]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__test__" not in cls.__dict__:
            cls.__test__ = True

    # --- fixtures --------------------------------------------------------------------
    @pytest.fixture(name="subject")
    def make_subject(self) -> Subject:
        """The :class:`Subject` every test receives: the class's ``subject``. Override
        this fixture (keeping ``name="subject"``) to make the subject from other fixtures."""
        subject = getattr(type(self), "subject", None)
        if not isinstance(subject, Subject):
            pytest.fail(
                f"{type(self).__name__} names no backbone to test: set the class attribute "
                "subject = Subject(backbone='framework:name', ...)",
                pytrace=False,
            )
        return subject

    @pytest.fixture
    def examples(self, subject: Subject) -> tuple[Any, np.ndarray]:
        """24 inputs of the subject's kind in 3 balanced classes."""
        return subject.inputs(24, seed=0), np.arange(24) % 3

    @staticmethod
    def model(subject: Subject, num_classes: int = 3, weights: Any = None, **head: Any):
        return subject.build(tk.Classifier(num_classes, **head), weights=weights)

    # --- building and inference ------------------------------------------------------
    def test_build_predict_features_shapes(self, subject, examples):
        x, _ = examples
        model = self.model(subject)
        assert model.backbone.framework == subject.framework and model.native is not None
        p = model.predict(x)
        assert p.shape == (24, 3) and np.allclose(p.sum(1), 1.0, atol=1e-5)
        assert model.features(x).shape == (24, model.spec.feature_size)
        assert model.logits(x[:5]).dtype == np.float32

    def test_pretrained_weights_load_and_differ_from_scratch(self, subject, examples):
        if not subject.pretrained:
            pytest.skip("subject.pretrained is False: no pretrained weights to load")
        x, _ = examples
        pre = self.model(subject, weights="pretrained")
        raw = self.model(subject, weights=None)
        spec = pre.spec
        expected = spec.weights.description if spec.weights is not None else spec.short_name
        assert pre.weights_origin == expected and raw.weights_origin is None
        assert not np.allclose(pre.features(x), raw.features(x))

    # --- training --------------------------------------------------------------------
    def test_fit_is_repeatable_and_learns(self, subject, examples):
        x, y = examples
        data = tk.Dataset(subject.separable(x, y), y)
        runs = []
        for _ in range(2):
            model = self.model(subject)
            h = tk.fit(
                model,
                data,
                val=data,
                freeze=subject.policy(),
                epochs=6,
                lr=3e-3,
                batch_size=8,
                seed=3,
                verbose=0,
            )
            runs.append((model.engine.get_weights(), h))
        w1, h1 = runs[0]
        w2, _ = runs[1]
        assert w1.keys() == w2.keys()
        assert all(np.array_equal(w1[k], w2[k]) for k in w1)
        assert len(h1) == 6 and h1["loss"][-1] < h1["loss"][0]
        assert h1["val_accuracy"][-1] > 0.6
        assert {"loss", "lr", "val_loss", "val_accuracy", "val_macro_f1"} <= set(h1.history)

    def test_frozen_groups_do_not_change_and_hold_no_optimizer_state(self, subject, examples):
        if not subject.trains_backbone:
            pytest.skip("subject.trains_backbone is False: no backbone group trains")
        groups = subject.spec.groups
        if len(groups) < 2:
            pytest.skip("the backbone has one layer group: none stays frozen under TrainLast(1)")
        x, y = examples
        model = self.model(subject, weights=subject.weights)
        frozen, trained = {g.name for g in groups[:-1]}, groups[-1].name
        before = model.engine.get_weights()
        tk.fit(
            model,
            tk.Dataset(x, y),
            freeze=tk.freeze.TrainLast(1),
            epochs=2,
            batch_size=8,
            verbose=0,
            cache_features=False,
        )
        after = model.engine.get_weights()
        assert before.keys() == after.keys()
        for k in before:
            same = np.array_equal(before[k], after[k])
            group = "head" if k.startswith("head.") else model.spec.group_of(k[len("backbone.") :])
            if group in frozen:
                assert same, f"{k} is frozen but changed (BatchNorm statistics included)"
            else:
                assert not same, f"{k} trains (group {group!r}) but did not change"
        state = model.engine.training_state()
        held = [k for k in state for g in groups if g.name in frozen and _names_group(k, g)]
        assert not held, f"frozen groups hold optimizer state: {held[:5]}"
        assert any(_names_group(k, groups[-1]) for k in state), (
            f"training_state() names no parameter of the trained group {trained!r} "
            f"({sorted(state)[:5]}...); name optimizer slots after their parameters so that "
            "frozen groups can be seen to hold none"
        )

    def test_feature_caching_matches_the_uncached_run(self, subject, examples):
        x, y = examples
        outs = []
        for cache in (True, False):
            model = self.model(subject, weights=subject.weights)
            calls = []
            original = model.engine.features
            model.engine.features = lambda b, _o=original, _c=calls: _c.append(len(b)) or _o(b)
            tk.fit(
                model,
                tk.Dataset(x, y),
                freeze=tk.freeze.FeatureExtraction(),
                epochs=5,
                batch_size=8,
                verbose=0,
                cache_features=cache,
                seed=1,
            )
            # cached: every example through the backbone once; uncached: never through
            # features() (the full forward pass trains the head)
            assert (sum(calls) == 24) if cache else not calls, calls
            outs.append(model.predict(x))
        np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)

    def test_gradual_unfreeze_and_lr_decay_run(self, subject, examples):
        if not subject.trains_backbone:
            pytest.skip("subject.trains_backbone is False: gradual unfreezing trains the backbone")
        x, y = examples
        model = self.model(subject, weights=subject.weights)
        n = len(model.spec.groups)
        h = tk.fit(
            model,
            tk.Dataset(x, y),
            freeze=tk.freeze.GradualUnfreeze(lr_decay=0.5),
            epochs=n,
            batch_size=8,
            optimizer="adamw",
            weight_decay=0.01,
            warmup_steps=2,
            verbose=0,
        )
        assert h["trainable_groups"] == list(range(n))

    @pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
    def test_optimizers(self, subject, examples, optimizer):
        x, y = examples
        model = self.model(subject)
        h = tk.fit(
            model,
            tk.Dataset(x, y),
            freeze=subject.policy(),
            epochs=2,
            optimizer=optimizer,
            lr=1e-2,
            verbose=0,
        )
        assert np.isfinite(h["loss"]).all()

    @pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
    def test_a_linear_probe_trains_identically_to_the_reference(self, subject, optimizer, tmp_path):
        # Same backbone weights, same head initialisation, the same optimizer semantics, the
        # scheduled learning rate passed per step: the frameworks agree step for step.
        if not subject.reference:
            pytest.skip("subject.reference is False: no reference architecture to compare with")
        arch = subject.spec.arch
        assert arch is not None, (
            f"{subject.backbone!r} declares no reference architecture (spec.arch); "
            "register it with transferkit.reference.reference_spec or set reference=False"
        )
        if subject.framework == PARITY_FRAMEWORK:
            pytest.skip(f"subject.reference: {subject.backbone!r} is the reference itself")
        reference = f"{PARITY_FRAMEWORK}:{arch}"
        reg = registry()
        if PARITY_FRAMEWORK not in reg.frameworks or reg.frameworks[PARITY_FRAMEWORK].missing():
            pytest.skip(f"subject.reference: the reference {reference!r} is not installed")
        train, test = tk.datasets.digits_transfer(shots=5, seed=0)
        head = tk.Classifier(5)
        ref = tk.build(reference, head=head, weights=subject.weights, seed=3)
        if subject.pretrained:
            model = tk.build(subject.backbone, head=head, seed=3, **subject.options)
        else:  # the reference's random backbone, through the canonical names
            backbone = {k: v for k, v in ref.engine.get_weights().items() if k[:9] == "backbone."}
            wio.save(backbone, tmp_path / "backbone.safetensors")
            model = tk.build(
                subject.backbone,
                head=head,
                weights=tmp_path / "backbone.safetensors",
                seed=3,
                **subject.options,
            )
        probs = []
        for m in (ref, model):
            tk.fit(
                m,
                train,
                freeze=tk.freeze.FeatureExtraction(),
                epochs=8,
                batch_size=8,
                optimizer=optimizer,
                weight_decay=0.01,
                lr=1e-2,
                warmup_steps=3,
                verbose=0,
            )
            probs.append(m.predict(test.x))
        assert np.abs(probs[0] - probs[1]).max() < 1e-4

    def test_regressor(self, subject, examples):
        x, _ = examples
        target = _targets(x)
        model = subject.build(tk.Regressor(1))
        tk.fit(model, tk.Dataset(x, target), freeze=subject.policy(), epochs=3, verbose=0)
        scores = model.evaluate(tk.Dataset(x, target))
        assert set(scores) == {"loss", "mse", "mae"} and model.predict(x).shape == (24, 1)
        assert all(np.isfinite(v) for v in scores.values())

    # --- persistence -----------------------------------------------------------------
    def test_save_load_round_trip(self, subject, examples, tmp_path):
        x, y = examples
        model = self.model(subject, hidden=(8,))
        tk.fit(model, tk.Dataset(x, y), freeze=subject.policy(), epochs=1, verbose=0)
        model.save(tmp_path / "m")
        cfg = json.loads((tmp_path / "m" / "config.json").read_text())
        assert cfg["backbone"] == subject.backbone and cfg["head"]["hidden"] == [8]
        again = tk.load(tmp_path / "m")
        np.testing.assert_allclose(again.predict(x), model.predict(x), atol=1e-6)
        assert again.history and again.history[0]["epoch"] == 1

    def test_early_stopping_restores_best(self, subject, examples):
        x, y = examples
        model = self.model(subject)
        stop = tk.EarlyStopping(monitor="val_loss", patience=1)
        val = tk.Dataset(_reverse(x), (y[::-1] + 1) % 3)
        h = tk.fit(
            model,
            tk.Dataset(x, y),
            val=val,
            freeze=subject.policy(),
            epochs=30,
            lr=1e-2,
            early_stopping=stop,
            verbose=0,
        )
        assert len(h) < 30
        assert model.evaluate(val)["loss"] == pytest.approx(min(h["val_loss"]), rel=1e-4)

    def test_exact_resume(self, subject, examples, tmp_path):
        x, y = examples
        data = tk.Dataset(x, y)
        policy = tk.freeze.GradualUnfreeze() if subject.trains_backbone else subject.policy()
        opts = dict(epochs=4, batch_size=8, lr=1e-2, seed=5, verbose=0, freeze=policy)
        straight = self.model(subject, dropout=0.3)
        tk.fit(straight, data, **opts)

        class Interrupt(tk.Callback):  # the run dies after its second epoch
            def on_epoch_end(self, trainer, epoch, logs):
                trainer.stop = epoch == 1

        first = self.model(subject, dropout=0.3)
        tk.fit(first, data, callbacks=[Interrupt()], checkpoint_dir=tmp_path / "ckpt", **opts)
        assert len(first.history) == 2
        resumed = self.model(subject, dropout=0.3)
        h = tk.fit(resumed, data, resume_from=tmp_path / "ckpt", **opts)
        assert [e["epoch"] for e in h.epochs] == [1, 2, 3, 4]
        a, b = straight.engine.get_weights(), resumed.engine.get_weights()
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)

    # --- bad input: the same errors in every framework, raised before framework code ----
    def test_bad_inputs(self, subject, examples):
        x, y = examples
        model = self.model(subject)
        with pytest.raises(errors.LabelError, match=r"outside \[0, 3\)"):
            tk.fit(model, tk.Dataset(x, y + 1), verbose=0)
        with pytest.raises(errors.LabelError, match="missing"):
            tk.fit(model, tk.Dataset(x), verbose=0)
        if subject.spec.input_kind == "text":
            with pytest.raises(errors.EmptyDataError, match=r"train\.x\[1\] is an empty string"):
                tk.fit(model, tk.Dataset([x[0], " ", *x[2:]], y), verbose=0)
            with pytest.raises(errors.InputDTypeError, match=r"x\[1\] is int 3, not a string"):
                model.predict([x[0], 3])
            with pytest.raises(errors.InputDTypeError, match="must be a list of strings, got str"):
                model.predict(x[0])
            with pytest.raises(errors.EmptyDataError, match="x is empty"):
                model.predict([])
            return
        shape = subject.shape
        nan = x.copy()
        nan.flat[0] = np.inf
        with pytest.raises(errors.NonFiniteInputError):
            tk.fit(model, tk.Dataset(nan, y), verbose=0)
        # images: a channel count no image has (not 1, 3 or the backbone's); vectors: a
        # wrong length
        last = next(c for c in range(shape[-1] + 1, shape[-1] + 4) if c not in (1, 3))
        with pytest.raises(errors.InputShapeError):
            model.predict(np.zeros((2, *shape[:-1], last), np.float32))
        with pytest.raises(errors.InputDTypeError):
            model.predict(np.array([["a", "b"]]))
        with pytest.raises(errors.EmptyDataError):
            model.predict(np.zeros((0, *shape), np.float32))

    def test_weights_that_do_not_match(self, subject, tmp_path):
        good = self.model(subject).engine.get_weights()
        arrays = {k[9:]: v for k, v in good.items() if k.startswith("backbone.")}
        spec = subject.spec
        by_group = {g.name: [k for k in arrays if g.owns(k)] for g in spec.groups}
        # a weight of the first group cut short, and one of the second group (a BatchNorm
        # statistic where there is one: statistics are weights a file must hold too) left out
        first = [k for k in by_group[spec.groups[0].name] if arrays[k].shape[:1] > (1,)]
        cut = max(first, key=lambda k: arrays[k].ndim)  # a kernel, where the group has one
        other = [k for k in by_group[spec.groups[min(1, len(spec.groups) - 1)].name] if k != cut]
        dropped = next((k for k in other if k.endswith("running_mean")), other[0])
        model_shape = arrays[cut].shape
        arrays[cut] = arrays[cut][: 4 if model_shape[0] > 4 else 1]
        arrays.pop(dropped)
        arrays["extra.weight"] = np.zeros(3, np.float32)
        wio.save(arrays, tmp_path / "bad.safetensors")
        with pytest.raises(errors.WeightsError) as e:
            self.model(subject, weights=tmp_path / "bad.safetensors")
        msg = str(e.value)
        assert dropped in msg and "extra.weight" in msg
        assert f"{cut}: file {arrays[cut].shape} vs model {model_shape}" in msg
        (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
        with pytest.raises(errors.WeightsError, match="corrupt"):
            self.model(subject, weights=tmp_path / "junk.safetensors")
        with pytest.raises(errors.WeightsError, match="does not exist"):
            self.model(subject, weights=tmp_path / "nope.safetensors")

    def test_failed_fit_and_bad_dirs_lose_nothing(self, subject, examples, tmp_path):
        x, y = examples
        model = self.model(subject)
        model.save(tmp_path / "m")
        before = _files(tmp_path / "m")
        with pytest.raises(errors.ModelDirError, match="not a training checkpoint"):
            tk.fit(model, tk.Dataset(x, y), epochs=1, verbose=0, checkpoint_dir=tmp_path / "m")
        with pytest.raises(errors.TrainingError, match="became"):
            tk.fit(
                model,
                tk.Dataset(x, y),
                freeze=subject.policy(),
                epochs=3,
                lr=1e38,
                batch_size=8,
                optimizer="sgd",
                verbose=0,
                checkpoint_dir=tmp_path / "ckpt",
            )
        assert _files(tmp_path / "m") == before
        with pytest.raises(errors.ModelDirError, match="does not exist"):
            tk.load(tmp_path / "missing")
        (tmp_path / "m" / "config.json").write_text("{not json")
        with pytest.raises(errors.ModelDirError, match="corrupt"):
            tk.load(tmp_path / "m")
        (tmp_path / "m" / "model.safetensors").unlink()
        with pytest.raises(errors.ModelDirError, match="model.safetensors is missing"):
            tk.load(tmp_path / "m")
