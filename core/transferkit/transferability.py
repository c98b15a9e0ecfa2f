"""Transferability scores: how well frozen features suit a labelled target task, estimated
without training the head.

Every score takes the target examples' features, shape (N, D), and their labels, integers
in [0, C) with every class present, and returns one float where higher means the features
should transfer better. A score ranks candidate backbones on one task: values of different
metrics, or of one metric on different tasks, are not comparable. Only numpy, SciPy and
scikit-learn run here (never a deep-learning framework), and every score is deterministic.

Example::

    from transferkit import transferability as tr

    ranking = sorted(candidates, key=lambda f: tr.score("logme", f, labels), reverse=True)
    tr.score("leep", labels=labels, source_probs=softmax_of_the_source_head)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

# LogME's fixed point: converged when alpha/beta moves by less than _LOGME_TOL, relative;
# classes still moving after _LOGME_STEPS steps are finished by bisection
_LOGME_TOL = 1e-10
_LOGME_STEPS = 100
# a floor for divisors that can be 0: in LogME a vanishing norm means alpha or beta ->
# infinity, and the floor keeps them finite (1e300, not inf) so the evidence stays a number
_FLOOR = 1e-300


def _features(features, n_labels: int | None = None, name: str = "features") -> np.ndarray:
    f = np.asarray(features)
    if f.ndim != 2 or not np.issubdtype(f.dtype, np.number):
        raise ConfigError(
            f"{name} must be a 2-D numeric array (examples, dimensions); got shape {f.shape} "
            f"of {f.dtype}: reshape to (N, D), e.g. features.reshape(len(features), -1)"
        )
    f = f.astype(np.float64)
    if not np.isfinite(f).all():
        rows = np.flatnonzero(~np.isfinite(f).all(axis=1))
        raise ConfigError(
            f"{name} contain NaN or infinity in {len(rows)} row(s), first row {rows[0]}: "
            "drop those examples or fix the backbone's output before scoring"
        )
    if n_labels is not None and len(f) != n_labels:
        raise ConfigError(
            f"{name} have {len(f)} rows but labels have {n_labels} entries: "
            "pass one label per example, in the same order"
        )
    return f


def _labels(labels) -> tuple[np.ndarray, int]:
    y = np.asarray(labels)
    if y.ndim != 1 or y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(
            f"labels must be a 1-D array of integer class indices in [0, C); got shape {y.shape} "
            f"of {y.dtype}: pass class indices (not one-hot, not floats), e.g. labels.astype(int)"
        )
    if len(y) and y.min() < 0:
        raise ConfigError(
            f"labels must be integers in [0, C); got {int(y.min())}: "
            "map the classes to 0..C-1, e.g. with np.unique(labels, return_inverse=True)"
        )
    counts = np.bincount(y) if len(y) else np.zeros(0, int)
    if np.count_nonzero(counts) < 2:
        raise ConfigError(
            f"labels hold {np.count_nonzero(counts)} distinct class(es); a transferability "
            "score needs at least 2 classes"
        )
    missing = np.flatnonzero(counts == 0)
    if len(missing):
        listed = str(missing[:10].tolist())[:-1] + (", ...]" if len(missing) > 10 else "]")
        raise ConfigError(
            f"labels must use every class in [0, C) with C = {len(counts)}, but class(es) "
            f"{listed} have no example: map the classes to 0..C-1, e.g. with "
            "np.unique(labels, return_inverse=True)"
        )
    return y.astype(np.intp), len(counts)


def _inputs(features, labels) -> tuple[np.ndarray, np.ndarray, int]:
    y, c = _labels(labels)
    return _features(features, len(y)), y, c


def _need_two_per_class(y: np.ndarray, metric: str) -> np.ndarray:
    counts = np.bincount(y)
    if counts.min() < 2:
        c = int(counts.argmin())
        raise ConfigError(
            f"{metric} holds each example out in turn, so every class needs at least 2 "
            f"examples; class {c} has {counts[c]}: add examples of it, or drop the class"
        )
    return counts


def _logme_terms(s, x2, rest, t):
    """gamma, N - gamma (less the N - k examples beyond the singular values), |m|^2 and
    |Fm - y|^2 at alpha/beta = t, for each class (columns). N - gamma is summed from its
    own terms t/(s + t): as n - gamma it cancels to nothing when t is tiny (F fits the
    labels exactly), and beta with it."""
    den = np.maximum(s + t, _FLOOR)  # 0 only where s = t = 0 (all-zero features)
    gamma = (s / den).sum(axis=0)
    free = (t / den).sum(axis=0)
    m2 = ((s / den) * (x2 / den)).sum(axis=0)
    res2 = ((t / den) ** 2 * x2).sum(axis=0) + rest
    return gamma, free, m2, res2


def _logme_update(n, gamma, free, m2, res2):
    """The paper's update: alpha = gamma / |m|^2, beta = (N - gamma) / |Fm - y|^2, with
    N - gamma = (N - k) + free (``_logme_terms``)."""
    beyond = n - round(float(np.max(gamma + free)))  # gamma + free = k, the singular values
    alpha = gamma / np.maximum(m2, _FLOOR)
    beta = np.maximum(beyond + free, 0.0) / np.maximum(res2, _FLOOR)
    return np.maximum(alpha, _FLOOR), np.maximum(beta, _FLOOR)


def _logme_ratio(n, s, x2, rest, t, bounds):
    """One step of the fixed point, as alpha/beta -> the next alpha/beta, kept in bounds."""
    alpha, beta = _logme_update(n, *_logme_terms(s, x2, rest, t))
    return np.clip(alpha / beta, *bounds)


def _logme_profile(n, s, x2, rest, t):
    """The log evidence at alpha/beta = t, maximised over beta, for each class."""
    t = np.broadcast_to(t, (x2.shape[1],)).astype(float)
    _, _, m2, res2 = _logme_terms(s, x2, rest, t)
    beta = n / np.maximum(res2 + t * m2, _FLOOR)
    return (n * np.log(beta) - n - n * np.log(2 * np.pi) - np.log1p(s / t).sum(axis=0)) / 2


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME (You et al., ICML 2021): the log marginal evidence per example of a Bayesian
    linear model from the features to the one-hot labels, maximised over the prior
    precision alpha and noise precision beta, averaged over the classes.

    The model is y = F w + noise, w ~ N(0, 1/alpha), noise ~ N(0, 1/beta), with no bias
    and no feature scaling, as in the paper. Each class's alpha and beta come from the
    paper's fixed point (Algorithm 1) run to convergence, all classes at once, in the space
    of the k = min(N, D) singular values of F (one SVD per call). The evidence keeps the
    D - k zero eigenvalues of F^T F in log|alpha I + beta F^T F|, which the reference code's
    default routine drops when N < D (thuml/LogME#23), so both regimes are exact.
    """
    f, y, c = _inputs(features, labels)
    n = len(f)
    u, sv, _ = np.linalg.svd(f, full_matrices=False)
    s = (sv**2)[:, None]  # (k, 1): the eigenvalues of F^T F that can be non-zero
    x = u.T @ np.eye(c)[y]  # (k, C): the one-hot targets in the left singular basis
    x2 = x**2
    # the part of each target outside F's column space, which no w can fit (none when
    # k = N: the columns of u then span everything); ||y||^2 = n_c for one-hot targets
    rest = np.maximum(np.bincount(y) - x2.sum(axis=0), 0.0) if n > len(sv) else np.zeros(c)
    # alpha/beta this far beyond the singular values is a boundary (alpha or beta infinite)
    # to within 1e-20 in the evidence; bounding it keeps every term finite
    scale = np.log(max(s.max(), _FLOOR))
    bounds = np.exp(scale - 50.0), np.exp(scale + 50.0)
    t = np.ones(c)  # alpha = beta = 1 to start, as in the paper
    for _ in range(_LOGME_STEPS):
        t_new = _logme_ratio(n, s, x2, rest, t, bounds)
        converged = np.abs(t_new - t) <= _LOGME_TOL * t
        t = t_new
        if converged.all():
            break
    if not converged.all():
        # The fixed point creeps (linearly, at a rate near 1) when the optimum is far from
        # alpha = beta = 1 or at a boundary. Its condition phi(t) = t is where the slope of
        # the evidence in log t, maximised over beta, is zero, and phi(t) > t exactly where
        # that slope is positive: bisect on it, within the bounds.
        lo, hi = np.full(c, scale - 50.0), np.full(c, scale + 50.0)
        for _ in range(64):
            mid = (lo + hi) / 2
            up = _logme_ratio(n, s, x2, rest, np.exp(mid), bounds) > np.exp(mid)
            lo, hi = np.where(up, mid, lo), np.where(up, hi, mid)
        t = np.where(converged, t, np.exp((lo + hi) / 2))
    # The evidence at alpha = t * beta with beta at its optimum for that t, N / (|Fm - y|^2
    # + t |m|^2): D/2 log(alpha) - 1/2 log|A| = -1/2 sum_k log(1 + s/t) (the D - k zero
    # eigenvalues of F^T F contribute log(alpha) to log|A| each). The bounds stand in for
    # a boundary optimum (alpha or beta infinite) where the iteration stops short of it.
    evidence = np.max([_logme_profile(n, s, x2, rest, v) for v in (t, *bounds)], axis=0)
    return float(np.mean(evidence / n))


