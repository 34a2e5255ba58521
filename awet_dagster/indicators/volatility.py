"""Batch volatility indicators with Lean semantics: ATR (Wilder) and Bollinger Bands."""
from __future__ import annotations

import numpy as np

from awet_dagster.indicators._arrays import as_float_array, rolling_mean, rolling_std, seeded_smoothing


def true_range(high, low, close) -> np.ndarray:
    """Lean `TrueRange`: the first bar has no previous close, so it is high - low."""
    h, l, c = as_float_array(high), as_float_array(low), as_float_array(close)
    tr = h - l
    if c.shape[0] > 1:
        prev = c[:-1]
        tr[1:] = np.maximum(np.maximum(tr[1:], np.abs(h[1:] - prev)), np.abs(l[1:] - prev))
    return tr


def atr(high, low, close, period: int = 14) -> np.ndarray:
    """Lean `AverageTrueRange` (Wilder): ready at index period-1."""
    return seeded_smoothing(true_range(high, low, close), period, 1.0 / period)


def bollinger(close, period: int = 20, k: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lean `BollingerBands`: SMA middle +/- k population standard deviations."""
    c = as_float_array(close)
    mid = rolling_mean(c, period)
    sd = rolling_std(c, period, ddof=0, mean=mid)
    return mid, mid + k * sd, mid - k * sd
