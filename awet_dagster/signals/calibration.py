"""Platt scaling: map a raw score to a calibrated probability, p = sigmoid(a * s + b).

(Platt's paper writes p = 1 / (1 + exp(A s + B)); here a = -A, b = -B so that a > 0 means
"higher score, higher probability", the same sign as a logistic regression coefficient.)

`fit_platt` minimises the negative log-likelihood
    NLL(a, b) = -sum_i [t_i log p_i + (1 - t_i) log(1 - p_i)],  p_i = sigmoid(a s_i + b)
whose gradient is sum_i (p_i - t_i) * (s_i, 1) and Hessian sum_i p_i (1 - p_i) (s_i, 1)(s_i, 1)^T,
with Newton steps and a backtracking line search (Lin, Lin & Weng 2007, "A note on
Platt's probabilistic outputs"): stable when the classes are nearly separable, where plain
Newton overshoots. With `platt_targets=True` the 0/1 outcomes are replaced by Platt's
smoothed targets (N+ + 1)/(N+ + 2) and 1/(N- + 2), which keep the fit finite on separable data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PlattCalibrator:
    a: float
    b: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.a) and math.isfinite(self.b)):
            raise ValueError(f"calibrator parameters must be finite, got a={self.a}, b={self.b}")

    def predict(self, score: float) -> float:
        z = self.a * score + self.b
        # Split by sign so exp never overflows.
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    __call__ = predict

    def predict_many(self, scores: np.ndarray) -> np.ndarray:
        return _sigmoid(self.a * np.asarray(scores, dtype=float) + self.b)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z, dtype=float)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _nll(a: float, b: float, s: np.ndarray, t: np.ndarray) -> float:
    z = a * s + b
    # -[t log p + (1-t) log(1-p)] = log(1 + e^z) - t z, computed without overflow.
    return float(np.sum(np.logaddexp(0.0, z) - t * z))


def fit_platt(
    scores,
    outcomes,
    *,
    platt_targets: bool = False,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> PlattCalibrator:
    """Fit p = sigmoid(a s + b) to (score, 0/1 outcome) pairs by Newton's method on the NLL."""
    s = np.asarray(scores, dtype=float).ravel()
    y = np.asarray(outcomes, dtype=float).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and outcomes differ in length: {s.size} vs {y.size}")
    if s.size < 2:
        raise ValueError("need at least two observations to fit a calibrator")
    if not (np.all(np.isfinite(s)) and np.all((y == 0) | (y == 1))):
        raise ValueError("scores must be finite and outcomes 0 or 1")
    n_pos, n_neg = float(y.sum()), float(y.size - y.sum())
    if not platt_targets and (n_pos == 0 or n_neg == 0):
        raise ValueError("outcomes are all one class: the unsmoothed fit has no finite optimum")
    if platt_targets:
        t = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    else:
        t = y
    # Platt's start: slope 0, intercept at the log-odds of the (smoothed) base rate.
    prior = (n_pos + 1.0) / (n_neg + 1.0)
    a, b = 0.0, math.log(prior)
    f = _nll(a, b, s, t)
    for _ in range(max_iter):
        p = _sigmoid(a * s + b)
        d = p - t
        g = np.array([np.dot(d, s), d.sum()])
        w = p * (1.0 - p)
        h = np.array([[np.dot(w, s * s), np.dot(w, s)], [np.dot(w, s), w.sum()]])
        h += 1e-12 * np.eye(2)  # keeps a flat Hessian (separable data) invertible
        if np.max(np.abs(g)) < tol * s.size:  # gradient ~ 0: the optimum
            break
        step = np.linalg.solve(h, -g)
        slope = float(g @ step)
        lr = 1.0
        while lr >= 1e-10:
            na, nb = a + lr * step[0], b + lr * step[1]
            nf = _nll(na, nb, s, t)
            if nf <= f + 1e-4 * lr * slope:  # Armijo condition
                break
            lr /= 2.0
        else:
            break  # no decrease possible: at the optimum to machine precision
        a, b, f = na, nb, nf
    return PlattCalibrator(a=float(a), b=float(b))
