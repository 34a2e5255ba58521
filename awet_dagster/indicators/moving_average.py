"""Batch moving averages with Lean semantics: SMA, EMA (SMA-seeded), Wilder."""
from __future__ import annotations

import numpy as np

from awet_dagster.indicators._arrays import as_float_array, rolling_mean, seeded_smoothing


def sma(close, period: int) -> np.ndarray:
    """Simple moving average; NaN for the first period-1 values."""
    return rolling_mean(as_float_array(close), period)


def ema(close, period: int) -> np.ndarray:
    """Lean EMA: seeded with the SMA of the first `period` values, then k = 2/(n+1)."""
    return seeded_smoothing(as_float_array(close), period, 2.0 / (period + 1))


def wilder(values, period: int) -> np.ndarray:
    """Wilder's moving average (Lean `WilderMovingAverage`): SMA seed, then k = 1/n."""
    return seeded_smoothing(as_float_array(values), period, 1.0 / period)
