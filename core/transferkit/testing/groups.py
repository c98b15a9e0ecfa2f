"""Conformance tests of ``Engine.group_features``: one pooled vector per layer group, the
same in every realisation of an architecture, and no side effect on the model."""

from __future__ import annotations

from typing import Any

import numpy as np

import transferkit as tk

from .subject import Subject, reference_pair


def _group_features(model: tk.Model, x: Any) -> dict[str, np.ndarray]:
    return model.engine.group_features(model.prepare(x))


class GroupFeaturesConformance:
    """Mixed into :class:`~transferkit.testing.AdapterConformance`; not collected alone."""

    __test__ = False

    def test_group_features_are_vectors_per_group_ending_in_the_features(
        self, subject: Subject, examples: Any
    ):
        x, _ = examples
        model = subject.build(tk.Classifier(3), weights=subject.weights)
        groups = _group_features(model, x)
        assert list(groups) == list(model.spec.group_names)
        for name, v in groups.items():
            assert isinstance(v, np.ndarray) and v.dtype == np.float32, (name, type(v))
            assert v.ndim == 2 and len(v) == len(x) and v.shape[1] > 0, (name, v.shape)
            assert np.isfinite(v).all(), f"group {name!r}: NaN or infinite values"
        last = groups[model.spec.group_names[-1]]
        np.testing.assert_allclose(last, model.features(x), atol=1e-5, rtol=0)

    def test_group_features_match_the_reference(self, subject: Subject, tmp_path):
        # every group's vector, not only the last, is the same tensor in every realisation
        x = subject.inputs(6, seed=2)
        ref, model = reference_pair(subject, tk.Classifier(3), tmp_path)
        expected, got = _group_features(ref, x), _group_features(model, x)
        assert list(got) == list(expected)
        for name, v in expected.items():
            assert got[name].shape == v.shape, (name, got[name].shape, v.shape)
            np.testing.assert_allclose(got[name], v, atol=1e-4, rtol=0, err_msg=name)

    def test_group_features_change_nothing_and_leave_a_fit_unchanged(
        self, subject: Subject, examples: Any
    ):
        x, y = examples
        changed: list[str] = []

        class Probe(tk.Callback):  # between training steps, in training mode
            def on_batch_end(self, trainer, batch, logs):
                before = trainer.model.get_weights()
                _group_features(trainer.model, x)
                after = trainer.model.get_weights()
                changed.extend(k for k in before if not np.array_equal(before[k], after[k]))

        fitted = []
        for probe in (False, True):
            model = subject.build(tk.Classifier(3), weights=subject.weights)
            if probe:
                before = model.get_weights()
                _group_features(model, x)
                after = model.get_weights()
                changed.extend(k for k in before if not np.array_equal(before[k], after[k]))
            tk.fit(
                model, tk.Dataset(x, y), epochs=1, batch_size=8, lr=1e-2, seed=0, verbose=0,
                freeze=subject.policy(), callbacks=[Probe()] if probe else [],
            )  # fmt: skip
            fitted.append(model.get_weights())
        assert not changed, f"group_features changed {sorted(set(changed))[:5]}"
        plain, probed = fitted
        for k, v in plain.items():
            np.testing.assert_array_equal(probed[k], v, err_msg=f"{k} after probing")

    def test_rank_scores_the_subject_and_its_layer_groups(self, subject, examples):
        x, y = examples
        x = subject.separable(x, y)
        model = subject.build(tk.Classifier(3), weights=subject.weights)
        ranking = tk.rank([model], tk.Dataset(x, y), metric="logme", layers=True, verbose=0)
        (row,) = ranking.rows
        assert ranking.best == subject.spec.name == row.name
        assert row.framework == subject.framework and np.isfinite(row.score)
        assert list(row.layers) == list(subject.spec.group_names)
        assert row.score == row.layers[subject.spec.group_names[-1]]
        assert row.suggested_freeze.startswith(("TrainLast(", "FeatureExtraction()"))
        knn = tk.rank([model], tk.Dataset(x, y), metric="knn", verbose=0)
        assert 0.0 <= knn.rows[0].score <= 1.0
