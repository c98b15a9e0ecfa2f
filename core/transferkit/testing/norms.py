"""Conformance tests of ``tk.fit(batchnorm=...)``: the same semantics in every engine."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import transferkit as tk

from .subject import Subject, floor_tolerance, sgd_pair

MODES = ("train", "frozen", "recalibrate")


def _statistics(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in weights.items() if k.endswith((".running_mean", ".running_var"))}


def _conv3x3(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """A 3x3 convolution, stride 1, padding 1, no bias: NHWC input, OIHW weights."""
    n, h, wd, _ = x.shape
    p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, wd, w.shape[0]))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nhwc,oc->nhwo", p[:, i : i + h, j : j + wd], w[:, :, i, j])
    return out


class BatchNormConformance:
    """Mixed into :class:`~transferkit.testing.AdapterConformance`; not collected alone."""

    __test__ = False

    @staticmethod
    def _has_batchnorm(model: tk.Model) -> bool:
        return bool(_statistics(model.get_weights()))

    @pytest.mark.parametrize("mode", MODES)
    def test_batchnorm_modes_match_the_reference(self, subject: Subject, tmp_path, mode):
        # SGD, 2 epochs of 3 batches on 8x8 images (1x1 maps in the last stages): the
        # running statistics and every weight agree with the reference realisation within
        # 1e-5, or within 3x the reference's own chaos floor where that is larger: the
        # variance of 4 values on a 1x1 map after 6 steps moves by 1.6e-5 in PyTorch itself
        # when its inputs move by one rounding (measured on a 2-core x86 machine)
        a, b, c = sgd_pair(subject, tmp_path, subject.inputs(12, seed=4), 2, mode, control=True)
        tolerance = floor_tolerance(a, c, 1e-5, 3.0)
        for k in a:
            np.testing.assert_allclose(b[k], a[k], atol=tolerance[k], rtol=0, err_msg=k)

    def test_frozen_batchnorm_learns_scale_and_shift_only(self, subject: Subject, examples):
        x, y = examples
        model = subject.build(tk.Classifier(3), weights=subject.weights)
        if not self._has_batchnorm(model) or not subject.trains_backbone:
            pytest.skip("the subject has no BatchNorm layer that trains")
        start = model.get_weights()
        tk.fit(
            model, tk.Dataset(x, y), epochs=2, batch_size=8, lr=1e-2, seed=0, verbose=0,
            batchnorm="frozen",
        )  # fmt: skip
        end = model.get_weights()
        for k, v in _statistics(start).items():
            np.testing.assert_array_equal(end[k], v, err_msg=f"{k} changed under 'frozen'")
        scales = [k[: -len("running_mean")] + "weight" for k in _statistics(start)]
        assert all(not np.array_equal(end[k], start[k]) for k in scales if k in start)

    def test_recalibrated_statistics_are_the_training_data_averages(
        self, subject: Subject, examples
    ):
        if subject.spec.arch != "cnn" or subject.spec.input_kind != "image":
            pytest.skip("the expected statistics are computed for the reference 'cnn'")
        x, y = examples  # 24 examples, batches of 8: each batch weighs a third
        model = subject.build(tk.Classifier(3), weights=subject.weights)
        tk.fit(
            model, tk.Dataset(x, y), epochs=2, batch_size=8, lr=1e-2, seed=0, verbose=0,
            batchnorm="recalibrate",
        )  # fmt: skip
        w = model.get_weights()
        z = _conv3x3((np.asarray(x, np.float64) - 0.5) / 0.5, w["backbone.stage1.conv.weight"])
        z = z.reshape(3, -1, z.shape[-1])  # 3 batches of 8 images, in order
        mean = z.mean(axis=1).mean(axis=0)
        var = z.var(axis=1, ddof=1).mean(axis=0)
        np.testing.assert_allclose(w["backbone.stage1.bn.running_mean"], mean, atol=1e-4)
        np.testing.assert_allclose(w["backbone.stage1.bn.running_var"], var, rtol=1e-4)

    def test_modes_are_accepted_without_batchnorm(self, subject: Subject, examples: Any):
        x, y = examples
        outs = []
        for mode in MODES:
            model = subject.build(tk.Classifier(3), weights=subject.weights)
            if self._has_batchnorm(model):
                pytest.skip("the subject has BatchNorm layers (tested above)")
            tk.fit(
                model, tk.Dataset(x, y), epochs=1, batch_size=8, lr=1e-3, seed=0, verbose=0,
                freeze=subject.policy(), batchnorm=mode,
            )  # fmt: skip
            outs.append(model.get_weights())
        for other in outs[1:]:
            for k, v in outs[0].items():
                np.testing.assert_array_equal(other[k], v, err_msg=k)

    def test_a_resumed_recalibrating_run_ends_where_the_straight_run_does(
        self, subject: Subject, examples, tmp_path
    ):
        x, y = examples
        data = tk.Dataset(x, y)
        opts = dict(
            epochs=3, batch_size=8, lr=1e-2, seed=5, verbose=0, freeze=subject.policy(),
            batchnorm="recalibrate",
        )  # fmt: skip
        straight = subject.build(tk.Classifier(3), weights=subject.weights)
        tk.fit(straight, data, **opts)

        class Interrupt(tk.Callback):
            def on_epoch_end(self, trainer, epoch, logs):
                trainer.stop = epoch == 0

        first = subject.build(tk.Classifier(3), weights=subject.weights)
        tk.fit(first, data, callbacks=[Interrupt()], checkpoint_dir=tmp_path / "ckpt", **opts)
        resumed = subject.build(tk.Classifier(3), weights=subject.weights)
        tk.fit(resumed, data, resume_from=tmp_path / "ckpt", **opts)
        assert resumed.batchnorm == "recalibrate"
        a, b = straight.get_weights(), resumed.get_weights()
        for k in a:
            np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)