def hscore(features: np.ndarray, labels: np.ndarray, shrinkage: bool = True) -> float:
    """H-score (Bao et al., ICIP 2019): tr(cov(f)^-1 cov(E[f | y])), the between-class
    variance of the features measured in units of their total covariance.

    With ``shrinkage=True`` (the default) this is the regularised H-score of Ibrahim et al.
    (ICLR 2023): cov(f) is the Ledoit-Wolf estimate (1 - a) cov(f) + a mu I, with its
    intensity a chosen from the data, and cov(E[f | y]) is scaled by (1 - a); it tends to
    the plain H-score as N grows. With ``shrinkage=False`` it is the paper's formula with
    a pseudo-inverse (eigenvalues below 1e-10 of the largest count as zero): when N <= D
    that score is C - 1 for almost any features, so it cannot rank them.
    """
    from scipy.linalg import pinvh
    from sklearn.covariance import ledoit_wolf

    f, y, c = _inputs(features, labels)
    counts = np.bincount(y)
    means = np.zeros((c, f.shape[1]))
    np.add.at(means, y, f)
    means = means / counts[:, None] - f.mean(axis=0)  # class means around the global mean
    if shrinkage:
        cov, intensity = ledoit_wolf(f)
    else:
        centred = f - f.mean(axis=0)
        cov, intensity = centred.T @ centred / len(f), 0.0
    inv = pinvh(cov, rtol=1e-10) * (1.0 - intensity)
    # tr(cov^-1 sum_c p_c m_c m_c^T) = sum_c p_c m_c^T cov^-1 m_c
    return float(np.einsum("c,cd,de,ce->", counts / len(f), means, inv, means))


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP (Nguyen et al., ICML 2020) from the source classifier's softmax outputs on the
    target examples, shape (N, Z): the mean log-likelihood of the target labels under the
    "expected empirical predictor" sum_z P(y | z) theta(x)_z, where P(y | z) comes from the
    empirical joint P(y, z) = 1/N sum_i theta(x_i)_z [y_i = y]. At most 0 (better).
    """
    y, c = _labels(labels)
    theta = _features(source_probs, len(y), "source_probs")
    if theta.min() < 0 or not np.allclose(theta.sum(axis=1), 1.0, atol=1e-4):
        raise ConfigError(
            "source_probs must be probabilities (each row non-negative, summing to 1); "
            "these look like logits or scores: apply a softmax over the source classes first"
        )
    joint = np.zeros((c, theta.shape[1]))
    np.add.at(joint, y, theta)
    joint /= len(y)
    marginal = joint.sum(axis=0)
    # a source class no example puts mass on has theta = 0 everywhere: its column is unused
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    likelihood = (theta * conditional[y]).sum(axis=1)
    return float(np.mean(np.log(likelihood)))


def nleep(
    features: np.ndarray, labels: np.ndarray, components: int | None = None, seed: int = 0
) -> float:
    """NLEEP (Li et al., CVPR 2021): LEEP with a Gaussian mixture on the features in place
    of the source classifier.

    The features are reduced by PCA to the components that keep 80% of the variance, then
    a Gaussian mixture with full covariances (scikit-learn's default, as in the reference
    implementation) is fitted and its posteriors serve as the source probabilities.
    ``components`` defaults to 5 x the number of classes, capped at N // 2: a component
    that holds one example is a point mass whose P(y | z) is certain, and with about one
    per example the score is 0 (the best) for any features. The PCA output is divided by
    its overall standard deviation, so that the mixture's fixed covariance regularisation
    (1e-6) is relative to the features' scale and rescaled features score the same.
    """
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    f, y, c = _inputs(features, labels)
    n = len(f)
    if components is None:
        components = max(1, min(5 * c, n // 2))
    elif not 1 <= components <= n:
        raise ConfigError(
            f"nleep: components={components} must be between 1 and the number of examples "
            f"({n}); leave it as None for 5 x classes capped at N // 2"
        )
    reduced = PCA(n_components=0.8, svd_solver="full").fit_transform(f)
    reduced /= max(reduced.std(), _FLOOR)
    gmm = GaussianMixture(components, covariance_type="full", random_state=seed)
    return leep(gmm.fit(reduced).predict_proba(reduced), y)


def knn(features: np.ndarray, labels: np.ndarray, k: int | None = None) -> float:
    """Leave-one-out k-nearest-neighbour accuracy with cosine similarity.

    Each example is classified by a majority vote of its k most similar other examples;
    a tied vote goes to the tied class with the most similar neighbour (ties in similarity
    go to the lower index). ``k`` defaults to min(5, smallest class count - 1), at least 1.
    """
    f, y, c = _inputs(features, labels)
    counts = _need_two_per_class(y, "knn")
    n = len(f)
    if k is None:
        k = max(1, min(5, int(counts.min()) - 1))
    elif not 1 <= k < n:
        raise ConfigError(f"knn: k={k} must be between 1 and N - 1 = {n - 1}")
    unit = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), _FLOOR)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)  # an example is not its own neighbour
    nearest = np.argsort(-sim, axis=1, kind="stable")[:, :k]  # (N, k), most similar first
    votes = np.zeros((n, c))
    rows = np.repeat(np.arange(n), k)
    np.add.at(votes, (rows, y[nearest].ravel()), 1.0)
    # a bonus below 1 that falls with rank breaks ties without overriding any vote; each
    # class keeps the bonus of its most similar neighbour
    tiebreak = np.zeros((n, c))
    np.maximum.at(tiebreak, (rows, y[nearest].ravel()), np.tile(0.5 / (1.0 + np.arange(k)), n))
    pred = (votes + tiebreak).argmax(axis=1)
    return float(np.mean(pred == y))


def probe(
    features: np.ndarray, labels: np.ndarray, folds: int | None = None, seed: int = 0
) -> float:
    """Cross-validated accuracy of a linear probe: scikit-learn's LogisticRegression (C=1)
    on standardised features, the fraction of examples classified correctly when held out
    by a shuffled StratifiedKFold. ``folds`` defaults to min(5, smallest class count).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f, y, _ = _inputs(features, labels)
    counts = _need_two_per_class(y, "probe")
    if folds is None:
        folds = min(5, int(counts.min()))
    elif not 2 <= folds <= counts.min():
        c = int(counts.argmin())
        raise ConfigError(
            f"probe: folds={folds} must be between 2 and the smallest class count "
            f"(class {c} has {counts[c]}) so each fold holds every class; leave it as None"
        )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=10_000))
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    pred = cross_val_predict(model, f, y, cv=split)
    return float(np.mean(pred == y))


