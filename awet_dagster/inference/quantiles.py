"""A predictor's per-horizon {quantile: forward log return} -> the contract's q10/q50/q90 as
simple returns (a monotone map, so the order is kept; crossed model quantiles are sorted, the
contract requires q10 <= q50 <= q90). Shared by the live loop and the walk-forward."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def _pick(qs: Mapping[float, float], target: float) -> float:
    key = min(qs, key=lambda q: abs(float(q) - target))
    return float(qs[key])


def simple_return_quantiles(log_quantiles: Any) -> np.ndarray:
    """(..., n_quantiles) forward LOG-return quantiles -> simple-return quantiles, sorted on
    the last axis: the numbers every consumer trades on (live ``Prediction`` events, the
    backtest and the calibration fit of the walk-forward), so both paths score alike.
    expm1 is monotone, so it only rescales; the sort repairs crossed quantile heads."""
    return np.sort(np.expm1(np.asarray(log_quantiles, dtype=np.float64)), axis=-1)


def to_quantiles(per_quantile: Mapping[float, float]) -> tuple[float, float, float]:
    """{quantile: forward log return} -> sorted (q10, q50, q90) simple returns."""
    q10, q50, q90 = simple_return_quantiles([_pick(per_quantile, q) for q in (0.1, 0.5, 0.9)]).tolist()
    return q10, q50, q90
