"""Prediction drift: the population stability index (PSI) of recent median forecasts against
the first forecasts the current model made in production (its reference window).

PSI < 0.1 is usually read as stable, 0.1-0.25 as a shift worth a look, > 0.25 as drift.
"""
from __future__ import annotations

from collections import deque

import numpy as np

EPS = 1e-4


def psi(reference: np.ndarray, recent: np.ndarray, bins: int = 10) -> float:
    """PSI of `recent` against `reference`, over the reference's quantile bins."""
    reference = np.asarray(reference, dtype=float)
    recent = np.asarray(recent, dtype=float)
    if reference.size < bins or recent.size == 0:
        raise ValueError("psi needs at least `bins` reference values and one recent value")
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=edges.size + 1) / reference.size
    actual = np.bincount(np.searchsorted(edges, recent, side="right"), minlength=edges.size + 1) / recent.size
    expected, actual = np.clip(expected, EPS, None), np.clip(actual, EPS, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


class PredictionDrift:
    """Collects a model's first `window` forecasts as the reference, then reports the PSI of
    the latest `window` forecasts once at least `min_recent` of them arrived (default
    ``max(50, window // 10)``); `reset()` when a new model is served."""

    def __init__(self, window: int = 500, min_recent: int | None = None) -> None:
        if window < 10:
            raise ValueError("window must be >= 10 (the PSI uses 10 reference quantile bins)")
        self.window = window
        self.min_recent = max(50, window // 10) if min_recent is None else max(1, min(min_recent, window))
        self.reset()

    def reset(self) -> None:
        self.reference: list[float] = []
        self.recent: deque[float] = deque(maxlen=self.window)

    def update(self, value: float) -> float | None:
        if not np.isfinite(value):
            return None
        if len(self.reference) < self.window:
            self.reference.append(value)
            return None
        self.recent.append(value)
        if len(self.recent) < self.min_recent:
            return None
        return psi(np.asarray(self.reference), np.asarray(self.recent))
