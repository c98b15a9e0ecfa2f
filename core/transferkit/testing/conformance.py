"""The conformance tests, as methods of one base class that pytest collects per subclass."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np
import pytest

import transferkit as tk
from transferkit import errors
from transferkit import weights as wio

from .groups import GroupFeaturesConformance
from .methods import MethodConformance
from .norms import BatchNormConformance
from .subject import Subject, _files, _names_group, _reverse, _targets, reference_pair


class AdapterConformance(MethodConformance, BatchNormConformance, GroupFeaturesConformance):
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
        train, test = tk.datasets.digits_transfer(shots=5, seed=0)
        ref, model = reference_pair(subject, tk.Classifier(5), tmp_path)
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
