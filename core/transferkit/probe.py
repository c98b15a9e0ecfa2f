"""The head's optimum on cached features: a full-batch L-BFGS solve, the same in every
framework.

When the backbone stays frozen for the whole run, the features are computed once and
the head's objective is a small, smooth problem (convex for a linear head): gradient
steps with a fixed budget stop wherever the budget ends (0.78 test accuracy on BBC News
with 8 labels per class where the optimum gives 0.92), while a second-order solver on
all features at once reaches the optimum. This is what ``tk.fit`` does for a frozen
backbone when neither ``lr`` nor ``epochs`` is given. The features come from the
framework; the solve is numpy and SciPy's L-BFGS, so every framework gets the same head
from the same features and seed.

The objective is the head's mean loss (softmax cross-entropy or squared error) plus an
L2 term: the regulariser's head term when ``regularizer=`` is given, else
``weight_decay/2·‖θ‖²`` when ``weight_decay`` is given, else scikit-learn's default for
``LogisticRegression`` (``C=1``: ``1/(2N)·‖W‖²`` on the weight matrices, not the biases).
Dropout is a device of stochastic training and is not applied by the solver.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import warn
from .heads import Head

#: the largest gradient component at which the head counts as solved
GRADIENT_TOL = 1e-8


@dataclass(frozen=True)
class Solution:
    """A solved head: its weights (canonical names), the task loss and the penalty at
    the optimum, and how the solver ended."""

    weights: dict[str, np.ndarray]
    loss: float
    penalty: float
    iterations: int
    converged: bool


def _unpack(theta: np.ndarray, shapes: list[tuple[str, tuple[int, ...]]]) -> dict:
    out, i = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        out[name] = theta[i : i + n].reshape(shape)
        i += n
    return out


def solve(
    head: Head,
    features: np.ndarray,
    y: np.ndarray,
    start: Mapping[str, np.ndarray],
    coefficients: Mapping[str, float] | None = None,
    max_iter: int = 2000,
) -> Solution:
    """Minimise the head's objective over ``features`` (N, F) and labels ``y`` from the
    head weights ``start`` (canonical ``head.*`` names). ``coefficients``: the L2
    coefficient per head weight (see the module docstring for the default)."""
    from scipy.optimize import minimize

    objective, shapes, coef = objective_of(head, features, y, coefficients)
    theta0 = np.concatenate([np.asarray(start[name], np.float64).ravel() for name, _ in shapes])
    # L-BFGS stops on a relative decrease near machine precision while the gradient of an
    # ill-conditioned probe is still 1e-5; restarting it (a fresh curvature memory) goes on
    # to the optimum (gradient <= 1e-8 here, where scikit-learn's solver reaches 5e-8).
    theta, iterations = theta0, 0
    for _ in range(8):
        result = minimize(
            objective,
            theta,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": max_iter, "gtol": 1e-9, "ftol": 0.0},
        )
        iterations += int(result.nit)
        done = np.abs(result.jac).max() <= GRADIENT_TOL or result.nit <= 1
        theta = result.x
        if done or iterations >= max_iter:
            break
    converged = bool(np.abs(result.jac).max() <= 10 * GRADIENT_TOL)
    solved = _unpack(theta, shapes)
    penalty = sum(coef[k] / 2 * float(np.sum(v * v)) for k, v in solved.items())
    weights = {k: v.astype(np.float32) for k, v in solved.items()}
    return Solution(weights, float(result.fun) - penalty, penalty, iterations, converged)


def objective_of(
    head: Head,
    features: np.ndarray,
    y: np.ndarray,
    coefficients: Mapping[str, float] | None = None,
) -> tuple:
    """``(objective, shapes, coefficients)``: the head's objective as a function of its
    flattened weights returning ``(value, gradient)``, the order and shapes of the weights
    in that vector, and the L2 coefficient of each."""
    f = np.asarray(features, np.float64)
    n = len(f)
    layers = head.dense_layers(f.shape[1])
    shapes = []
    for d in layers:
        shapes += [(f"head.{d.name}.weight", (d.out_features, d.in_features))]
        shapes += [(f"head.{d.name}.bias", (d.out_features,))]
    if coefficients is None:  # scikit-learn's LogisticRegression(C=1), in mean form
        coefficients = {name: 1.0 / n for name, _ in shapes if name.endswith(".weight")}
    coef = {name: float(coefficients.get(name, 0.0)) for name, _ in shapes}
    classify = head.loss == "cross_entropy"
    target = np.eye(head.outputs)[y] if classify else np.asarray(y, np.float64).reshape(n, -1)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = _unpack(theta, shapes)
        acts, h = [], f
        for d in layers[:-1]:
            z = h @ w[f"head.{d.name}.weight"].T + w[f"head.{d.name}.bias"]
            acts.append((h, z))
            h = np.maximum(z, 0.0)
        last = layers[-1]
        out = h @ w[f"head.{last.name}.weight"].T + w[f"head.{last.name}.bias"]
        if classify:
            out = out - out.max(axis=1, keepdims=True)
            logp = out - np.log(np.exp(out).sum(axis=1, keepdims=True))
            loss = -float(np.sum(target * logp)) / n
            g_out = (np.exp(logp) - target) / n
        else:
            diff = out - target
            loss = float(np.mean(diff * diff))
            g_out = 2.0 * diff / diff.size
        grads = {
            f"head.{last.name}.weight": g_out.T @ h,
            f"head.{last.name}.bias": g_out.sum(axis=0),
        }
        g = g_out @ w[f"head.{last.name}.weight"]
        for d, (h_in, z) in zip(reversed(layers[:-1]), reversed(acts), strict=True):
            g = g * (z > 0)
            grads[f"head.{d.name}.weight"] = g.T @ h_in
            grads[f"head.{d.name}.bias"] = g.sum(axis=0)
            g = g @ w[f"head.{d.name}.weight"]
        for name, _ in shapes:
            c = coef[name]
            if c:
                loss += c / 2 * float(np.sum(w[name] ** 2))
                grads[name] = grads[name] + c * w[name]
        return loss, np.concatenate([grads[name].ravel() for name, _ in shapes])

    return objective, shapes, coef


def fit_head(trainer: Any, f: np.ndarray, y: np.ndarray, fv: Any, yv: Any, callbacks: list) -> Any:
    """``Trainer.fit`` for a frozen backbone with neither ``lr`` nor ``epochs`` given: the
    head solved on the cached features ``f`` (validated on ``fv``), as one epoch that
    every callback sees; returns the trainer's history."""
    model = trainer.model
    start = {k: v for k, v in model.get_weights().items() if k.startswith("head.")}
    if trainer.penalty is not None:
        coefficients = {k: c for k, c in trainer.penalty.coefficients.items() if k in start}
    elif trainer.optimizer.weight_decay:
        coefficients = dict.fromkeys(start, trainer.optimizer.weight_decay)
    else:
        coefficients = None  # scikit-learn's default
    for cb in callbacks:
        cb.on_epoch_begin(trainer, 0)
    t0 = time.perf_counter()
    solution = solve(model.head, f, y, start, coefficients)
    model.set_weights(solution.weights)
    if not solution.converged:
        warn(
            f"the head's objective did not reach its optimum in {solution.iterations} L-BFGS "
            "iterations (a head with hidden layers is not convex); its result is used as is. "
            "Pass epochs= and lr= to train it by gradient steps instead"
        )
    logs: dict[str, Any] = {
        "epoch": 1,
        "loss": solution.loss,
        "solver": "lbfgs",
        "iterations": solution.iterations,
        "converged": solution.converged,
        "trainable_groups": 0,
    }
    if trainer.penalty is not None:
        logs["reg_loss"] = solution.penalty
    if fv is not None:
        logs.update(trainer._validate(fv, yv, model.engine.head_predict))
    logs["time"] = time.perf_counter() - t0
    trainer.epoch = 1
    for cb in callbacks:
        cb.on_epoch_end(trainer, 0, logs)
    for cb in callbacks:
        cb.on_train_end(trainer)
    return trainer.history
