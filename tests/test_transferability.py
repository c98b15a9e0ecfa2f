"""Transferability scores: LogME against a direct maximisation of the exact evidence and
against the reference code, every score on informative versus noise features, exact
values on hand-made cases, and every error message."""

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import multivariate_normal

from transferkit import transferability as tr
from transferkit.errors import ConfigError


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    # scikit-learn's tiny L-BFGS and EM problems run 5-10x slower when BLAS threads
    # contend with other work for the cores; one thread keeps this file fast anywhere
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def _task(n, d, c=3, signal=1.0, seed=0):
    """Features with class-dependent means (signal > 0) or pure noise (signal = 0)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    rng.shuffle(y)
    return rng.normal(size=(n, d)) + signal * rng.normal(size=(c, d))[y], y


def _evidence(f, t, log_alpha, log_beta):
    """The exact log evidence, computed naively with the full D x D matrix A."""
    n, d = f.shape
    alpha, beta = np.exp(log_alpha), np.exp(log_beta)
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ t)
    return (
        n / 2 * log_beta
        + d / 2 * log_alpha
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * np.sum((f @ m - t) ** 2)
        - alpha / 2 * m @ m
        - 0.5 * np.linalg.slogdet(a)[1]
    )


def _direct_logme(f, y):
    """LogME by Nelder-Mead on (log alpha, log beta) per class: (value, optima)."""
    values, optima = [], []
    for c in range(y.max() + 1):
        t = (y == c).astype(float)
        runs = [
            minimize(
                lambda p, t=t: -_evidence(f, t, *p),
                start,
                method="Nelder-Mead",
                options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 4000},
            )
            for start in ([0.0, 0.0], [5.0, 3.0])
        ]
        best = min(runs, key=lambda r: r.fun)
        values.append(-best.fun / len(f))
        optima.append(best.x)
    return float(np.mean(values)), np.array(optima)


def test_the_naive_evidence_is_the_gaussian_marginal_likelihood():
    # y ~ N(0, F F^T / alpha + I / beta): an independent check of the formula tested against
    f, y = _task(12, 30)
    t = (y == 1).astype(float)
    cov = f @ f.T / np.exp(1.5) + np.eye(12) / np.exp(0.5)
    expected = multivariate_normal(np.zeros(12), cov).logpdf(t)
    assert _evidence(f, t, 1.5, 0.5) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("n, d, seed", [(24, 48, 1), (100, 8, 0)], ids=["N<D", "N>D"])
def test_logme_is_the_maximum_of_the_exact_evidence(n, d, seed):
    f, y = _task(n, d, signal=1.0, seed=seed)
    direct, optima = _direct_logme(f, y)
    # interior optima: as beta -> infinity (N < D can put the maximum there) the naive
    # D x D evaluation loses all accuracy, and the optimiser would chase its rounding
    assert np.all(np.abs(optima) < 12)
    assert tr.logme(f, y) == pytest.approx(direct, rel=1e-6)
    if n < d:
        # what the reference's default routine reports when N < D: (D - N)/(2N) log alpha
        # too much (thuml/LogME#23), far outside the tolerance above
        dropped = np.mean((d - n) / (2 * n) * optima[:, 0])
        assert abs(dropped) > 0.5


def _reference_logme(f, y):
    """thuml/LogME's ICML routine (`each_evidence` over the D eigenvalues of F^T F, with
    its epsilon and its 1% stopping rule), which is right when N > D."""
    n, d = f.shape
    v, s, vh = np.linalg.svd(f.T @ f)
    out = []
    for c in range(y.max() + 1):
        t = (y == c).astype(float)
        alpha, beta, eps = 1.0, 1.0, 1e-5
        lam, tmp = 1.0, vh @ (f.T @ t)
        for _ in range(11):
            gamma = (s / (s + lam)).sum()
            m = v @ (tmp * beta / (alpha + beta * s))
            alpha_de = m @ m
            alpha = gamma / (alpha_de + eps)
            beta_de = np.sum((t - f @ m) ** 2)
            beta = (n - gamma) / (beta_de + eps)
            if abs(alpha / beta - lam) / lam < 0.01:
                break
            lam = alpha / beta
        evidence = (
            d / 2 * np.log(alpha)
            + n / 2 * np.log(beta)
            - 0.5 * np.sum(np.log(alpha + beta * s))
            - beta / 2 * (beta_de + eps)
            - alpha / 2 * (alpha_de + eps)
            - n / 2 * np.log(2 * np.pi)
        )
        out.append(evidence / n)
    return float(np.mean(out))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logme_matches_the_reference_code_when_n_exceeds_d(seed):
    f, y = _task(300, 16, c=4, seed=seed)
    ours, ref = tr.logme(f, y), _reference_logme(f, y)
    # the reference stops early and adds epsilon penalties, so it sits a hair below
    assert 0 <= ours - ref < 5e-5


def test_logme_handles_boundary_optima_without_warnings():
    # noise features (alpha -> infinity) and N << D (beta -> infinity for some classes)
    # take the bisection path; the value must stay finite and at most the supremum
    with np.errstate(all="raise"):
        noise = tr.logme(*_task(200, 8, signal=0.0))
        wide = tr.logme(*_task(20, 200, signal=0.3))
    # with alpha -> infinity the evidence is that of y ~ N(0, ||y||^2/N) per class
    f, y = _task(200, 8, signal=0.0)
    counts = np.bincount(y)
    limit = np.mean(-0.5 * (np.log(2 * np.pi * counts / 200) + 1))
    assert limit <= noise < limit + 0.05
    assert np.isfinite(wide)


@pytest.mark.parametrize("name", ["logme", "hscore", "nleep", "knn", "probe"])
@pytest.mark.parametrize("n, d", [(60, 20), (24, 50)], ids=["N>D", "N<D"])
def test_informative_features_score_higher_than_noise(name, n, d):
    informative, y = _task(n, d, signal=1.5, seed=1)
    noise = np.random.default_rng(2).normal(size=(n, d))
    assert tr.score(name, informative, y) > tr.score(name, noise, y) + 0.05


def test_leep_prefers_source_probabilities_that_predict_the_target():
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    aligned = np.eye(4)[y] * 0.7 + 0.3 * rng.dirichlet(np.ones(4), 60)
    unrelated = rng.dirichlet(np.ones(4), 60)
    assert tr.score("leep", labels=y, source_probs=aligned) > tr.leep(unrelated, y) + 0.5


def test_leep_on_hand_made_cases():
    # z = 0 holds one example of each class, z = 1 two of class 1: P(y | z=0) = 1/2
    hard = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert tr.leep(hard, np.array([0, 1, 1, 1])) == pytest.approx(-np.log(2) / 2, rel=1e-12)
    # joint [[.4, .1], [.2, .3]], P(z) = [.6, .4]: both examples get 7/12
    soft = np.array([[0.8, 0.2], [0.4, 0.6]])
    assert tr.leep(soft, np.array([0, 1])) == pytest.approx(np.log(7 / 12), rel=1e-12)
    # a source class with no mass anywhere changes nothing
    padded = np.hstack([soft, np.zeros((2, 1))])
    assert tr.leep(padded, np.array([0, 1])) == pytest.approx(np.log(7 / 12), rel=1e-12)


def _knn_case():
    # on the unit circle at these angles (degrees); radii vary, which cosine ignores
    angles = np.deg2rad([0, 10, 22, 4, 90, 100, 115])
    radii = np.array([1.0, 5.0, 0.2, 10.0, 2.0, 0.5, 3.0])
    f = np.c_[np.cos(angles), np.sin(angles)] * radii[:, None]
    return f, np.array([0, 0, 0, 1, 1, 1, 1])


@pytest.mark.parametrize(
    "k, correct",
    [
        # 1-NN: 0 -> 4 (wrong), 4 -> 0 (wrong), 10 -> 4 (wrong), the other four right
        (1, 4),
        # default k = min(5, 3 - 1) = 2: 0 and 10 tie 1-1 and go to the nearer 4 (wrong);
        # lowest-class tie-breaking would make both right (6/7)
        (None, 4),
        # 3-NN: only 4 (neighbours 0, 10, 22) is wrong
        (3, 6),
    ],
)
def test_knn_exact_leave_one_out_accuracy(k, correct):
    f, y = _knn_case()
    assert tr.knn(f, y, k=k) == pytest.approx(correct / 7)


def test_probe_exact_cross_validated_accuracy():
    x0 = np.array([-2.3, -2.1, -2.0, -1.9, -1.8, -2.2])
    f, y = np.r_[x0, -x0][:, None], np.repeat([0, 1], 6)
    assert tr.probe(f, y) == 1.0
    # a class-1 example inside class 0's cluster is misclassified when held out, and
    # does not move the boundary away from 0 when it is trained on
    f, y = np.r_[f, [[-2.05]]], np.r_[y, 1]
    for seed in range(3):
        assert tr.probe(f, y, seed=seed) == pytest.approx(12 / 13)


def test_hscore_without_shrinkage_is_the_papers_formula():
    f, y = _task(80, 6, signal=1.0)
    cov = np.cov(f.T, bias=True)
    means = np.stack([f[y == c].mean(0) for c in range(3)]) - f.mean(0)
    between = means.T @ np.diag(np.bincount(y) / 80) @ means
    expected = np.trace(np.linalg.inv(cov) @ between)
    assert tr.hscore(f, y, shrinkage=False) == pytest.approx(expected, rel=1e-9)
    # with N <= D the unshrunk score is C - 1 for noise too: why shrinkage is the default
    noise, y = _task(20, 40, signal=0.0)
    assert tr.hscore(noise, y, shrinkage=False) == pytest.approx(2.0, rel=1e-6)
    assert tr.hscore(noise, y) < tr.hscore(*_task(20, 40, signal=1.5))


def test_nleep_is_deterministic_and_ranks_with_few_examples():
    # 5 x 3 = 15 components capped at 12 // 2 = 6, at least two examples each on average;
    # with one example per component every feature set would score 0
    noise, y = _task(12, 30, signal=0.0)
    informative, _ = _task(12, 30, signal=1.5)
    assert tr.nleep(noise, y) == tr.nleep(noise, y)
    assert tr.nleep(noise, y) < -0.3
    assert tr.nleep(informative, y) == pytest.approx(0.0, abs=1e-6)
    assert tr.nleep(noise, y, components=11) > -0.2


def test_metrics_describe_their_inputs_and_score_dispatches():
    assert set(tr.METRICS) == {"logme", "hscore", "leep", "nleep", "knn", "probe"}
    assert {n for n, m in tr.METRICS.items() if m.needs == "source_probs"} == {"leep"}
    assert all(
        m.description and m.needs in ("features", "source_probs") for m in tr.METRICS.values()
    )
    f, y = _task(40, 5)
    assert tr.score("logme", f, y) == tr.logme(f, y)
    assert tr.score("knn", f, y, k=3) == tr.knn(f, y, k=3)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda f, y: tr.score("logmee", f, y), r"unknown .* 'logmee'\. Did you mean 'logme'\?"),
        (lambda f, y: tr.score("xyz", f, y), r"Known metrics: logme, hscore, leep, nleep, knn"),
        (lambda f, y: tr.score("leep", f, y), r"LEEP needs the source classifier's prob"),
        (lambda f, y: tr.score("logme", labels=y), r"logme scores features: pass features="),
        (lambda f, y: tr.score("logme", f), r"logme needs the target labels"),
        (lambda f, y: tr.logme(f, y.astype(float)), r"integer class indices .* float64"),
        (lambda f, y: tr.logme(f, y[:, None]), r"1-D array .* shape \(12, 1\)"),
        (lambda f, y: tr.logme(f, y - 1), r"integers in \[0, C\); got -1"),
        (lambda f, y: tr.logme(f, y * 2), r"C = 7, but class\(es\) \[1, 3, 5\] have no"),
        (lambda f, y: tr.logme(f, np.zeros(12, int)), r"1 distinct class\(es\).* at least 2"),
        (lambda f, y: tr.hscore(f[:10], y), r"features have 10 rows but labels have 12"),
        (lambda f, y: tr.nleep(f[:, 0], y), r"2-D numeric array .* shape \(12,\)"),
        (
            lambda f, y: tr.knn(f, np.r_[np.arange(11) % 3, 3]),
            r"knn .* class 3 has 1: add examples",
        ),
        (
            lambda f, y: tr.probe(f, np.r_[np.arange(11) % 3, 3]),
            r"probe .* class 3 has 1: add examples",
        ),
        (lambda f, y: tr.probe(f, y, folds=4), r"folds=4 .* \(class 0 has 3\)"),
        (lambda f, y: tr.knn(f, y, k=12), r"k=12 must be between 1 and N - 1 = 11"),
        (lambda f, y: tr.nleep(f, y, components=13), r"components=13 .* examples \(12\)"),
        (lambda f, y: tr.leep(f, y), r"these look like logits .* apply a softmax"),
    ],
)
def test_errors_say_what_is_wrong_and_what_to_do(call, message):
    f, y = _task(12, 4, c=4)
    with pytest.raises(ConfigError, match=message):
        call(f, y)


def test_non_finite_features_are_refused_with_the_row():
    f, y = _task(12, 4)
    f[5, 2] = np.nan
    f[7, 0] = np.inf
    for name in ("logme", "hscore", "nleep", "knn", "probe"):
        with pytest.raises(ConfigError, match=r"NaN or infinity in 2 row\(s\), first row 5"):
            tr.score(name, f, y)
    with pytest.raises(ConfigError, match=r"source_probs contain NaN"):
        tr.leep(np.full((12, 3), np.nan), y)


def test_logme_where_the_features_fit_the_labels_exactly():
    # N <= D at full rank: every label vector is fitted exactly, the evidence is highest
    # as alpha/beta -> 0 (a boundary), where N - gamma cancels to nothing if summed as a
    # difference. Reference: the evidence maximised over beta, on a grid of alpha/beta.
    rng = np.random.default_rng(3)
    y = np.arange(20) % 2
    f = np.hstack([np.eye(2)[y], 0.01 * rng.normal(size=(20, 62))])  # the labels, nearly
    u, sv, _ = np.linalg.svd(f, full_matrices=False)
    s, n, best = sv**2, 20, []
    for c in range(2):
        x2 = (u.T @ (y == c).astype(float)) ** 2
        values = []
        for t in np.exp(np.linspace(-80, 10, 2000)):
            res2 = np.sum((t / (s + t)) ** 2 * x2)
            m2 = np.sum(s * x2 / (s + t) ** 2)
            beta = n / (res2 + t * m2)
            values.append(
                (n * np.log(beta) - n - n * np.log(2 * np.pi) - np.sum(np.log1p(s / t))) / 2 / n
            )
        best.append(max(values))
    assert np.mean(best) - 1e-9 <= tr.logme(f, y) <= np.mean(best) + 1e-5
