"""Seeded synthetic bars: regime-switching drift, GARCH(1,1) volatility, consistent OHLC.

For load tests and demos where real data is not needed (or not allowed). Everything is
vectorised numpy: the only Python loops run once per regime switch and once per
`_BLOCK` bars, so about a million bars take about a second.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache

import numpy as np
import polars as pl

from awet_dagster.sources.exchange_time import session_open_utc, to_utc_bounds
from awet_dagster.sources.schema import BAR_TYPES, TS_DTYPE, empty_bars, ensure_schema

REGIMES = ("bull", "bear", "sideways")
_BLOCK = 256  # bars per vectorised block of the variance recursion (see _garch_variance)


@dataclass(frozen=True)
class RegimeParams:
    drift: float  # mean log return per bar
    vol_scale: float  # multiplies the GARCH volatility


@dataclass(frozen=True)
class BarScale:
    """Per-timeframe magnitudes (a minute is not a day)."""

    unconditional_vol: float  # stationary std of log returns per bar
    mean_regime_bars: float  # expected bars spent in one regime
    bull_drift: float
    bear_drift: float
    base_volume: float
    gap_vol_ratio: float  # open-vs-previous-close gap, as a fraction of the bar vol


@dataclass(frozen=True)
class SyntheticSettings:
    # GARCH(1,1): sigma2_t = omega + alpha * eps2_{t-1} + beta * sigma2_{t-1};
    # omega follows from the unconditional vol, so only persistence is set here.
    garch_alpha: float = 0.08
    garch_beta: float = 0.90
    # Regime chain: P(stay) = 1 - 1/mean_regime_bars, leaving picks the others equally.
    minute: BarScale = BarScale(4e-4, 390 * 3, 2e-6, -3e-6, 20_000.0, 0.2)
    daily: BarScale = BarScale(0.012, 60, 6e-4, -9e-4, 5_000_000.0, 0.3)
    regime_vol_scale: tuple[float, float, float] = (0.9, 1.5, 0.8)  # bull, bear, sideways
    start_price_range: tuple[float, float] = (20.0, 400.0)
    spread_bps: float = 2.0
    calendar: str = "XNYS"

    def scale(self, bar_type: str) -> BarScale:
        return self.minute if bar_type == "minute" else self.daily


def symbol_rng(seed: int, symbol: str) -> np.random.Generator:
    """One stream per (seed, symbol): a symbol's path does not depend on its neighbours."""
    return np.random.default_rng([seed, zlib.crc32(symbol.encode())])


def _regime_path(rng: np.random.Generator, n: int, mean_bars: float) -> np.ndarray:
    """Markov chain over REGIMES, simulated by geometric holding times (same law)."""
    p_leave = min(1.0, 1.0 / max(mean_bars, 1.0))
    # Draw enough holding times at once; top up in the rare case they fall short.
    durations = rng.geometric(p_leave, size=max(8, int(n * p_leave * 2) + 8))
    while durations.sum() < n:
        durations = np.concatenate([durations, rng.geometric(p_leave, size=len(durations))])
    steps = rng.integers(1, len(REGIMES), size=len(durations))  # move to one of the others
    states = (rng.integers(len(REGIMES)) + np.concatenate([[0], np.cumsum(steps[1:])])) % len(REGIMES)
    return np.repeat(states, durations)[:n]


def _garch_variance(z2: np.ndarray, omega: float, alpha: float, beta: float, v0: float) -> np.ndarray:
    """sigma2 for a GARCH(1,1) driven by squared shocks z2 (eps = sigma * z).

    The recursion v_t = omega + (beta + alpha * z2_{t-1}) * v_{t-1} is linear in v, so
    inside a block v_t = A_t * v_start + C_t with A = cumprod(a) and
    C_t = omega * A_t * cumsum(1 / A); blocks are chained with one scalar step each.
    Logs keep A finite (a block is short enough that exp never overflows).
    """
    n = len(z2)
    a = beta + alpha * np.concatenate([[1.0], z2[:-1]])  # coefficient applied at step t
    pad = (-n) % _BLOCK
    a = np.concatenate([a, np.ones(pad)]).reshape(-1, _BLOCK)
    log_a = np.cumsum(np.log(a), axis=1)
    big_a = np.exp(log_a)
    c = omega * big_a * np.cumsum(np.exp(-log_a), axis=1)
    starts = np.empty(len(a))
    v = v0
    for i in range(len(a)):  # one iteration per block, not per bar
        starts[i] = v
        v = big_a[i, -1] * v + c[i, -1]
    return (big_a * starts[:, None] + c).reshape(-1)[:n]