@dataclass(frozen=True)
class MetricInfo:
    """What a transferability metric needs and what it measures. ``needs`` is
    ``"features"`` (the target examples' features) or ``"source_probs"`` (a source
    classifier's softmax outputs on them)."""

    name: str
    needs: str
    description: str
    fn: Callable[..., float]


METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in [
        MetricInfo(
            "logme", "features", "log evidence of a Bayesian linear model on the labels", logme
        ),
        MetricInfo(
            "hscore", "features", "between-class over total feature covariance (trace)", hscore
        ),
        MetricInfo("leep", "source_probs", "label log-likelihood through the source classes", leep),
        MetricInfo(
            "nleep", "features", "LEEP with a Gaussian mixture on PCA features as source", nleep
        ),
        MetricInfo("knn", "features", "leave-one-out k-NN accuracy, cosine similarity", knn),
        MetricInfo("probe", "features", "cross-validated logistic-regression accuracy", probe),
    ]
}


def score(
    metric: str,
    features: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    source_probs: np.ndarray | None = None,
    **options,
) -> float:
    """The transferability ``metric`` (a name in ``METRICS``) of ``features`` or, for
    ``"leep"``, of ``source_probs``, on ``labels``; ``options`` go to the metric
    (``k`` for knn, ``folds`` and ``seed`` for probe, ...).

    Example::

        score("logme", features, labels)
        score("knn", features, labels, k=3)
    """
    if metric not in METRICS:
        close = difflib.get_close_matches(str(metric), list(METRICS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown transferability metric {metric!r}.{hint} Known metrics: {', '.join(METRICS)}"
        )
    if labels is None:
        raise ConfigError(f"{metric} needs the target labels: pass labels=")
    info = METRICS[metric]
    if info.needs == "source_probs":
        if source_probs is None:
            raise ConfigError(
                "LEEP needs the source classifier's probabilities; this candidate has none "
                "— use 'nleep' or 'logme'"
            )
        return info.fn(source_probs, labels, **options)
    if features is None:
        raise ConfigError(f"{metric} scores features: pass features= (an (N, D) array)")
    return info.fn(features, labels, **options)
