"""Technical indicators with QuantConnect Lean semantics, batch and streaming.

Batch functions take 1-D arrays (numpy, polars Series, lists) and return float64
numpy arrays with NaN where the indicator is not ready. Streaming classes give the
same values one bar at a time with O(1) work per update.
"""
from awet_dagster.indicators.momentum import macd, rsi
from awet_dagster.indicators.moving_average import ema, sma, wilder
from awet_dagster.indicators.streaming import (
    AtrStream,
    BollingerStream,
    EmaStream,
    MacdStream,
    RollingMomentsStream,
    RsiStream,
    SmaStream,
    WilderStream,
)
from awet_dagster.indicators.volatility import atr, bollinger, true_range

__all__ = [
    "AtrStream",
    "BollingerStream",
    "EmaStream",
    "MacdStream",
    "RollingMomentsStream",
    "RsiStream",
    "SmaStream",
    "WilderStream",
    "atr",
    "bollinger",
    "ema",
    "macd",
    "rsi",
    "sma",
    "true_range",
    "wilder",
]