def generate_symbol(
    symbol: str, n: int, bar_type: str, seed: int, settings: SyntheticSettings
) -> dict[str, np.ndarray]:
    """OHLCV + bid/ask arrays for one symbol, n bars."""
    sc = settings.scale(bar_type)
    rng = symbol_rng(seed, symbol)
    regimes = _regime_path(rng, n, sc.mean_regime_bars)
    drift = np.array([sc.bull_drift, sc.bear_drift, 0.0])[regimes]
    vol_mult = np.asarray(settings.regime_vol_scale)[regimes]

    alpha, beta = settings.garch_alpha, settings.garch_beta
    uncond = sc.unconditional_vol**2
    omega = uncond * (1.0 - alpha - beta)
    z = rng.standard_normal(n)
    sigma = np.sqrt(_garch_variance(z * z, omega, alpha, beta, uncond)) * vol_mult
    log_ret = drift + sigma * z

    p0 = rng.uniform(*settings.start_price_range)
    gap = rng.standard_normal(n) * sigma * sc.gap_vol_ratio
    log_close = np.log(p0) + np.cumsum(log_ret + gap)
    log_open = np.concatenate([[np.log(p0)], log_close[:-1]]) + gap
    close, open_ = np.exp(log_close), np.exp(log_open)
    # Wicks beyond the body: half-normal excursions scaled by the bar's volatility.
    up = np.abs(rng.standard_normal(n)) * sigma * 0.6
    down = np.abs(rng.standard_normal(n)) * sigma * 0.6
    high = np.maximum(open_, close) * np.exp(up)
    low = np.minimum(open_, close) * np.exp(-down)
    # Cents, then restore the envelope rounding may have broken.
    open_, close = np.round(open_, 2), np.round(close, 2)
    high = np.maximum(np.round(high, 2), np.maximum(open_, close))
    low = np.minimum(np.maximum(np.round(low, 2), 0.01), np.minimum(open_, close))
    # Busy when volatile: volume grows with the size of the move.
    shock = np.abs(log_ret) / np.maximum(sigma, 1e-12)
    volume = np.round(sc.base_volume * rng.lognormal(0.0, 0.5, n) * (0.5 + 0.5 * shock))
    half = np.maximum(close * settings.spread_bps * 1e-4 / 2, 0.005)
    half = half * rng.uniform(0.8, 1.6, n)
    bid = np.maximum(np.round(close - half, 2), 0.01)
    ask = np.maximum(np.round(close + half, 2), bid + 0.01)
    return {"open": open_, "high": high, "low": low, "close": close, "volume": volume,
            "bid": bid, "ask": ask, "regime": regimes}


def generate_bars(
    symbols: Sequence[str],
    timestamps: pl.Series,
    bar_type: str,
    seed: int = 0,
    settings: SyntheticSettings = SyntheticSettings(),
) -> pl.DataFrame:
    """Bars for every symbol on the given UTC bar starts (same timestamps per symbol)."""
    if bar_type not in BAR_TYPES:
        raise ValueError(f"bar_type must be one of {BAR_TYPES}, got {bar_type!r}")
    n = len(timestamps)
    if n == 0 or not symbols:
        return empty_bars()
    ts = timestamps.cast(TS_DTYPE)
    frames = []
    for symbol in symbols:
        arrays = generate_symbol(symbol.upper(), n, bar_type, seed, settings)
        arrays.pop("regime")
        frames.append(
            pl.DataFrame({"symbol": [symbol.upper()] * n, "bar_type": bar_type, "ts": ts, **arrays,
                          "source": "synthetic"})
        )
    return ensure_schema(pl.concat(frames))


@lru_cache(maxsize=8)
def _calendar(name: str, first: date, last: date):
    import exchange_calendars as xcals  # heavy import, only when synthetic bars are asked for

    return xcals.get_calendar(name, start=first, end=last)


def session_timestamps(start: date | datetime, end: date | datetime, bar_type: str,
                       calendar: str = "XNYS") -> pl.Series:
    """Bar starts (UTC) of exchange sessions in the request range.

    minute: every regular-session minute (early closes honoured by the calendar);
    daily: the 09:30 New York open of each session.
    """
    import pandas as pd

    lo, hi = to_utc_bounds(start, end)
    # Pad by a week so sessions at the edges exist in the calendar; then filter exactly.
    cal = _calendar(calendar, (lo - timedelta(days=7)).date(), (hi + timedelta(days=7)).date())
    sessions = cal.sessions_in_range(pd.Timestamp((lo - timedelta(days=1)).date()),
                                     pd.Timestamp((hi + timedelta(days=1)).date()))
    if bar_type == "daily":
        days = pl.Series("day", sessions.to_numpy()).cast(pl.Date)
        ts = pl.select(session_open_utc(pl.lit(days)).alias("ts")).to_series()
    elif bar_type == "minute":
        minutes = cal.minutes_in_range(pd.Timestamp(lo), pd.Timestamp(hi - timedelta(microseconds=1)))
        ts = pl.Series("ts", minutes.tz_convert("UTC").as_unit("us")).cast(TS_DTYPE)
    else:
        raise ValueError(f"bar_type must be one of {BAR_TYPES}, got {bar_type!r}")
    return ts.filter((ts >= lo) & (ts < hi)).alias("ts")


class SyntheticSource:
    """`BarSource` producing deterministic synthetic bars for any symbol."""

    name = "synthetic"

    def __init__(self, seed: int = 0, settings: SyntheticSettings | None = None) -> None:
        self.seed = seed
        self.settings = settings or SyntheticSettings()

    def fetch(self, symbols: Sequence[str], start: date | datetime, end: date | datetime,
              timeframe: str) -> pl.DataFrame:
        ts = session_timestamps(start, end, timeframe, self.settings.calendar)
        return generate_bars(symbols, ts, timeframe, self.seed, self.settings)
