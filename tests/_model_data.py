"""Synthetic data with a PLANTED predictable signal, shared by the model tests.

`sig` at bar t predicts the log return from t to t+1 (coefficient `beta` per unit of
`sig`, plus noise); `noise` predicts nothing. Bars carry the schema columns the model
code reads (symbol, bar_type, ts, OHLCV)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import polars as pl

from awet_dagster.model.dataset import DatasetSpec

FEATURES = ("sig", "noise")
BASE = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Synthetic:
    bars: pl.DataFrame
    features: pl.DataFrame
    spec: DatasetSpec


def planted(n: int = 400, symbols=("AAA", "BBB", "CCC"), beta: float = 0.01, noise: float = 0.003,
            lookback: int = 16, horizons=(1, 3), seed: int = 0) -> Synthetic:
    rng = np.random.default_rng(seed)
    bars, feats = [], []
    ts = [BASE + dt.timedelta(days=i) for i in range(n)]
    for s in symbols:
        sig = rng.normal(size=n)
        ret = np.zeros(n)
        ret[1:] = beta * sig[:-1] + noise * rng.normal(size=n - 1)
        close = 100 * np.exp(np.cumsum(ret))
        bars.append(pl.DataFrame({
            "symbol": [s] * n, "bar_type": ["daily"] * n, "ts": ts, "open": close, "high": close * 1.001,
            "low": close * 0.999, "close": close, "volume": np.full(n, 1e6),
        }))
        feats.append(pl.DataFrame({"symbol": [s] * n, "bar_type": ["daily"] * n, "ts": ts,
                                   "sig": sig, "noise": rng.normal(size=n)}))
    spec = DatasetSpec("daily", lookback, tuple(horizons), feature_columns=FEATURES)
    return Synthetic(pl.concat(bars), pl.concat(feats), spec)
