"""The frozen-backbone fit with default options solves the head to its optimum."""

import numpy as np
import pytest
from scipy.optimize import check_grad

import transferkit as tk
from transferkit import probe


def _problem(seed=0, n=40, d=6, k=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, k, n)


def test_the_linear_probe_is_scikit_learns_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    f, y = _problem()
    head = tk.Classifier(3)
    sol = probe.solve(head, f, y, head.initial_weights(6, 0))
    ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(f, y)
    assert sol.converged
    np.testing.assert_allclose(sol.weights["head.out.weight"], ref.coef_, atol=1e-5)
    logits = f @ sol.weights["head.out.weight"].T + sol.weights["head.out.bias"]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, ref.predict_proba(f), atol=1e-5)


@pytest.mark.parametrize(
    "head, coefficients",
    [
        (tk.Classifier(3, hidden=(5, 4)), None),
        (tk.Classifier(3), {"head.out.weight": 0.3, "head.out.bias": 0.1}),
        (tk.Regressor(2, hidden=(4,)), {"head.hidden.0.weight": 0.2}),
    ],
)
def test_the_objective_gradient_is_exact(head, coefficients):
    f, y = _problem(1)
    if head.task == "regression":
        y = np.random.default_rng(2).normal(size=(40, 2))
    objective, shapes, _ = probe.objective_of(head, f, y, coefficients)
    theta = np.concatenate([head.initial_weights(6, 3)[name].ravel() for name, _ in shapes]).astype(
        np.float64
    )
    err = check_grad(lambda t: objective(t)[0], lambda t: objective(t)[1], theta)
    assert err < 1e-6 * max(1.0, np.linalg.norm(objective(theta)[1]))


def test_default_fit_of_a_frozen_backbone_solves_the_head(framework):
    from sklearn.linear_model import LogisticRegression

    train, test = tk.datasets.digits_transfer(shots=5, seed=0)
    model = tk.build(f"{framework}:cnn", head=tk.Classifier(5), seed=0)
    h = tk.fit(model, train, val=test, freeze=tk.freeze.FeatureExtraction(), verbose=0)
    assert len(h) == 1 and h["solver"] == ["lbfgs"] and h["iterations"][0] > 1
    assert "val_accuracy" in h.history
    # float64: on float32 features scikit-learn computes (and stops) in float32
    f = model.features(train.x).astype(np.float64)
    ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(f, train.y)
    ft = model.features(test.x).astype(np.float64)
    np.testing.assert_allclose(model.predict(test.x), ref.predict_proba(ft), atol=1e-4)
    # explicit epochs or lr keep meaning gradient steps
    stepped = tk.build(f"{framework}:cnn", head=tk.Classifier(5), seed=0)
    h = tk.fit(stepped, train, freeze=tk.freeze.FeatureExtraction(), epochs=3, verbose=0)
    assert len(h) == 3 and "solver" not in h.history


def test_the_solved_head_is_the_same_in_every_framework(framework):
    pytest.importorskip("torch")
    if framework == "torch":
        pytest.skip("torch is the reference")
    train, test = tk.datasets.digits_transfer(shots=3, seed=1)
    probs = []
    for fw in ("torch", framework):
        # a linear head: a convex objective, one optimum (an MLP head's solve is a local
        # optimum, which features equal to 1e-6 need not reach identically)
        model = tk.build(f"{fw}:cnn", head=tk.Classifier(5), seed=4)
        reg = tk.regularizers.L2SP(beta=0.05)
        tk.fit(model, train, freeze=tk.freeze.FeatureExtraction(), regularizer=reg, verbose=0)
        probs.append(model.predict(test.x))
    assert np.abs(probs[0] - probs[1]).max() < 1e-4
