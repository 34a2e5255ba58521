"""Batch momentum indicators with Lean semantics: RSI (Wilder) and MACD."""
from __future__ import annotations

import numpy as np

from awet_dagster.indicators._arrays import as_float_array, first_valid, seeded_smoothing, smooth_from
from awet_dagster.indicators.moving_average import ema


def rsi(close, period: int = 14) -> np.ndarray:
    """Lean `RelativeStrengthIndex` with Wilder averages.

    The first bar only sets the previous close, so the value is ready at index
    `period`. When the average loss is 0 Lean returns 100 — also for perfectly
    constant prices (no gains either), which we keep for parity."""
    c = as_float_array(close)
    n = c.shape[0]
    if n > period and c[0] == c[0]:
        return _rsi_no_leading_nan(c, period)
    out = np.full(n, np.nan)
    if n < 2:
        return out
    d = np.diff(c)
    # Lean: input >= previous is a gain (possibly 0), else a loss; NaN propagates.
    gains = np.maximum(d, 0.0)
    losses = np.maximum(-d, 0.0)
    alpha = 1.0 / period
    avg_gain = seeded_smoothing(gains, period, alpha)
    avg_loss = seeded_smoothing(losses, period, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        # 100 - 100/(1 + ag/al), in place to save full-length temporaries.
        value = np.divide(avg_gain, avg_loss, out=avg_gain)
        value += 1.0
        np.divide(100.0, value, out=value)
        np.subtract(100.0, value, out=value)
    value[avg_loss == 0.0] = 100.0
    out[1:] = value
    return out


def _rsi_no_leading_nan(c: np.ndarray, period: int) -> np.ndarray:
    """Same values as the general path with fewer full-length temporaries (each fresh
    8 MB array costs ~2 ms of page faults at 1M rows): the changes are laid out at
    their close's index with a dummy 0 at index 0, and the smoothing starts at 1."""
    n = c.shape[0]
    d = np.empty(n)
    d[0] = 0.0
    np.subtract(c[1:], c[:-1], out=d[1:])
    gains = np.maximum(d, 0.0)
    np.negative(d, out=d)
    losses = np.maximum(d, 0.0, out=d)
    alpha = 1.0 / period
    value = smooth_from(gains, 1, period, alpha)
    avg_loss = smooth_from(losses, 1, period, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(value, avg_loss, out=value)
        value += 1.0
        np.divide(100.0, value, out=value)
        np.subtract(100.0, value, out=value)
    value[avg_loss == 0.0] = 100.0
    return value


def macd(close, fast: int = 12, slow: int = 26, signal: int = 9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lean MACD: EMA(fast) - EMA(slow); signal = EMA(signal) of that line, seeded from
    the line's first `signal` values; histogram = line - signal."""
    c = as_float_array(close)
    line = ema(c, fast)
    line -= ema(c, slow)
    start = first_valid(line)
    if line.shape[0] - start < signal:
        return line, np.full(line.shape[0], np.nan), np.full(line.shape[0], np.nan)
    if start < line.shape[0] and not np.isnan(line[start:]).any():
        # Common case: avoid slicing/concatenating by filling the NaN prefix of our
        # own temporary line, filtering in place, and restoring the NaNs.
        line[:start] = line[start]
        sig = smooth_from(line, start, signal, 2.0 / (signal + 1))
        line[:start] = np.nan
    else:
        sig = seeded_smoothing(line, signal, 2.0 / (signal + 1))
    return line, sig, line - sig
