"""Array helpers shared by the batch indicators (no indicator logic here)."""
from __future__ import annotations

import numpy as np
from scipy.signal import lfilter


def as_float_array(values) -> np.ndarray:
    """Any 1-D sequence (numpy, polars Series, list) as a contiguous float64 array."""
    if hasattr(values, "to_numpy"):  # polars/pandas: avoid a Python-level iteration
        values = values.to_numpy()
    return np.ascontiguousarray(values, dtype=np.float64)


def first_valid(x: np.ndarray) -> int:
    """Index of the first non-NaN value (len(x) when there is none).

    Lean indicators only start counting samples once data arrives, so a series that
    starts with NaN (e.g. the MACD line feeding the signal EMA) is seeded from its
    first real value, not from index 0."""
    if x.shape[0] and x[0] == x[0]:  # common case: skip a full-array scan
        return 0
    nz = np.flatnonzero(~np.isnan(x))
    return int(nz[0]) if nz.size else len(x)


def seeded_smoothing(x: np.ndarray, period: int, alpha: float) -> np.ndarray:
    """Lean's seeded exponential smoothing.

    y[s+n-1] = mean(x[s : s+n])              (s = first non-NaN index, n = period)
    y[i]     = alpha * x[i] + (1 - alpha) * y[i-1]

    alpha = 2/(n+1) is Lean's EMA, alpha = 1/n is Wilder's moving average. NaN before
    the seed; a NaN after the start propagates (as in the streaming form).
    """
    s = first_valid(x)
    if x.shape[0] - s < period:
        return np.full(x.shape[0], np.nan)
    if s == 0:
        return smooth_from(x, 0, period, alpha)
    # Leading NaNs: filter the valid tail, then prepend them (one extra copy).
    return np.concatenate((np.full(s, np.nan), smooth_from(x[s:], 0, period, alpha)))


def smooth_from(x: np.ndarray, start: int, period: int, alpha: float) -> np.ndarray:
    """seeded_smoothing for x whose values from `start` on are the series; x[:start]
    must be finite (its values do not matter) and the result is NaN there.

    The recursion runs in C as an IIR filter (`lfilter`) over the whole array, so the
    output buffer is the filter's own (no extra full-length copy). The filter cannot
    be started at the seed without slicing, so it runs from index 0 and is then
    corrected: the recursion is linear, hence y_true[i] = y_run[i] + decay^(i-p) *
    (seed - y_run[p]) for i >= p = start+period-1, and that correction is applied
    only while decay^j is above 1e-18 (beyond, it is below the last ulp)."""
    n = x.shape[0]
    p = start + period - 1
    decay = 1.0 - alpha
    seed = _sequential_mean(x[start : start + period])
    y = lfilter([alpha], [1.0, -decay], x, zi=[decay * x[0]])[0]
    delta = seed - y[p]
    if delta != 0.0:
        horizon = n - p if decay <= 0.0 else min(n - p, int(np.log(1e-18) / np.log(decay)) + 1)
        y[p : p + horizon] += delta * decay ** np.arange(horizon, dtype=np.float64)
    y[p] = seed  # exactly the streaming seed
    y[:p] = np.nan
    return y


def _sequential_mean(window: np.ndarray) -> float:
    # Left-to-right sum, like the streaming seed accumulates it (numpy's pairwise sum
    # would differ in the last ulp; cheap here because windows are short).
    total = 0.0
    for v in window.tolist():
        total += v
    return total / window.shape[0]


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
