"""Array helpers shared by the batch indicators (no indicator logic here)."""
from __future__ import annotations

import operator

import numpy as np

from awet_dagster.indicators import _kernels


def as_float_array(values) -> np.ndarray:
    """Any 1-D sequence (numpy, polars Series, list) as a contiguous float64 array."""
    if hasattr(values, "to_numpy"):  # polars/pandas: avoid a Python-level iteration
        values = values.to_numpy()
    return np.ascontiguousarray(values, dtype=np.float64)


def seeded_smoothing(x: np.ndarray, period: int, alpha: float) -> np.ndarray:
    """Lean's seeded exponential smoothing.

    y[s+n-1] = mean(x[s : s+n])              (s = first non-NaN index, n = period)
    y[i]     = alpha * x[i] + (1 - alpha) * y[i-1]

    alpha = 2/(n+1) is Lean's EMA, alpha = 1/n is Wilder's moving average. NaN before
    the seed; a NaN after the start propagates (as in the streaming form). Runs as a
    compiled loop (`_kernels.seeded_smoothing`) with the streaming arithmetic, so the
    values equal the streaming classes' bit for bit.
    """
    x = as_float_array(x)
    out = np.empty(x.shape[0])  # numpy's allocator: see _kernels on page faults
    _kernels.seeded_smoothing(x, check_period(period), float(alpha), out)
    return out


def check_period(period: int) -> int:
    """``period`` as a Python int >= 1 (the streaming classes refuse 0 too)."""
    period = operator.index(period)
    if period < 1:
        raise ValueError("period must be >= 1")
    return period


def rolling_mean(x: np.ndarray, period: int) -> np.ndarray:
    """Mean of the last `period` values (NaN until full).

    Summed lag by lag instead of via cumsum: a cumsum over a long series carries an
    absolute error proportional to the running total, which would break the 1e-9
    batch/streaming parity on long histories. Cost is period vectorised passes."""
    n = x.shape[0]
    out = np.full(n, np.nan)
    if n < period:
        return out
    acc = x[period - 1 :].copy()
    for lag in range(1, period):
        acc += x[period - 1 - lag : n - lag]
    out[period - 1 :] = acc / period
    return out


def rolling_std(x: np.ndarray, period: int, ddof: int = 0, mean: np.ndarray | None = None) -> np.ndarray:
    """Standard deviation of the last `period` values, two-pass (mean first) for accuracy."""
    n = x.shape[0]
    out = np.full(n, np.nan)
    if n < period:
        return out
    m = (rolling_mean(x, period) if mean is None else mean)[period - 1 :]
    d = x[period - 1 :] - m
    acc = d * d
    for lag in range(1, period):
        d = x[period - 1 - lag : n - lag] - m
        acc += d * d
    out[period - 1 :] = np.sqrt(acc / (period - ddof))
    return out
