"""Batch momentum indicators with Lean semantics: RSI (Wilder) and MACD.

Both run as one compiled pass each (`_kernels`), with the streaming classes' arithmetic.
"""
from __future__ import annotations

import numpy as np

from awet_dagster.indicators import _kernels
from awet_dagster.indicators._arrays import as_float_array, check_period


def rsi(close, period: int = 14) -> np.ndarray:
    """Lean `RelativeStrengthIndex` with Wilder averages.

    The first bar only sets the previous close, so the value is ready at index
    `period`. When the average loss is 0 Lean returns 100 — also for perfectly
    constant prices (no gains either), which we keep for parity. Leading NaN closes
    are skipped; a NaN later propagates (as in `RsiStream`)."""
    c = as_float_array(close)
    out = np.empty(c.shape[0])  # numpy's allocator: see _kernels on page faults
    _kernels.rsi(c, check_period(period), out)
    return out


def macd(close, fast: int = 12, slow: int = 26, signal: int = 9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lean MACD: EMA(fast) - EMA(slow); signal = EMA(signal) of that line, seeded from
    the line's first `signal` values; histogram = line - signal."""
    fast, slow, signal = check_period(fast), check_period(slow), check_period(signal)
    c = as_float_array(close)
    line, sig, hist = np.empty(c.shape[0]), np.empty(c.shape[0]), np.empty(c.shape[0])
    _kernels.macd(c, 2.0 / (fast + 1), fast, 2.0 / (slow + 1), slow, 2.0 / (signal + 1), signal, line, sig, hist)
    return line, sig, hist
