"""Conformance tests of the fine-tuning methods (regularisers) every engine realises."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import transferkit as tk
from transferkit import weights as wio

from .subject import Subject, reference_pair, sgd_pair

STATISTICS = tk.regularizers.STATISTICS


class MethodConformance:
    """Mixed into :class:`~transferkit.testing.AdapterConformance`; not collected alone."""

    __test__ = False

    def test_the_penalty_is_in_the_loss_and_logged(self, subject: Subject, examples: Any):
        x, y = examples
        model = subject.build(tk.Classifier(3), weights=None)
        start = model.get_weights()
        reg = tk.regularizers.L2SP(alpha=0.3, beta=0.7)
        seen = []

        class Batches(tk.Callback):
            def on_batch_end(self, trainer, batch, logs):
                seen.append((float(logs["loss"]), float(logs["reg_loss"])))

        h = tk.fit(
            model, tk.Dataset(x, y), epochs=2, batch_size=8, lr=1e-2, seed=0, verbose=0,
            freeze=subject.policy(), regularizer=reg, callbacks=[Batches()],
        )  # fmt: skip
        # at the first step the backbone sits on its anchor: only the head's term is left
        head = sum(float(np.sum(np.square(v))) for k, v in start.items() if k.startswith("head."))
        assert seen[0][1] == pytest.approx(0.7 / 2 * head, rel=1e-5)
        assert len(seen) == 6 and all(r > 0 for _, r in seen)
        per_epoch = [np.mean(seen[i : i + 3], axis=0) for i in (0, 3)]
        assert h["loss"] == pytest.approx([e[0] for e in per_epoch], rel=1e-5)
        assert h["reg_loss"] == pytest.approx([e[1] for e in per_epoch], rel=1e-5)

    def test_l2sp_pulls_the_backbone_toward_its_start(self, subject: Subject, examples: Any):
        if not subject.trains_backbone:
            pytest.skip("subject.trains_backbone is False: no backbone weights move")
        x, y = examples
        moved = []
        for alpha in (0.0, 50.0):
            model = subject.build(tk.Classifier(3), weights=None)
            start = model.get_weights()
            tk.fit(
                model, tk.Dataset(x, y), epochs=3, batch_size=8, lr=1e-2, seed=0, verbose=0,
                optimizer="sgd", regularizer=tk.regularizers.L2SP(alpha=alpha, beta=0.0),
            )  # fmt: skip
            end = model.get_weights()
            moved.append(
                sum(
                    float(np.sum(np.square(end[k] - start[k])))
                    for k in start
                    if k.startswith("backbone.") and not k.endswith(STATISTICS)
                )
            )
        assert 0 < moved[1] < 0.5 * moved[0]

    def test_l2sp_trains_identically_to_the_reference(self, subject: Subject, tmp_path):
        rng = np.random.default_rng(0)
        x = subject.inputs(16, seed=1)
        y = rng.permutation(np.arange(16) % 5)
        ref, model = reference_pair(subject, tk.Classifier(5), tmp_path)
        weights = []
        for m in (ref, model):
            tk.fit(
                m, tk.Dataset(x, y), epochs=2, batch_size=8, lr=5e-2, seed=2, verbose=0,
                optimizer="sgd", schedule="constant", freeze=subject.policy(),
                regularizer=tk.regularizers.L2SP(alpha=0.5, beta=0.1),
            )  # fmt: skip
            weights.append(m.get_weights())
        a, b = weights
        for k in a:  # BatchNorm running statistics included
            np.testing.assert_allclose(b[k], a[k], atol=2e-6, err_msg=k)

    @pytest.mark.parametrize("steps, tolerance", [(1, 1e-6), (5, 1e-5)])
    def test_sgd_trajectory_matches_the_reference(
        self, subject: Subject, tmp_path, steps, tolerance
    ):
        # 8x8 images: the last stages see 1x1 feature maps; batches of 4: where the
        # BatchNorm conventions (biased or unbiased running variance) differ by 4/3
        # batchnorm="train": the running statistics' own update (norms.py tests the rest)
        a, b = sgd_pair(subject, tmp_path, subject.inputs(4 * steps, seed=2), 1, "train")
        for k in a:
            np.testing.assert_allclose(b[k], a[k], atol=tolerance, rtol=0, err_msg=k)

    def test_a_resumed_run_pulls_toward_the_same_anchor(self, subject: Subject, examples, tmp_path):
        x, y = examples
        data = tk.Dataset(x, y)
        anchor = tmp_path / "anchor.safetensors"
        far = subject.build(tk.Classifier(3), weights=None, seed=11)
        wio.save(far.get_weights(), anchor)  # another point than where the model starts
        opts = dict(
            epochs=3, batch_size=8, lr=1e-2, seed=5, verbose=0, freeze=subject.policy(),
            regularizer=tk.regularizers.L2SP(alpha=1.0, beta=0.1, anchor=anchor),
        )  # fmt: skip

        def fresh():
            return subject.build(tk.Classifier(3), weights=None, seed=7)

        straight = fresh()
        tk.fit(straight, data, **opts)

        class Interrupt(tk.Callback):
            def on_epoch_end(self, trainer, epoch, logs):
                trainer.stop = epoch == 0

        first = fresh()
        tk.fit(first, data, callbacks=[Interrupt()], checkpoint_dir=tmp_path / "ckpt", **opts)
        resumed = fresh()
        tk.fit(resumed, data, resume_from=tmp_path / "ckpt", **opts)
        a, b = straight.get_weights(), resumed.get_weights()
        for k in a:
            np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)

    def test_adam_agrees_in_loss_and_predictions(self, subject: Subject, tmp_path):
        # Adam divides by the root of the squared gradient: a weight whose gradient is
        # rounding noise gets a full-size update of either sign, so weights agree only
        # statistically (measured: up to 4e-4 here); the losses and predictions agree.
        x = subject.inputs(40, seed=3)
        y = np.arange(40) % 3
        ref, model = reference_pair(subject, tk.Classifier(3), tmp_path)
        curves, probs = [], []
        for m in (ref, model):
            losses: list[float] = []

            class Curve(tk.Callback):
                def on_batch_end(self, trainer, batch, logs, _l=losses):
                    _l.append(float(logs["loss"]))

            tk.fit(
                m, tk.Dataset(x, y), epochs=1, batch_size=8, lr=1e-3, seed=0, verbose=0,
                optimizer="adam", schedule="constant", freeze=subject.policy(),
                callbacks=[Curve()],
            )  # fmt: skip
            curves.append(losses)
            probs.append(m.predict(x))
        np.testing.assert_allclose(curves[1], curves[0], atol=1e-4)
        np.testing.assert_allclose(probs[1], probs[0], atol=1e-4)

    def test_the_lr_range_test_runs_the_real_step_and_restores_the_model(
        self, subject: Subject, examples: Any
    ):
        x, y = examples
        model = subject.build(tk.Classifier(3), weights=subject.weights)
        before = model.get_weights()
        finder = tk.find_lr(
            model, tk.Dataset(x, y), freeze=subject.policy(), start=1e-5, end=1.0, steps=12,
            batch_size=8,
        )  # fmt: skip
        after = model.get_weights()
        for k in before:  # exactly, BatchNorm statistics included
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)
        lrs = np.asarray(finder.lrs)
        assert lrs[0] == pytest.approx(1e-5) and np.all(np.diff(lrs) > 0)
        assert np.all(np.isfinite(finder.raw_losses)) and len(finder.raw_losses) == len(lrs)
        h = tk.fit(
            model, tk.Dataset(x, y), freeze=subject.policy(), lr="auto", epochs=1,
            batch_size=8, verbose=0,
        )  # fmt: skip
        assert h.lr_finder is not None and len(h.lr_finder.lrs) > 3
        chosen = h.lr_finder.suggestion
        assert chosen is not None and 1e-7 <= chosen <= 10 and h["lr"][0] <= chosen

    def test_a_search_chooses_by_validation_and_refits(self, subject: Subject, examples: Any):
        pytest.importorskip("optuna", reason="tk.search needs optuna (transferkit[search])")
        x, y = examples
        x = subject.separable(x, y)
        fixed = {
            "backbone": subject.backbone, "epochs": 2, "batch_size": 8,
            "freeze": "full" if subject.trains_backbone else "features",
            "weights": "pretrained" if subject.pretrained else "none",
        }  # fmt: skip
        if subject.input_shape is not None:
            fixed["input_shape"] = list(subject.input_shape)
        result = tk.search(
            tk.Dataset(x[:18], y[:18]), {"lr": [1e-3, 3e-2]}, val=tk.Dataset(x[18:], y[18:]),
            fixed=fixed, verbose=0,
        )  # fmt: skip
        values = {t["params"]["lr"]: t["value"] for t in result.trials}
        assert set(values) == {1e-3, 3e-2} and all(t["state"] == "COMPLETE" for t in result.trials)
        assert result.best_value == max(values.values())
        assert values[result.best_params["lr"]] == result.best_value
        assert result.best_model.framework == subject.framework
        assert result.best_model.predict(x[:4]).shape == (4, 3)
