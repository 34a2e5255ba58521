"""Platt calibration of the alpha-only ensemble, fitted on its backtest outcomes.

A model's calibrator is fitted on its walk-forward OOS calls. Bars without a forecast are
scored by the Lean alphas alone (RSI / EMA cross / MACD, renormalised weights); their rules
have no fitted parameters, so every historical call of theirs is out of sample already.
`alpha_calls` replays ``bars`` through the same `SignalEngine` the backtest and the live
signal service use (no forecast) and pairs each call's |signal_score| with whether the
adjusted close ``horizon`` bars later moved the way the score pointed; `fit_alpha_calibrator`
fits p = sigmoid(a |score| + b) on those pairs, as the engine applies it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from awet_dagster.config.schema import SignalsConfig
from awet_dagster.signals.calibration import PlattCalibrator, fit_platt
from awet_dagster.signals.engine import SignalEngine
from awet_dagster.sources.corporate_actions import forward_log_returns

#: Fewer calls than this (or a single outcome class) fit nothing: the engine keeps the
#: uncalibrated 0.5 + |score| / 2 rather than a curve drawn through noise.
MIN_CALLS = 50


@dataclass(frozen=True)
class AlphaCalls:
    confidence: np.ndarray  # |signal_score| of each call (score != 0)
    right: np.ndarray  # 1 when the forward return had the score's sign
    symbols: int

    @property
    def hit_rate(self) -> float:
        return float(self.right.mean()) if self.right.size else math.nan


def alpha_calls(bars: pl.DataFrame, cfg: SignalsConfig, horizon: int = 1) -> AlphaCalls:
    """Every alpha-only call in ``bars`` (one bar type) with its outcome ``horizon`` bars on."""
    if horizon < 1:
        raise ValueError("horizon must be >= 1 bar")
    if bars.height == 0:
        return AlphaCalls(np.zeros(0), np.zeros(0, dtype=int), 0)
    if bars["bar_type"].n_unique() != 1:
        raise ValueError(f"one bar type at a time, got {sorted(bars['bar_type'].unique())}")
    fwd = forward_log_returns(bars, horizon)
    # Filters do not matter here (the call is the score): the engine scores every bar anyway.
    engine = SignalEngine(cfg.model_copy(update={"enforce_market_hours": False}), compute_alphas=True)
    rows = []
    for i, bar in enumerate(bars.sort("ts", "symbol").iter_rows(named=True)):
        sig = engine.on_bar(bar, correlation_id=f"cal-{i}")
        if sig.signal_score != 0:
            rows.append((bar["symbol"], bar["ts"], sig.signal_score))
    if not rows:
        return AlphaCalls(np.zeros(0), np.zeros(0, dtype=int), bars["symbol"].n_unique())
    calls = pl.DataFrame(rows, schema={"symbol": pl.Utf8, "ts": bars.schema["ts"], "score": pl.Float64}, orient="row")
    joined = (calls.join(fwd, on=["symbol", "ts"], how="inner", maintain_order="left")
              .drop_nulls("fwd").filter(pl.col("fwd") != 0))
    score, ret = joined["score"].to_numpy(), joined["fwd"].to_numpy()
    return AlphaCalls(np.abs(score), (np.sign(score) == np.sign(ret)).astype(int), bars["symbol"].n_unique())


def fit_alpha_calibrator(calls: AlphaCalls) -> PlattCalibrator | None:
    """The Platt map of ``calls`` (None with fewer than MIN_CALLS or one outcome class)."""
    if calls.confidence.size < MIN_CALLS or len(set(calls.right.tolist())) < 2:
        return None
    return fit_platt(calls.confidence, calls.right)
